"""`invoke report weekly|monthly|quarterly` over a quarter of records with known content.

The quarter (2026Q4, Asia/Shanghai) has inspections every third day in October and
December and none in November; three known abnormal episodes (web1's error log, web2's
/data full, then resolved with an operator's resolution; db1's memory, still open at the
end); /var/log on web1 filling at 1.2 points a day in October (full in about 20 days);
fault records INC-1 (major, analysed), INC-2 (SLA breached) and INC-4 (major, not
analysed), INC-3 open in the incident store; an upgrade, a rollback, a patch and a drill;
no performance analysis. Fault records and their sheets are written raw, as a tool that
does not redact would, with a planted ID number and secret; the same are planted in the
store, the planned work and the FAQ export. Documents are rendered by headless Chromium.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mhops import report
from tests import reportdata as rd
from tests.conftest import FAKE_ID, no_leak

SECRET = "Hunter2Secret-x9"
PLANT = f"身份证 {FAKE_ID} password={SECRET}"
Q4 = datetime(2026, 10, 1, tzinfo=UTC)
GEN = datetime(2027, 1, 3, 2, 0, tzinfo=UTC)
HOSTS = ["db1", "web1", "web2"]


def day(n: int, hours: float = 2) -> datetime:
    return Q4 + timedelta(days=n, hours=hours)


def tweaks(d: int) -> dict:
    t: dict = {}
    if d <= 30:
        t["web1"] = {"disk": {"/var/log": 40 + 1.2 * d}}
    if d == 3:
        t["web1"] = {**t.get("web1", {}), "logs": {"error": 12}}
    if d in (9, 12):
        t["web2"] = {"disk": {"/data": 93.0}}
    if d >= 63:
        t["db1"] = {"memory": 88.0}
    return t


@pytest.fixture(scope="module")
def quarter(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("records")
    rd.write_inspections(folder, Q4, 92, HOSTS, skip=lambda d: d % 3 or 31 <= d <= 60,
                         tweaks=tweaks,
                         resolution=lambda d: f"已清理归档日志 {PLANT}" if d == 12 else None)
    faults = [("INC-1", f"挂号接口超时 {PLANT}", "严重", day(12), day(12, 5), True),
              ("INC-2", "短信通知延迟 <b>", "一般<i>", day(65), day(66), False),
              ("INC-4", "支付回调失败", "严重", day(80), day(80, 4), True)]
    for iid, title, sev, rep, res, met in faults:
        rd.write_raw(folder, rd.base("fault", res, headline=f"{iid} {title}",
                                     incident=rd.incident(iid, title, sev, rep, res, met)),
                     sheet=f"{iid} {title}")
    rd.write_raw(folder, rd.base("fault_analysis", day(14), headline="INC-1 分析",
                                 incident_id="INC-1"))
    rd.write_raw(folder, rd.base("upgrade", day(13), headline="his-api 升级",
                                 component="his-api", version_from="2.3.1",
                                 version_to="2.4.0", outcome="ok", hosts=["web1", "web2"]))
    rd.write_raw(folder, rd.base("rollback", day(70), status="warning", headline="his-api 回退",
                                 component="his-api", version_from="2.5.0",
                                 version_to="2.4.0", outcome="ok", hosts=["web1"]))
    rd.write_raw(folder, rd.base("patch", day(62), headline="openssl 补丁", outcome="ok",
                                 hosts=[{"host": "db1", "packages": [
                                     {"name": "openssl", "version": "3.0.15"}]}]))
    rd.write_raw(folder, rd.base("drill", day(75), headline="恢复演练通过", outcome="passed",
                                 backup={"engine": "postgresql", "name": "his_pg"}))
    rd.write_raw(folder, rd.base("security_audit", day(14), status="warning",
                                 headline="安全审计：弱口令 1 项", hosts=[{"host": "web1"}],
                                 events=[]))
    return folder


def store(since, until):
    return [{"id": "INC-3", "title": f"病案复印订单积压 {PLANT}", "severity": "一般",
             "reported_utc": "2026-12-28T03:00:00Z", "resolved_utc": None},
            {"id": "INC-9", "title": "closed", "reported_utc": "2026-12-01T00:00:00Z",
             "resolved_utc": "2026-12-01T01:00:00Z"}]


def kb_export(out_dir: Path, lang: str) -> None:
    (out_dir / "faq.md").write_text(f"# 常见问题\n\n问：怎么办？答：联系 {PLANT}\n")
    (out_dir / "faq.html").write_text(f"<html><body><h1>FAQ</h1><p>{PLANT}</p></body></html>")


def make(what: str, period: str, records: Path, out: Path, **kw) -> report.Report:
    opts = dict(what=what, period=period, records_dir=records, out_dir=out,
                generated_at=GEN, list_incidents=store, kb_export=kb_export,
                planned=["复核 12 月巡检", f"轮换密钥 {PLANT}"], echo=lambda _: None)
    opts.update(kw)
    return report.run(report.Options(**opts))


@pytest.fixture(scope="module")
def docs(quarter, tmp_path_factory) -> dict[str, report.Report]:
    out = tmp_path_factory.mktemp("out")
    return {"weekly": make("weekly", "2026-W42", quarter, out),
            "monthly": make("monthly", "2026-10", quarter, out),
            "november": make("monthly", "2026-11", quarter, out),
            "december": make("monthly", "2026-12", quarter, out),
            "quarterly": make("quarterly", "2026Q4", quarter, out),
            "weekly_en": make("weekly", "2026-W42", quarter, out, lang="en")}


def ids(rows) -> list[str]:
    return [r["id"] for r in rows]


def episodes(ctx) -> list[tuple]:
    return [(e["host"], e["check"], e["target"], e["status"], e["first"][:10],
             (e["resolved"] or "open")[:10]) for e in ctx["episodes"]]


def test_weekly_lists_exactly_the_week(docs):
    ctx = docs["weekly"].context
    assert [r["time"][:10] for r in ctx["inspections"]["rows"]] == ["2026-10-13", "2026-10-16"]
    assert ctx["inspections"]["outcome"]["status"] == "critical"
    assert ids(ctx["incidents"]["opened"]) == ["INC-1"]
    assert ids(ctx["incidents"]["resolved"]) == ["INC-1"]
    assert ctx["incidents"]["sla_percent"] == 100.0
    assert [(c["kind"], c["detail"]) for c in ctx["changes"]] == [
        ("upgrade", "his-api 2.3.1 → 2.4.0")]
    assert episodes(ctx) == [("web2", "disk_percent", "/data", "critical", "2026-10-13",
                              "2026-10-16")]
    assert ctx["open_items"] == {"incidents": [], "events": [], "changes": []}
    assert ctx["planned"][0] == "复核 12 月巡检"
    assert [(a["kind"], a["status"]) for a in ctx["audits"]] == [("security_audit", "warning")]
    md = (docs["weekly"].path / "report.md").read_text()
    assert "# 运维周报 2026-W42" in md and "INC-1" in md and "his-api 2.3.1 → 2.4.0" in md
    assert "复核 12 月巡检" in md
    assert ("| web2 | 磁盘空间使用率 | /data | 严重 | 2026-10-13 08:30 | 1 | "
            "已清理归档日志") in md
    for other in ("INC-2", "INC-3", "INC-4", "2.5.0", "openssl", "db1 ·"):
        assert other not in md, other


def test_weekly_in_english(docs):
    md = (docs["weekly_en"].path / "report.md").read_text()
    assert md.startswith("# Weekly operations report 2026-W42")
    assert docs["weekly_en"].path.name == "weekly-2026-W42.en"


def test_monthly_lists_the_months_anomalies_forecasts_logs_and_faults(docs):
    r = docs["monthly"]
    ctx = r.context
    assert len(ctx["inspections"]["rows"]) == 11
    assert episodes(ctx) == [
        ("web1", "log_matches", "/var/log/his/api.log [error]", "warning", "2026-10-04",
         "2026-10-07"),
        ("web2", "disk_percent", "/data", "critical", "2026-10-10", "2026-10-16")]
    web2 = next(e for e in ctx["episodes"] if e["host"] == "web2")
    assert web2["entered"][0].startswith("已清理归档日志")
    flagged = [(f["host"], f["mount"], f["status"]) for f in ctx["forecasts"]
               if f["status"] != "normal"]
    assert flagged == [("web1", "/var/log", "warning")]
    days = next(f for f in ctx["forecasts"] if f["mount"] == "/var/log"
                and f["host"] == "web1")["days_until_full"]
    assert 15 < days < 25
    logs = {p["pattern"]: p for p in ctx["logs"]["patterns"]}
    assert logs["error"]["total"] == 12 and logs["error"]["by_day"]["2026-10-04"] == 12
    assert logs["timeout"]["total"] == 0
    assert ids(ctx["incidents"]["opened"]) == ["INC-1"]
    assert r.exit_code == 0 and ctx["missing"] == []
    md = (r.path / "report.md").read_text()
    assert "| web1 | `/var/log` |" in md and "| 警告 |" in md
    assert "| `error` | 12 | web1 (12) |" in md
    assert "INC-1" in md and "INC-2" not in md and "INC-4" not in md
    charts = sorted(p.name for p in (r.path / "charts").iterdir())
    assert charts == ["host-001.svg", "host-002.svg", "host-003.svg", "logs.svg",
                      "overall.svg"]
    html = (r.path / "report.html").read_text()
    for c in ctx["charts"]:
        assert f'src="{c["file"]}"' in html
    svg = (r.path / "charts" / "host-002.svg").read_text()
    assert "<svg" in svg and "web1" in svg and "/var/log" in svg


def test_december_keeps_the_open_episode_and_faults(docs):
    ctx = docs["december"].context
    assert episodes(ctx) == [("db1", "memory_percent", "", "warning", "2026-12-03", "open")]
    assert ids(ctx["incidents"]["opened"]) == ["INC-2", "INC-4", "INC-3"]
    assert ids(ctx["incidents"]["open"]) == ["INC-3"]
    assert [r["id"] for r in ctx["incidents"]["breached"]] == ["INC-2"]
    assert ctx["missing"] == ["重大故障 INC-4 已解决但无系统故障分析报告"]
    html = (docs["december"].path / "report.html").read_text()
    assert "短信通知延迟 &lt;b&gt;" in html and "一般&lt;i&gt;" in html and "<i>" not in html


def test_missing_month(docs):
    ctx = docs["november"].context
    assert ctx["inspections"]["rows"] == []
    assert docs["november"].exit_code == 1
    assert ctx["missing"] == ["2026-11 无巡检记录（合同要求每月至少一次巡检）"]


def test_quarterly_bundle_contents_and_missing_evidence(docs, quarter, tmp_path):
    r = docs["quarterly"]
    ctx = r.context
    kinds = {s["kind"]: len(s["items"]) for s in ctx["sections"]}
    assert kinds == {"inspection": 21, "security_audit": 1, "fault": 3, "fault_analysis": 1,
                     "upgrade": 1, "rollback": 1, "patch": 1, "drill": 1}
    assert [s["kind"] for s in ctx["sections"]] == [
        "inspection", "security_audit", "fault", "fault_analysis", "upgrade", "rollback",
        "patch", "drill"]
    assert ctx["missing"] == ["2026-11 无巡检记录（合同要求每月至少一次巡检）",
                              "本季度无性能分析报告（invoke perf）",
                              "重大故障 INC-4 已解决但无系统故障分析报告"]
    assert [(m["month"], m["runs"]) for m in ctx["per_month"]] == [
        ("2026-10", 11), ("2026-11", 0), ("2026-12", 10)]
    assert ctx["faq"] == ["faq/faq.html", "faq/faq.md"]
    with zipfile.ZipFile(r.path) as z:
        names = set(z.namelist())
        assert {"index.html", "index.md", "index.pdf"} <= names
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in z.infolist())
        index_html = z.read("index.html").decode()
        index_md = z.read("index.md").decode()
        assert z.read("index.pdf").startswith(b"%PDF")
    links = re.findall(r'href="([^"#][^"]*)"', index_html)
    md_links = re.findall(r"\]\(([^)#][^)]*)\)", index_md)
    assert len(links) == 2 * 30 + 2 and sorted(links) == sorted(md_links)
    assert set(links) <= names
    assert names - set(links) == {"index.html", "index.md", "index.pdf"}
    # Without a knowledge-base export the FAQ is missing evidence.
    bare = make("quarterly", "2026Q4", quarter, tmp_path, kb_export=None, pdf="off")
    assert "无常见问题解答文档（知识库导出）" in bare.context["missing"]
    with zipfile.ZipFile(bare.path) as z:
        assert not any(n.startswith("faq/") or n == "index.pdf" for n in z.namelist())


def test_identical_inputs_give_identical_bytes(docs, quarter, tmp_path, monkeypatch):
    for key, what, period in (("weekly", "weekly", "2026-W42"),
                              ("monthly", "monthly", "2026-10"),
                              ("quarterly", "quarterly", "2026Q4")):
        again = make(what, period, quarter, tmp_path)
        first = docs[key].path
        if first.is_file():
            assert again.path.read_bytes() == first.read_bytes(), key
        else:
            a = {p.relative_to(first): p.read_bytes() for p in first.rglob("*") if p.is_file()}
            b = {p.relative_to(again.path): p.read_bytes() for p in again.path.rglob("*")
                 if p.is_file()}
            assert a == b, key
    # The generation time is the only difference a later run makes, in one line.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(int((GEN + timedelta(days=1)).timestamp())))
    later = make("weekly", "2026-W42", quarter, tmp_path / "later", generated_at=None)
    old = (docs["weekly"].path / "report.md").read_text().splitlines()
    new = (later.path / "report.md").read_text().splitlines()
    assert [(a, b) for a, b in zip(old, new, strict=True) if a != b] == [
        ("生成时间: 2027-01-03T10:00:00+08:00", "生成时间: 2027-01-04T10:00:00+08:00")]


def test_planted_id_and_secret_never_show(docs, tmp_path):
    paths = [d.path for d in docs.values()]
    no_leak([p for p in paths if p.is_dir()], FAKE_ID, SECRET)
    for p in paths:
        if p.is_file():
            with zipfile.ZipFile(p) as z:
                for n in z.namelist():
                    data = z.read(n)
                    assert FAKE_ID.encode() not in data and SECRET.encode() not in data, n
    # ... and the redacted text is still there around the markers.
    md = (docs["weekly"].path / "report.md").read_text()
    assert "[REDACTED:id]" in md and "轮换密钥" in md


def test_redact_sheets_all_scrubs_inspection_sheets_too(quarter, tmp_path):
    folder = tmp_path / "records"
    shutil.copytree(quarter, folder)
    rec = rd.inspection_record(day(1), ["web1"], 1)
    rd.write_raw(folder, {**rec, "run_id": rec["run_id"] + "-raw"}, sheet=PLANT)
    bundle = make("quarterly", "2026Q4", folder, tmp_path / "out", pdf="off",
                  redact_sheets="all")
    with zipfile.ZipFile(bundle.path) as z:
        sheets = [n for n in z.namelist() if n.endswith("-raw.html")
                  or n.endswith("-raw.md")]
        assert len(sheets) == 2
        for n in z.namelist():
            assert FAKE_ID.encode() not in z.read(n), n


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed: run the tests with `invoke test`")
    return path


def _png(html: Path, out: Path) -> None:
    from PIL import Image

    profile = out.with_suffix(".profile")
    proc = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={profile}",
         "--window-size=1200,1600", f"--screenshot={out}", html.as_uri()],
        capture_output=True, text=True, timeout=120,
        env={"HOME": str(profile), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # The page's own errors (console messages) are logged as CONSOLE; the documents have
    # no scripts, so any such line is an error.
    assert "CONSOLE" not in proc.stderr, proc.stderr[-2000:]
    # Every image and link the page names must be there beside it.
    for ref in re.findall(r'(?:src|href)="([^"#:]+)"', html.read_text()):
        assert (html.parent / ref).is_file(), ref
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (1200, 1600)
        colours = img.convert("L").getcolors(maxcolors=1 << 16)
    # A page that failed to render is blank: a real one has text and tables.
    assert colours is None or len(colours) > 8


def test_documents_render_in_headless_chromium(docs, tmp_path):
    _png(docs["weekly"].path / "report.html", tmp_path / "weekly.png")
    _png(docs["monthly"].path / "report.html", tmp_path / "monthly.png")
    with zipfile.ZipFile(docs["quarterly"].path) as z:
        z.extractall(tmp_path / "bundle")
    _png(tmp_path / "bundle" / "index.html", tmp_path / "index.png")
    sheet = sorted((tmp_path / "bundle" / "records" / "inspection").glob("*.html"))[0]
    _png(sheet, tmp_path / "sheet.png")
    generic = next((tmp_path / "bundle" / "records" / "upgrade").glob("*.html"))
    _png(generic, tmp_path / "generic.png")
    shutil.rmtree(tmp_path / "bundle")


def test_a_failed_run_leaves_the_previous_documents_and_no_partial_ones(quarter, tmp_path,
                                                                        monkeypatch):
    import os

    first = make("weekly", "2026-W42", quarter, tmp_path)
    before = (first.path / "report.md").read_bytes()
    zipped = make("quarterly", "2026Q4", quarter, tmp_path, pdf="off").path.read_bytes()
    calls = {"n": 0, "ok": 0}
    real = os.fsync

    def fsync(fd):  # the disk fills up after `ok` files
        calls["n"] += 1
        if calls["n"] > calls["ok"]:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for what, period, ok in (("weekly", "2026-W42", 1), ("quarterly", "2026Q4", 0)):
        calls.update(n=0, ok=ok)
        with pytest.raises(OSError, match="No space"):
            make(what, period, quarter, tmp_path, pdf="off", planned=["changed"],
                 kb_export=None)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "quarterly-2026Q4.zh-CN.zip", "weekly-2026-W42.zh-CN"]
    assert (first.path / "report.md").read_bytes() == before
    assert (tmp_path / "quarterly-2026Q4.zh-CN.zip").read_bytes() == zipped


def test_bad_period_is_refused(quarter, tmp_path):
    from mhops.errors import MhopsError

    with pytest.raises(MhopsError, match="needs a week like 2026-W48"):
        make("weekly", "2026-11", quarter, tmp_path)
    with pytest.raises(MhopsError, match="--period"):
        make("quarterly", "2026Q5", quarter, tmp_path)
