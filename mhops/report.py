"""Documents the hospital receives: ``invoke report weekly|monthly|quarterly``.

Owns the report runs: the period (``2026-W48``, ``2026-11``, ``2026Q4`` in the
hospital's time zone), reading the period's run records, the weekly report (周报),
the monthly inspection report with trend charts, disk-full forecasts (through
``mhops.perf``/``mhops.trends``), log error counts and the monthly fault summary, and
the quarterly submission bundle (季度提交材料: one zip with an index page, every record
sheet of the quarter by kind, the FAQ document from the knowledge-base export, a PDF
of the index from headless Chromium, and the evidence that is missing).

Every document is redacted, rendered from ``reports/report_*.j2`` and published
atomically. Identical records and generation time give byte-identical output: the
generation time appears once per document, ordering is stable, zip entries carry a
fixed timestamp and the PDF's creation dates are pinned. What the reports say is
computed in the pure leaf ``mhops.report_facts``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from mhops import perf, records, state, trends
from mhops import report_facts as facts
from mhops.errors import MhopsError
from mhops.redact import Redactor
from mhops.report_output import (
    find_chromium,
    has_cjk_font,
    pin_pdf_dates,
    publish_dir,
    start_pdf,
    zip_bytes,
)

WHATS = ("weekly", "monthly", "quarterly")
EXIT_OK, EXIT_MISSING = 0, 1
# Kinds whose sheets are copied as records.write_run redacted them (see Options).
TRUSTED_SHEETS = frozenset(("inspection",))
_STAMP = re.compile(r"^(\d{8}T\d{6}Z)")

# Adapters the integrator wires (see tasks.py and README): an incident store listing the
# incidents opened in a time range and not resolved, and the knowledge-base export.
ListIncidents = Callable[[datetime, datetime], list[dict[str, Any]]]
KbExport = Callable[[Path, str], Any]


@dataclass
class Options:
    what: str                                   # weekly | monthly | quarterly
    records_dir: Path
    out_dir: Path
    period: str | None = None                   # default: the period holding today
    lang: str = "zh-CN"
    timezone: str = "Asia/Shanghai"
    planned: list[str] = field(default_factory=list)   # weekly: next week's planned work
    perf_thresholds: dict[str, Any] = field(default_factory=dict)
    list_incidents: ListIncidents | None = None
    kb_export: KbExport | None = None
    pdf: str = "auto"                           # auto (when Chromium is there) | off
    chromium: str | None = None                 # renderer binary; default: found on PATH
    secrets: list[str] = field(default_factory=list)
    # Sheets on disk were redacted when mhops.records.write_run published them. auto:
    # scrub every sheet again except the inspection sheets, the bulk of a quarter (~30x
    # the reading time at 90 days x 20 hosts), which only `invoke inspect` writes through
    # write_run; all: scrub those too (a records folder holding other tools' sheets).
    redact_sheets: str = "auto"
    generated_at: datetime | None = None        # tests inject it to compare bytes
    today: date | None = None
    echo: Callable[[str], None] = print


@dataclass
class Report:
    """What a report run produced: its path, exit code and the facts it rendered."""

    exit_code: int
    path: Path
    context: dict[str, Any]


# ------------------------------------------------------------------ periods

_WEEK = re.compile(r"^\s*(\d{4})-?W(\d{1,2})\s*$", re.I)


def period_for(what: str, text: str | None, tz: str, today: date | None = None) -> trends.Period:
    """The period of ``--period``; default the week, month or quarter holding today."""
    z = trends.zone(tz)
    today = today or datetime.now(z).date()
    if not text:
        if what == "weekly":
            y, w, _ = today.isocalendar()
            text = f"{y}-W{w:02d}"
        elif what == "monthly":
            text = f"{today.year}-{today.month:02d}"
        else:
            text = trends.current_quarter(today)
    m = _WEEK.match(text)
    try:
        if m:
            monday = date.fromisocalendar(int(m[1]), int(m[2]), 1)
            start = datetime(monday.year, monday.month, monday.day, tzinfo=z)
            p = trends.Period(f"{int(m[1])}-W{int(m[2]):02d}", "week", start,
                              start + timedelta(days=7))
        else:
            p = trends.parse_period(text, tz)
    except ValueError as exc:
        raise MhopsError(f"--period: {exc}") from None
    want = {"weekly": "week", "monthly": "month", "quarterly": "quarter"}[what]
    if p.kind != want:
        example = {"week": "2026-W48", "month": "2026-11", "quarter": "2026Q4"}[want]
        raise MhopsError(f"--period {text!r}: a {what} report needs a {want} like {example}")
    return p


def months_of(p: trends.Period) -> list[str]:
    out, d = [], p.start
    while d < p.end:
        out.append(f"{d.year}-{d.month:02d}")
        d = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=d.tzinfo)
    return out


def due_months(p: trends.Period, opts: Options) -> list[str]:
    """The period's months that had begun at generation time (a future month lacks nothing)."""
    now = _generated_utc(opts).astimezone(trends.zone(opts.timezone))
    return [m for m in months_of(p) if m <= f"{now.year}-{now.month:02d}"]


# ------------------------------------------------------------------ records

@dataclass
class Loaded:
    folder: Path
    record: dict[str, Any]


def load_records(folder: Path, start: datetime, end: datetime) -> tuple[list[Loaded], list[str]]:
    """Records whose start time is in [start, end), by time; unreadable ones named."""
    out, bad = [], []
    folder = Path(folder)
    if not folder.is_dir():
        return out, bad
    lo, hi = start - timedelta(days=1), end + timedelta(days=1)
    for d in sorted(folder.iterdir()):
        if d.name.startswith(".") or not d.is_dir():
            continue
        m = _STAMP.match(d.name)
        if m:  # the folder name carries the start: skip other periods without parsing
            t = datetime.strptime(m[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            if not lo <= t < hi:
                continue
        path = d / "record.json"
        try:
            rec = json.loads(path.read_bytes())
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            bad.append(f"{d.name}: {exc}")
            continue
        t = facts.started(rec) if isinstance(rec, dict) else None
        if t is None or not rec.get("kind"):
            bad.append(f"{d.name}: no kind or time.started_utc")
            continue
        if start <= t < end:
            out.append(Loaded(d, rec))
    out.sort(key=lambda x: (facts.iso(facts.started(x.record)), str(x.record.get("run_id"))))
    return out, bad


def by_kind(loaded: list[Loaded]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for x in loaded:
        out.setdefault(str(x.record["kind"]), []).append(x.record)
    return out


def open_incidents(list_incidents: ListIncidents | None, since: datetime,
                   until: datetime) -> tuple[list[dict[str, Any]], str | None]:
    """Incidents the store lists as opened before `until` and not resolved.

    The store is optional (no store: only fault records count) and may fail: a report
    is still written, and says the store could not be read.
    """
    if list_incidents is None:
        return [], None
    try:
        got = list_incidents(since, until)
    except Exception as exc:  # a broken store must not stop the documents
        return [], f"{type(exc).__name__}: {exc}"
    return [i for i in (got or []) if isinstance(i, dict) and not i.get("resolved_utc")], None


# ------------------------------------------------------------------ context

def _period_ctx(p: trends.Period, tz: str) -> dict[str, Any]:
    last = p.end - timedelta(days=1)
    return {"label": p.label, "kind": p.kind, "first_day": p.start.date().isoformat(),
            "last_day": last.date().isoformat(), "timezone": tz,
            "start_utc": facts.iso(p.start), "end_utc": facts.iso(p.end)}


def _generated_utc(opts: Options) -> datetime:
    """The generation time: injected, else $SOURCE_DATE_EPOCH (reproducible builds), else now."""
    t = opts.generated_at
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if t is None and epoch.isdigit():
        t = datetime.fromtimestamp(int(epoch), UTC)
    return (t or records.utc_now()).astimezone(UTC).replace(microsecond=0)


def _generated(opts: Options) -> str:
    return records.local_iso(_generated_utc(opts), opts.timezone)


def _headline(rec: dict[str, Any], L: dict[str, Any]) -> str:
    h = rec.get("headline")
    if h:
        return str(h)
    kind = str(rec.get("kind"))
    st = L["statuses"].get(facts.status_of(rec), "-")
    return f"{L['report']['kinds'].get(kind, kind)} · {st}"


# Fields holding a run's or an incident's time: shown in the hospital's time zone.
_TIME_KEYS = frozenset(("time", "first", "last", "resolved", "reported", "acknowledged"))


def localize(o: Any, tz: str, key: str = "") -> Any:
    """A copy with the UTC times of _TIME_KEYS as local 'YYYY-MM-DD HH:MM' for the reader."""
    if isinstance(o, dict):
        return {k: localize(v, tz, k) for k, v in o.items()}
    if isinstance(o, list):
        return [localize(v, tz, key) for v in o]
    if key in _TIME_KEYS and isinstance(o, str) and (t := facts.parse_time(o)):
        return t.astimezone(trends.zone(tz)).strftime("%Y-%m-%d %H:%M")
    return o


def _missing_text(items: list[dict[str, Any]], L: dict[str, Any]) -> list[str]:
    words = L["report"]["missing_codes"]
    return [words[i["code"]].format(**i["params"]) for i in items]


def common(opts: Options, p: trends.Period, loaded: list[Loaded], bad: list[str]
           ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Facts every report shares: inspections, incidents, changes, gaps."""
    L = records.labels(opts.lang)
    kinds = by_kind(loaded)
    for recs in kinds.values():
        for r in recs:
            r["headline"] = _headline(r, L)
    insp = [facts.inspection_row(r) for r in kinds.get("inspection", [])]
    store, store_error = open_incidents(opts.list_incidents, p.start - timedelta(days=366),
                                        p.end)
    inc = facts.incidents(kinds.get("fault", []), store)
    summary = facts.incident_summary(inc, p.start, p.end)
    changes = [facts.change_row(r) for k in facts.CHANGE_KINDS for r in kinds.get(k, [])
               if facts.is_applied(r)]
    changes.sort(key=lambda c: (c["time"] or "", str(c["run_id"])))
    notes = [L["report"]["unreadable"].format(what=b) for b in bad]
    if store_error:
        notes.append(L["report"]["store_error"].format(error=store_error))
    ctx = {"lang": opts.lang, "what": opts.what, "period": _period_ctx(p, opts.timezone),
           "generated_at": _generated(opts),
           "inspections": {"rows": insp, "outcome": facts.inspection_outcome(insp)},
           "audits": [facts.inspection_row(r) for r in kinds.get("security_audit", [])],
           "incidents": summary, "changes": changes, "notes": notes,
           "analyses": [_sheet_row(r) for r in kinds.get("fault_analysis", [])],
           "fault_summaries": [_sheet_row(r) for r in kinds.get("fault_summary", [])]}
    return ctx, kinds


def _sheet_row(rec: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": rec.get("run_id"), "kind": rec.get("kind"),
            "time": facts.iso(facts.started(rec)), "status": facts.status_of(rec),
            "headline": rec.get("headline")}


def _local_day(tz: str):
    z = trends.zone(tz)
    return lambda dt: dt.astimezone(z).strftime("%Y-%m-%d")


def _local_month(tz: str):
    z = trends.zone(tz)
    return lambda dt: dt.astimezone(z).strftime("%Y-%m")


def _incidents_in(rows: list[dict[str, Any]], p: trends.Period) -> list[dict[str, Any]]:
    return [r for r in rows if (t := facts.parse_time(r["reported"])) and p.contains(t)]


# ------------------------------------------------------------------ weekly

def weekly(opts: Options, p: trends.Period, loaded, bad) -> tuple[dict[str, Any], list]:
    ctx, kinds = common(opts, p, loaded, bad)
    eps = facts.episodes(kinds.get("inspection", []))
    still = [e for e in eps if not e["resolved"]]
    failed = [c for c in ctx["changes"] if c["status"] in facts.ABNORMAL]
    ctx["episodes"] = eps
    ctx["open_items"] = {"incidents": ctx["incidents"]["open"], "events": still,
                         "changes": failed}
    ctx["planned"] = list(opts.planned)
    missing = facts.missing_evidence(
        kinds, [], _local_month(opts.timezone), quarter=False,
        incident_rows=[r for r in _incidents_in(ctx["incidents"]["resolved"], p)],
        faq_files=None)
    if not kinds.get("inspection"):
        missing.insert(0, {"code": "no_inspection_week", "params": {"week": p.label}})
    return ctx, missing


# ------------------------------------------------------------------ monthly

def monthly(opts: Options, p: trends.Period, loaded, bad, folder: Path
            ) -> tuple[dict[str, Any], list, dict[str, str]]:
    ctx, kinds = common(opts, p, loaded, bad)
    L = records.labels(opts.lang)["report"]
    th = perf.validate_thresholds(opts.perf_thresholds)
    # The series and forecasts are perf's: one reading of inspections for both reports.
    series, _ = perf.load_inspections(folder, p)
    hosts, _findings, _advice, gaps = perf.analyse_hosts(series, th)
    insp = kinds.get("inspection", [])
    charts_svg: dict[str, str] = {}
    chart_rows = []
    if series:
        from mhops import charts

        overall = _overall(series)
        charts_svg["overall.svg"] = charts.line_chart(
            L["chart_overall"], {L["cpu"]: overall[0], L["memory"]: overall[1]},
            ylabel="%", ymax=100)
        chart_rows.append({"file": "charts/overall.svg", "title": L["chart_overall"]})
        for i, (name, s) in enumerate(series.items(), 1):
            lines = {L["cpu"]: s.cpu, L["memory"]: s.memory}
            for mount in sorted(s.disk):
                lines[f"{L['disk']} {mount}"] = s.disk[mount]
            fname = f"host-{i:03d}.svg"
            charts_svg[fname] = charts.line_chart(f"{L['host']} {name}", lines, ylabel="%",
                                                  ymax=100)
            chart_rows.append({"file": f"charts/{fname}", "title": f"{L['host']} {name}",
                               "host": name})
    logs = facts.log_counts(insp, _local_day(opts.timezone))
    if logs["patterns"]:
        from mhops import charts

        z = trends.zone(opts.timezone)
        lines = {pt["pattern"]: [(datetime.fromisoformat(d).replace(tzinfo=z), n)
                                 for d, n in pt["by_day"].items()] for pt in logs["patterns"]}
        charts_svg["logs.svg"] = charts.line_chart(L["chart_logs"], lines, ylabel=L["matches"])
        chart_rows.append({"file": "charts/logs.svg", "title": L["chart_logs"]})
    forecasts = [{"host": h["host"], "mount": fs["mount"],
                  **{k: fs["disk"].get(k) for k in ("last_value", "per_week", "days_until_full",
                                                    "full_on", "status", "enough")}}
                 for h in hosts for fs in h["filesystems"] if "disk" in fs]
    ctx.update(
        charts=chart_rows, hosts=[{k: h[k] for k in ("host", "inspections", "unreachable",
                                                     "cpu", "memory", "uptime_days")}
                                  for h in hosts],
        forecasts=forecasts,
        forecast_days={"warning": th["forecast_warning_days"],
                       "critical": th["forecast_critical_days"]},
        logs=logs, episodes=facts.episodes(insp),
        trend_gaps=gaps)
    month_rows = _incidents_in(facts.incidents(kinds.get("fault", [])), p)
    missing = facts.missing_evidence(kinds, due_months(p, opts), _local_month(opts.timezone),
                                     quarter=False,
                                     incident_rows=[r for r in month_rows if r["resolved"]],
                                     faq_files=None)
    return ctx, missing, charts_svg


def _overall(series: dict[str, perf.Series]) -> tuple[list, list]:
    """Mean CPU and memory over the hosts, per inspection time."""
    out = []
    for attr in ("cpu", "memory"):
        acc: dict[datetime, list[float]] = {}
        for s in series.values():
            for t, v in getattr(s, attr):
                acc.setdefault(t.replace(second=0, microsecond=0), []).append(v)
        out.append([(t, round(sum(v) / len(v), 2)) for t, v in sorted(acc.items())])
    return out[0], out[1]


# ------------------------------------------------------------------ quarterly

def quarterly(opts: Options, p: trends.Period, loaded, bad, faq: list[str]
              ) -> tuple[dict[str, Any], list]:
    ctx, kinds = common(opts, p, loaded, bad)
    L = records.labels(opts.lang)["report"]
    order = list(facts.KIND_ORDER) + sorted(set(kinds) - set(facts.KIND_ORDER))
    sections = []
    for kind in order:
        items = [{**_sheet_row(x.record),
                  "base": f"records/{_safe(kind)}/{_safe(x.folder.name)}"}
                 for x in loaded if x.record["kind"] == kind]
        if items:
            sections.append({"kind": kind, "label": L["kinds"].get(kind, kind),
                             "items": items})
    month_of = _local_month(opts.timezone)
    per_month = []
    for m in months_of(p):
        rows = [r for r, rec in zip(ctx["inspections"]["rows"], kinds.get("inspection", []),
                                    strict=True) if month_of(facts.started(rec)) == m]
        per_month.append({"month": m, **facts.inspection_outcome(rows)})
    eps = facts.episodes(kinds.get("inspection", []))
    ctx.update(sections=sections, per_month=per_month, faq=faq,
               episodes_total=len(eps), episodes_open=sum(1 for e in eps if not e["resolved"]),
               drills=[facts.change_row(r) for r in kinds.get("drill", [])],
               perf=[_sheet_row(r) for r in kinds.get("perf", [])])
    q_rows = _incidents_in(facts.incidents(kinds.get("fault", [])), p)
    missing = facts.missing_evidence(kinds, due_months(p, opts), month_of, quarter=True,
                                     incident_rows=[r for r in q_rows if r["resolved"]],
                                     faq_files=faq)
    return ctx, missing


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _kb_files(opts: Options, redactor: Redactor) -> dict[str, bytes]:
    """The FAQ document(s) the knowledge-base export writes, redacted, by relative path."""
    if opts.kb_export is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="mhops-kb-") as tmp:
        try:
            opts.kb_export(Path(tmp), opts.lang)
        except Exception as exc:  # the bundle lists the FAQ as missing instead
            opts.echo(f"kb_export failed: {type(exc).__name__}: {exc}")
            return {}
        out = {}
        for f in sorted(Path(tmp).rglob("*")):
            if f.is_file():
                rel = "faq/" + "/".join(_safe(x) for x in f.relative_to(tmp).parts)
                data = f.read_bytes()
                if f.suffix.lower() in (".md", ".html", ".htm", ".txt", ".json", ".csv"):
                    data = redactor.text(data.decode("utf-8", "replace")).encode()
                out[rel] = data
        return out


def _sheet_files(x: Loaded, base: str, lang: str, redactor: Redactor,
                 scrub: bool) -> dict[str, bytes]:
    """One record's sheet as HTML and Markdown: the record's own, else a generic one."""
    out = {}
    for fmt in ("html", "md"):
        try:
            data = (x.folder / f"record.{fmt}").read_bytes()
            if scrub:
                data = redactor.text(data.decode("utf-8")).encode("utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            clean = redactor.obj(x.record)
            rec = {**clean, "status": facts.status_of(clean),
                   "run_id": clean.get("run_id") or x.folder.name,
                   "headline": clean.get("headline") or ""}
            data = records.render("report_sheet", {"lang": lang, "rec": rec,
                                                   "fields": _flatten(clean)}, fmt).encode()
        out[f"{base}.{fmt}"] = data
    return out


def _flatten(o: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(o, dict):
        return [kv for k, v in o.items() for kv in _flatten(v, f"{prefix}.{k}" if prefix else k)]
    if isinstance(o, list) and o and any(isinstance(v, (dict, list)) for v in o):
        return [kv for i, v in enumerate(o) for kv in _flatten(v, f"{prefix}[{i}]")]
    if isinstance(o, list):
        return [(prefix, ", ".join(map(str, o)))]
    return [(prefix, "" if o is None else str(o))]


def render_both(name: str, ctx: dict[str, Any]) -> dict[str, str]:
    return {fmt: records.render(name, ctx, fmt) for fmt in ("md", "html")}


# ------------------------------------------------------------------ the run

def run(opts: Options) -> Report:
    if opts.what not in WHATS:
        raise MhopsError(f"unknown report {opts.what!r}; valid: {', '.join(WHATS)}")
    records.labels(opts.lang)
    if opts.pdf not in ("auto", "off"):
        raise MhopsError(f"report.pdf must be auto or off, got {opts.pdf!r}")
    if opts.redact_sheets not in ("auto", "all"):
        raise MhopsError(f"report.redact_sheets must be auto or all, got {opts.redact_sheets!r}")
    p = period_for(opts.what, opts.period, opts.timezone, opts.today)
    redactor = Redactor(secrets=opts.secrets)
    loaded, bad = load_records(opts.records_dir, p.start, p.end)
    L = records.labels(opts.lang)
    name = f"{opts.what}-{p.label}.{opts.lang}"
    if opts.what == "quarterly":
        return _run_quarterly(opts, p, loaded, bad, redactor, name)
    if opts.what == "weekly":
        ctx, missing = weekly(opts, p, loaded, bad)
        svgs: dict[str, str] = {}
    else:
        ctx, missing, svgs = monthly(opts, p, loaded, bad, Path(opts.records_dir))
    ctx["missing"] = _missing_text(missing, L)
    clean = redactor.obj(localize(ctx, opts.timezone))
    docs = render_both(f"report_{opts.what}", clean)
    files = {"report.md": docs["md"].encode(), "report.html": docs["html"].encode()}
    files.update({f"charts/{n}": redactor.text(s).encode() for n, s in svgs.items()})
    final = Path(opts.out_dir) / name
    publish_dir(final, files)
    opts.echo(str(final))
    return Report(EXIT_MISSING if missing else EXIT_OK, final, clean)


def _run_quarterly(opts: Options, p, loaded, bad, redactor: Redactor, name: str) -> Report:
    L = records.labels(opts.lang)
    faq_files = _kb_files(opts, redactor)
    ctx, missing = quarterly(opts, p, loaded, bad, sorted(faq_files))
    chromium = find_chromium(opts.chromium) if opts.pdf == "auto" else None
    ctx["pdf"] = bool(chromium)
    ctx["print"] = False
    if not chromium and opts.pdf == "auto":
        ctx["notes"].append(L["report"]["no_pdf"])
    if chromium and opts.lang == "zh-CN" and not has_cjk_font():
        ctx["notes"].append(L["report"]["no_cjk_font"])
    ctx["missing"] = _missing_text(missing, L)
    clean = redactor.obj(localize(ctx, opts.timezone))
    docs = render_both("report_quarterly", clean)
    files: dict[str, bytes] = {"index.md": docs["md"].encode(),
                               "index.html": docs["html"].encode(), **faq_files}
    with tempfile.TemporaryDirectory(prefix="mhops-report-") as tmp:
        proc = None
        if chromium:
            # The printed copy names the sheets without linking them: links would become
            # file:// URIs of this temp folder, meaningless on paper and different each run.
            html = Path(tmp) / "index.html"
            html.write_text(records.render("report_quarterly", {**clean, "print": True},
                                           "html"), encoding="utf-8")
            proc = start_pdf(chromium, html, Path(tmp) / "index.pdf", Path(tmp) / "profile")
        for x in loaded:
            base = f"records/{_safe(str(x.record['kind']))}/{_safe(x.folder.name)}"
            scrub = opts.redact_sheets == "all" or x.record["kind"] not in TRUSTED_SHEETS
            files.update(_sheet_files(x, base, opts.lang, redactor, scrub))
        if proc is not None:
            try:
                _, err = proc.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            pdf = Path(tmp) / "index.pdf"
            if proc.returncode == 0 and pdf.exists():
                files["index.pdf"] = pin_pdf_dates(pdf.read_bytes())
            else:
                opts.echo(f"PDF not produced (chromium exit {proc.returncode}): "
                          f"{redactor.text(err.decode(errors='replace'))[-300:]}")
    final = Path(opts.out_dir) / f"{name}.zip"
    state.atomic_write(final, zip_bytes(files), mode=0o644)
    opts.echo(str(final))
    return Report(EXIT_MISSING if missing else EXIT_OK, final, clean)
