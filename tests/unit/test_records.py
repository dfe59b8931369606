"""Record building and rendering: every contract field in zh-CN and en, redaction, atomicity."""

import json
import os
import stat
from datetime import UTC, datetime

import pytest

from mhops import inspect, records
from mhops.inventory import Host, Selection

FAKE_ID = "110101199003071234"
FAKE_MOBILE = "13812345678"

RAW = {
    "hostname": "web01", "kernel": "6.1", "collected_at": "2026-11-28T04:00:00Z",
    "duration_ms": 230,
    "cpu": {"percent": 12.5, "iowait_percent": 0.1, "cores": 2, "load1": 0.5, "load5": 0.4,
            "load15": 0.3},
    "memory": {"total_kb": 1000, "available_kb": 500, "percent": 50.0, "swap_total_kb": 0,
               "swap_free_kb": 0, "swap_percent": 0.0},
    "filesystems": [{"mount": "/", "device": "/dev/vda", "fstype": "ext4", "size_kb": 100,
                     "avail_kb": 3, "used_percent": 97.0, "inodes_total": 10,
                     "inodes_used_percent": 10.0, "error": None}],
    "uptime_seconds": 86400,
    "clock": {"source": None, "synchronized": None, "offset_ms": None, "error": None},
    "processes": [{"name": "api", "match": "gunicorn", "count": 0, "pids": []}],
    "services": [], "listening": [], "ports": [{"port": 8000, "listening": True}],
    "unexpected_ports": [], "http": [], "tls": [],
    "logs": [{"path": "/var/log/app.log", "kind": "app", "source": "file",
              "counts": {"error": 2},
              "samples": {"error": [f"ERROR patient {FAKE_ID} phone {FAKE_MOBILE}",
                                    "ERROR password=hunter22 failed"]},
              "bytes_read": 10, "lines_read": 2, "rotated": False, "cursor_reset": False,
              "backlog": False, "error": None}],
    "cursors": {}, "errors": [],
}


def _record(lang, tmp_path):
    host = Host(name="web01", groups=("api", "wechat"), vars={})
    down = Host(name="web02", groups=("api",), vars={})
    sel = Selection(sources=("inventory/x.yml",), limit="api", hosts=(host, down))
    from mhops import thresholds as th
    plans = {"web01": ({}, th.DEFAULT_THRESHOLDS), "web02": ({}, th.DEFAULT_THRESHOLDS)}
    collected = {"web01": inspect.Collected("web01", RAW),
                 "web02": inspect.Collected("web02", None, error="Connection refused",
                                            unreachable=True)}
    opts = inspect.Options(inventory=["inventory/x.yml"], records_dir=tmp_path,
                           state_dir=tmp_path, lang=lang, operator="张工",
                           notified=["信息科值班"], feedback_note="已电话通知",
                           resolution="清理日志后恢复")
    started = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
    return inspect.build_record(sel, plans, collected, opts, started)


CONTRACT = {
    "zh-CN": ["巡检时间", "执行人", "巡检范围", "巡检内容", "巡检结果", "异常事件", "异常反馈",
              "解决方案", "主机清单", "运维仓库版本"],
    "en": ["Inspection time", "Operator", "Inspection scope", "Inspection content",
           "Inspection result", "Abnormal events", "Abnormal-event feedback", "Resolution",
           "Inventory", "Ops repo revision"],
}


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
@pytest.mark.parametrize("fmt", ["md", "html"])
def test_every_contract_field_is_rendered(lang, fmt, tmp_path):
    rec = _record(lang, tmp_path)
    text = records.render("inspection", rec, fmt)
    for label in CONTRACT[lang]:
        assert label in text, label
    for value in ("2026-11-28T04:00:00Z", "2026-11-28T12:00:00+08:00", "张工", "web01",
                  "web02", "信息科值班", "已电话通知", "清理日志后恢复", "inventory/x.yml"):
        assert value in text, value


def test_record_content_and_status(tmp_path):
    rec = _record("zh-CN", tmp_path)
    assert rec["exit_code"] == 2 and rec["status"] == "critical"
    assert rec["scope"]["groups"] == {"api": ["web01", "web02"], "wechat": ["web01"]}
    checks = {(e["host"], e["check"]) for e in rec["events"]}
    assert ("web01", "disk_percent") in checks
    assert ("web01", "process") in checks
    assert ("web02", "reachable") in checks
    assert ("web01", "log_matches") in checks
    assert all(e["resolution"] for e in rec["events"])
    assert {"cpu_percent", "memory_percent", "disk_percent", "uptime"} <= set(rec["content"])
    assert rec["summary"]["hosts_unreachable"] == 1


def test_write_run_redacts_and_is_private(tmp_path):
    rec = _record("zh-CN", tmp_path)
    run = records.write_run(tmp_path / "records", "inspection", rec)
    assert run.name == "20261128T040000Z-inspection"
    assert sorted(p.name for p in run.iterdir()) == ["record.html", "record.json", "record.md"]
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    for p in run.iterdir():
        text = p.read_text()
        assert FAKE_ID not in text and FAKE_MOBILE not in text and "hunter22" not in text
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    data = json.loads((run / "record.json").read_text())
    assert data["schema_version"] == 1
    # a second run in the same second keeps both
    again = records.write_run(tmp_path / "records", "inspection", rec)
    assert again.name == "20261128T040000Z-inspection-2"


def test_failed_render_leaves_nothing(tmp_path, monkeypatch):
    rec = _record("zh-CN", tmp_path)
    calls = []

    def boom(*a, **k):
        calls.append(1)
        raise OSError(28, "No space left on device")

    out = tmp_path / "records"
    real_fsync = os.fsync

    def fsync(fd):
        if len(calls) == 0:
            boom()
        return real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        records.write_run(out, "inspection", rec)
    assert list(out.iterdir()) == []


def test_unknown_language_is_an_error():
    from mhops.errors import MhopsError
    with pytest.raises(MhopsError, match="unknown language"):
        records.labels("fr")


@pytest.mark.parametrize("lang", ["zh-CN", "en"])
def test_labels_merge_per_kind_files(lang):
    """Each record kind keeps its labels in i18n/<lang>.d/; they must reach the templates."""
    words = records.labels(lang)
    assert "statuses" in words and "checks" in words
    assert "backup_run" in words and "backup_check" in words
