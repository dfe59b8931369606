"""Quarterly performance analysis: ``invoke perf`` from inspection records and databases to record.

Owns the analysis run: the settings (thresholds and their validation, the period),
reading the stored inspection records of the period into per-host series (CPU,
memory, load, disk and inodes per filesystem, uptime, and service RSS where an
inspection recorded one), reading the databases' performance figures through the
``mhops_perf`` role (ansible-runner, read only) on the hosts that hold
``mhops_databases``, turning trends and figures into findings with evidence and
concrete recommendations (the rules themselves are in ``mhops.trends``), the
restart advice with its reasoning, the data sources and gaps, the ``perf`` record
and the exit code. Nothing is changed anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mhops import records, thresholds, trends
from mhops.errors import MhopsError
from mhops.redact import Redactor

KIND = "perf"
SCHEMA_VERSION = 1
PLAYBOOK = "playbooks/perf.yml"
ENGINES = ("postgresql", "mariadb")
EXIT_OK, EXIT_WARNING, EXIT_CRITICAL = 0, 1, 2

# Keys of the invoke.yaml `perf.thresholds` mapping, with their defaults.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "min_points": 4,                     # inspections needed for a trend
    "min_span_days": 1,                  # ... spread over at least this many days
    "forecast_warning_days": 30,         # a filesystem forecast to fill within: warning
    "forecast_critical_days": 7,         # ... within: critical
    "min_growth_per_day": 0.01,          # percentage points a day; less is flat
    "drop_points": 5,                    # a fall bigger than this restarts the fit (clean-up)
    "restart_uptime_days": 90,           # restart rule: up longer than this ...
    "restart_memory_growth_points": 10,  # ... and memory % grew more than this
    "restart_rss_growth_percent": 20,    # ... or a service's RSS grew more than this %
    "cpu_p95_percent": 80,               # CPU busy at the 95th percentile of inspections
    "memory_p95_percent": 90,
    "cache_hit_percent": 99,             # PostgreSQL shared buffers hit ratio
    "buffer_pool_hit_percent": 99,       # InnoDB buffer pool hit ratio
    "min_block_reads": 10000,            # fewer block reads: too little activity to judge
    "connections_warning_percent": 80,   # of max_connections (minus reserved)
    "connections_critical_percent": 95,
    "long_transaction_minutes": 5,
    "seq_scan_min_bytes": 10485760,      # missing-index candidates: tables at least this big
    "seq_scan_min_count": 100,           # ... with at least this many whole-table scans
    "seq_scan_rows_percent": 50,         # ... each reading at least this share of rows
    "unused_index_min_bytes": 1048576,   # unused indexes at least this big
}
_INT_KEYS = {"min_points"}


# ---------------------------------------------------------------- settings (pure)

def validate_thresholds(raw: Any, where: str = "perf.thresholds") -> dict[str, float]:
    """Merge a thresholds mapping over the defaults, refusing unknown keys and bad values."""
    try:
        out = thresholds.validate_flat(raw, DEFAULT_THRESHOLDS, where, _INT_KEYS)
    except thresholds.ThresholdError as exc:
        raise MhopsError(str(exc)) from None
    if out["forecast_critical_days"] > out["forecast_warning_days"]:
        raise MhopsError(f"{where}: forecast_critical_days must not exceed "
                         "forecast_warning_days")
    if out["connections_warning_percent"] > out["connections_critical_percent"]:
        raise MhopsError(f"{where}: connections_warning_percent must not exceed "
                         "connections_critical_percent")
    return out


def period_for(text: str | None, tz: str, today=None) -> trends.Period:
    """The period of ``--period`` (default: the current quarter in the hospital's zone)."""
    if not text:
        now = today or datetime.now(trends.zone(tz)).date()
        text = trends.current_quarter(now)
    try:
        return trends.parse_period(text, tz)
    except ValueError as exc:
        raise MhopsError(f"--period: {exc}") from None


# ----------------------------------------------------------- inspection records

@dataclass
class Series:
    """One host's points from the period's inspections, as (UTC datetime, value)."""

    host: str
    cpu: list = field(default_factory=list)
    memory: list = field(default_factory=list)
    load: list = field(default_factory=list)
    uptime: list = field(default_factory=list)
    disk: dict[str, list] = field(default_factory=dict)
    inode: dict[str, list] = field(default_factory=dict)
    rss: dict[str, list] = field(default_factory=dict)
    inspections: int = 0
    unreachable: int = 0


# Results a future inspection may carry for a service's resident memory (MB, target =
# service); the restart rule applies to them exactly as to host memory.
RSS_CHECKS = ("process_rss_mb", "service_rss_mb")


def load_inspections(folder: Path, period: trends.Period) -> tuple[dict[str, Series],
                                                                   dict[str, Any]]:
    """Per-host series of the inspection records whose time falls in the period."""
    hosts: dict[str, Series] = {}
    used, unreadable = [], []
    folder = Path(folder)
    paths = sorted(folder.glob("*-inspection*/record.json")) if folder.is_dir() else []
    for path in paths:
        if path.parent.name.startswith("."):
            continue
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            started = records.parse_time((rec.get("time") or {}).get("started_utc"))
        except (OSError, ValueError, AttributeError) as exc:
            unreadable.append(f"{path.parent.name}: {exc}")
            continue
        if rec.get("kind") != "inspection" or started is None:
            unreadable.append(f"{path.parent.name}: not an inspection record with a time")
            continue
        if not period.contains(started):
            continue
        used.append(started)
        for h in rec.get("hosts") or []:
            s = hosts.setdefault(str(h.get("host")), Series(str(h.get("host"))))
            s.inspections += 1
            if not h.get("reachable", True):
                s.unreachable += 1
                continue
            when = records.parse_time(h.get("collected_at")) or started
            for r in h.get("results") or []:
                _add(s, when, r)
    source = {"folder": str(folder), "records": len(used),
              "first": records.iso(min(used)) if used else None,
              "last": records.iso(max(used)) if used else None,
              "unreadable": unreadable}
    return dict(sorted(hosts.items())), source


def _add(s: Series, when: datetime, r: dict[str, Any]) -> None:
    value = r.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    check, target = r.get("check"), str(r.get("target") or "")
    point = (when, float(value))
    if check == "cpu_percent":
        s.cpu.append(point)
    elif check == "memory_percent":
        s.memory.append(point)
    elif check == "load_per_core":
        s.load.append(point)
    elif check == "uptime":
        s.uptime.append(point)
    elif check == "disk_percent":
        s.disk.setdefault(target, []).append(point)
    elif check == "inode_percent":
        s.inode.setdefault(target, []).append(point)
    elif check in RSS_CHECKS:
        s.rss.setdefault(target, []).append(point)


def _day_iso(day: float | None) -> str | None:
    return None if day is None else records.iso(trends.add_days(day).replace(microsecond=0))


def analyse_hosts(series: dict[str, Series], th: dict[str, float]) -> tuple[
        list[dict[str, Any]], list[trends.Finding], list[dict[str, Any]], list[str]]:
    """Trends and forecasts per host, the findings they raise, restart advice, gaps."""
    out, findings, advice, gaps = [], [], [], []
    mp, span, drop = int(th["min_points"]), th["min_span_days"], th["drop_points"]
    for name, s in series.items():
        cpu_pts, mem_pts = trends.as_days(s.cpu), trends.as_days(s.memory)
        cpu = trends.trend(cpu_pts, min_points=mp, min_span_days=span)
        mem = trends.trend(mem_pts, min_points=mp, min_span_days=span)
        up = trends.as_days(s.uptime)
        reboot = trends.uptime_segment_start(up)
        if not mem.enough:
            gaps.append(f"{name}: {len(mem_pts)} memory points over "
                        f"{mem.span_days:g} days (< {mp} points or < {span:g} days): no trend")
        filesystems = []
        for mount in sorted(set(s.disk) | set(s.inode)):
            fs = {"mount": mount}
            for key, pts_raw in (("disk", s.disk.get(mount, [])),
                                 ("inode", s.inode.get(mount, []))):
                pts = trends.as_days(pts_raw)
                t = trends.trend(pts, min_points=mp, min_span_days=span, drop=drop)
                seg = trends.since_last_drop(pts, drop)
                days = trends.days_until_full(seg, min_points=mp,
                                              min_growth_per_day=th["min_growth_per_day"],
                                              min_span_days=span)
                status = trends.forecast_status(days, th["forecast_warning_days"],
                                                th["forecast_critical_days"])
                full_on = _day_iso(seg[-1][0] + days) if days is not None and seg else None
                fs[key] = {**t.as_dict(), "last_value": pts[-1][1] if pts else None,
                           "days_until_full": None if days is None else round(days, 1),
                           "full_on": full_on, "status": status,
                           "segment_start": _day_iso(t.segment_start_day)}
                if status != trends.NORMAL:
                    findings.append(trends.Finding(
                        f"{key}_forecast", status, name, mount, f"{key}_days_until_full",
                        round(days, 1), th["forecast_critical_days"]
                        if status == trends.CRITICAL else th["forecast_warning_days"],
                        {"last": pts[-1][1], "per_week": t.per_week, "full_on": full_on,
                         "points": len(seg)}))
            filesystems.append(fs)
        # Memory growth for the restart rule counts only since the last reboot in the period.
        since = [p for p in mem_pts if reboot is None or p[0] >= reboot]
        mem_since = trends.trend(since, min_points=mp, min_span_days=span)
        uptime_days = up[-1][1] if up else None
        a = trends.restart_advice(name, uptime_days, mem_since,
                                  max_uptime_days=th["restart_uptime_days"],
                                  growth_limit=th["restart_memory_growth_points"])
        advice.append({**a.as_dict(), "kind": "host", "host": name,
                       "since_reboot": _day_iso(reboot)})
        for svc, pts_raw in sorted(s.rss.items()):
            rss = trends.trend([p for p in trends.as_days(pts_raw)
                                if reboot is None or p[0] >= reboot],
                               min_points=mp, min_span_days=span)
            b = trends.restart_advice(f"{name}/{svc}", uptime_days, rss,
                                      max_uptime_days=th["restart_uptime_days"],
                                      growth_limit=th["restart_rss_growth_percent"],
                                      relative=True)
            advice.append({**b.as_dict(), "kind": "service", "host": name,
                           "since_reboot": _day_iso(reboot)})
        findings.extend(trends.host_findings(name, cpu, mem, th))
        out.append({"host": name, "inspections": s.inspections, "unreachable": s.unreachable,
                    "points": len(mem_pts), "first": _day_iso(mem_pts[0][0]) if mem_pts else None,
                    "last": _day_iso(mem_pts[-1][0]) if mem_pts else None,
                    "enough": mem.enough, "cpu": cpu.as_dict(), "memory": mem.as_dict(),
                    "load_per_core": trends.stats([v for _, v in s.load]),
                    "uptime_days": uptime_days, "reboots": _reboots(up),
                    "filesystems": filesystems, "services_rss": sorted(s.rss)})
    for a in advice:
        if a["restart"]:
            findings.append(trends.Finding(
                "restart", trends.WARNING, a["host"], a["subject"],
                "memory_growth", a["growth"], a["growth_limit"],
                {k: a[k] for k in ("uptime_days", "uptime_limit_days", "first", "last",
                                   "span_days", "unit")}))
    if series and not any(s.rss for s in series.values()):
        gaps.append("no service RSS in the inspection records: the restart rule was applied "
                    "to host memory only")
    return out, findings, advice, gaps


def _reboots(up: list[tuple[float, float]]) -> int:
    return sum(1 for i in range(1, len(up)) if up[i][1] < up[i - 1][1])


# ------------------------------------------------------------------ databases

@dataclass
class Db:
    host: str
    name: str
    engine: str
    database: str
    error: str = ""
    server_version: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    statements_source: str = ""


def databases(selection, wanted: list[str]) -> list[Db]:
    """The mhops_databases entries of the selected hosts, checked (file/line on error)."""
    out: list[Db] = []
    for h in selection.hosts:
        dbs = h.vars.get("mhops_databases")
        if dbs is None:
            continue
        path, line = h.where("mhops_databases")
        if not isinstance(dbs, list):
            raise MhopsError(f"host {h.name}: mhops_databases must be a list", path=path,
                             line=line)
        for i, d in enumerate(dbs):
            p, ln = h.where(f"mhops_databases[{i}]")
            where = {"path": p or path, "line": ln or line}
            if not isinstance(d, dict) or not d.get("name") or not d.get("database"):
                raise MhopsError(f"host {h.name}: mhops_databases[{i}] needs name and "
                                 "database", **where)
            if d.get("engine") not in ENGINES:
                raise MhopsError(f"host {h.name}: mhops_databases[{i}] ({d['name']}): engine "
                                 f"{d.get('engine')!r} is not one of {', '.join(ENGINES)}",
                                 **where)
            if not wanted or d["name"] in wanted:
                out.append(Db(h.name, str(d["name"]), d["engine"], str(d["database"])))
    unknown = sorted(set(wanted) - {d.name for d in out})
    if unknown:
        raise MhopsError(f"--database {', '.join(unknown)}: not in any selected host's "
                         "mhops_databases")
    return out


def _rows(x: Any) -> list[dict[str, Any]]:
    # postgresql_query reports an empty result as {}.
    return [r for r in x if isinstance(r, dict)] if isinstance(x, list) else []


def _reason(msg: Any) -> str:
    text = " ".join(str(msg or "not read").split())
    i = text.find("': ")
    if text.startswith("Cannot execute SQL") and i > 0:
        text = text[i + 3:].split(", query list:")[0]
    return text[:400]


def read_figures(d: Db, report: dict[str, Any]) -> None:
    """Fill one database's figures from the role's report (or its error)."""
    if d.engine == "postgresql":
        r = next((r for r in report.get("postgresql", []) if r.get("item") == d.name), None)
        if r is None or "query_all_results" not in r:
            d.error = _reason((r or {}).get("msg"))
            return
        q = r["query_all_results"]
        settings = (_rows(q[0]) or [{}])[0]
        d.server_version = str(settings.get("server_version", ""))
        st = next((x for x in report.get("postgresql_statements", [])
                   if (x.get("item") or {}).get("item") == d.name), None)
        statements, st_error = [], ""
        if st is not None:
            if "query_result" in st:
                statements = _rows(st["query_result"])
            else:
                st_error = _reason(st.get("msg"))
        database = (_rows(q[1]) or [{}])[0]
        settings["stats_reset"] = database.get("stats_reset")
        d.figures = {"settings": settings, "database": database,
                     "connections": (_rows(q[2]) or [{}])[0].get("connections", 0),
                     "long_transactions": _rows(q[3]), "tables": _rows(q[4]),
                     "unused_indexes": _rows(q[5]), "statements": statements,
                     "statements_error": st_error}
        d.statements_source = "pg_stat_statements" if st is not None and not st_error else ""
        return
    r = next((r for r in report.get("mariadb", []) if r.get("item") == d.name), None)
    if r is None or "query_result" not in r:
        d.error = _reason((r or {}).get("msg"))
        return
    q = r["query_result"]
    settings = (_rows(q[0]) or [{}])[0]
    d.server_version = str(settings.get("server_version", ""))
    status = {str(x.get("name")).lower(): _num(x.get("value")) for x in _rows(q[1])}
    long = _rows(q[2])
    for x in long:
        if x.get("started_epoch") is not None:
            x["trx_started"] = records.iso(datetime.fromtimestamp(int(x["started_epoch"]), UTC))
    fig = {"settings": settings, "status": status, "long_transactions": long,
           "tables": _rows(q[3]), "statements": [], "full_scans": [], "unused_indexes": [],
           "statements_error": ""}
    ps = next((x for x in report.get("mariadb_ps", [])
               if (x.get("item") or {}).get("item") == d.name), None)
    slow = next((x for x in report.get("mariadb_slow", [])
                 if (x.get("item") or {}).get("item") == d.name), None)
    if ps is not None:
        if "query_result" in ps:
            p = ps["query_result"]
            fig.update(statements=_rows(p[0]), full_scans=_rows(p[1]),
                       unused_indexes=_rows(p[2]))
            d.statements_source = "performance_schema"
        else:
            fig["statements_error"] = _reason(ps.get("msg"))
    elif slow is not None:
        if "query_result" in slow:
            fig["statements"] = _rows(slow["query_result"][0])
            d.statements_source = "mysql.slow_log"
        else:
            fig["statements_error"] = _reason(slow.get("msg"))
    d.figures = fig


def _num(v: Any) -> Any:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return v


def db_findings(d: Db, th: dict[str, float]) -> list[trends.Finding]:
    """Bottlenecks of one database, plus how to enable a missing statement source."""
    scope = f"{d.host}/{d.name}"
    if d.error:
        return [trends.Finding("db_unreadable", trends.CRITICAL, scope, d.database, "read",
                               d.error, None, {})]
    f = d.figures
    s = f["settings"]
    if d.engine == "postgresql":
        out = trends.pg_findings(scope, f, th)
        if not (s.get("pgss_preloaded") and s.get("pgss_schema")):
            out.insert(0, trends.Finding(
                "pgss_missing", trends.WARNING, scope, "pg_stat_statements",
                "shared_preload_libraries", s.get("shared_preload_libraries") or "",
                "pg_stat_statements",
                {"preloaded": bool(s.get("pgss_preloaded")),
                 "created": bool(s.get("pgss_schema")),
                 "available": bool(s.get("pgss_available")), "database": d.database,
                 "step": _pgss_step(s)}))
        return out
    out = trends.mariadb_findings(scope, f, th)
    if not s.get("performance_schema"):
        out.insert(0, trends.Finding(
            "ps_off", trends.WARNING, scope, "performance_schema", "performance_schema",
            "OFF", "ON", {"slow_query_log": bool(s.get("slow_query_log")),
                          "slow_query_log_file": s.get("slow_query_log_file"),
                          "log_output": s.get("log_output"),
                          "long_query_time": s.get("long_query_time"),
                          "slow": _slow_step(s)}))
    return out


def _pgss_step(s: dict[str, Any]) -> str:
    if not s.get("pgss_available"):
        return "install"
    if not s.get("pgss_preloaded"):
        return "preload"
    return "create"


def _slow_step(s: dict[str, Any]) -> str:
    if not s.get("slow_query_log"):
        return "off"
    return "table" if "TABLE" in str(s.get("log_output") or "").upper() else "file"


# ------------------------------------------------------------------ wording

class _Fill(dict):
    def __missing__(self, key: str) -> str:
        return "?"


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}".rstrip("0").rstrip(".").replace(",", " ")
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}".replace(",", " ")
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return "-" if v is None else str(v)


def words(f: trends.Finding, lang: str) -> dict[str, str]:
    """The finding's evidence and recommendation sentences in the record's language."""
    L = records.labels(lang)[KIND]["findings"]
    w = L.get(f.kind, {})
    ev = dict(f.evidence)
    P = records.labels(lang)[KIND]
    fill = _Fill({k: (P["yes_word"] if v else P["no_word"]) if isinstance(v, bool) else _fmt(v)
                  for k, v in ev.items()})
    if "unit" in ev:
        fill["unit"] = P["restart"]["units"].get(ev["unit"], ev["unit"])
    if f.kind == "unused_index" and not ev.get("stats_reset"):
        fill["stats_reset"] = records.labels(lang)[KIND]["never_reset"]
    fill.update(scope=f.scope, subject=f.subject, metric=f.metric, value=_fmt(f.value),
                threshold=_fmt(f.threshold), size=human_bytes(ev.get("size_bytes")))
    if f.kind in ("seq_scan", "full_scan"):
        key = "recommend_columns" if ev.get("columns") else "recommend"
        fill["table"] = f.subject.split(".")[-1] if f.kind == "full_scan" else f.subject
        recommend = w.get(key, "").format_map(fill)
    elif f.kind == "pgss_missing":
        recommend = w.get(f"recommend_{ev.get('step')}", "").format_map(fill)
    elif f.kind == "ps_off":
        recommend = (w.get("recommend", "").format_map(fill) + " "
                     + w.get(f"slow_{ev.get('slow')}", "").format_map(fill)).strip()
    elif f.kind == "unused_index" and ev.get("supports_fk"):
        recommend = w.get("recommend_fk", "").format_map(fill)
    else:
        recommend = w.get("recommend", "").format_map(fill)
    return {"title": w.get("title", f.kind),
            "evidence_text": w.get("evidence", "").format_map(fill),
            "recommendation": recommend}


def advice_reason(a: dict[str, Any], lang: str) -> str:
    L = records.labels(lang)[KIND]["restart"]
    fill = _Fill({k: _fmt(v) for k, v in a.items()})
    fill["unit"] = L["units"].get(a.get("unit"), a.get("unit"))
    return L["reasons"][a["reason"]].format_map(fill)


# ----------------------------------------------------------------------- the run

@dataclass
class Options:
    records_dir: Path                    # where the perf record is written
    inventory: list[str] = field(default_factory=list)   # empty: no database analysis
    inspections_dir: Path | None = None  # where inspection records are read; default records_dir
    period: str | None = None
    limit: str | None = None
    databases: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)
    top_n: int = 10
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    vault_password_file: str | None = None
    today: Any = None                    # tests: the local date for the default period
    echo: Callable[[str], None] = print


def run(opts: Options) -> records.Outcome:
    records.labels(opts.lang)
    th = validate_thresholds(opts.thresholds)
    if isinstance(opts.top_n, bool) or not isinstance(opts.top_n, int) or opts.top_n <= 0:
        raise MhopsError(f"perf.top_n must be a positive integer, got {opts.top_n!r}")
    period = period_for(opts.period, opts.timezone, opts.today)
    started = records.utc_now()
    gaps: list[str] = []
    folder = Path(opts.inspections_dir or opts.records_dir)
    series, source = load_inspections(folder, period)
    if not source["records"]:
        gaps.append(f"no inspection records in {folder} for {period.label}: no host trends")
    gaps.extend(f"unreadable inspection record {u}" for u in source["unreadable"])
    hosts, findings, advice, host_gaps = analyse_hosts(series, th)
    gaps.extend(host_gaps)
    dbs: list[Db] = []
    redactor = Redactor()
    selection = None
    if opts.inventory:
        from mhops.inventory import select
        from mhops.runner import run_playbook

        selection = select(opts.inventory, opts.limit, opts.vault_password_file)
        redactor = Redactor(secrets=selection.secrets)
        dbs = databases(selection, list(opts.databases))
        if dbs:
            run = run_playbook(PLAYBOOK, inventory=opts.inventory,
                               limit=",".join(sorted({d.host for d in dbs})),
                               extravars={
                                   "mhops_perf_names": [d.name for d in dbs],
                                   "mhops_perf_top_n": opts.top_n,
                                   "mhops_perf_long_transaction_minutes":
                                       th["long_transaction_minutes"],
                                   "mhops_perf_seq_scan_min_bytes": int(th["seq_scan_min_bytes"]),
                                   "mhops_perf_unused_index_min_bytes":
                                       int(th["unused_index_min_bytes"])},
                               task_action="ansible.builtin.set_fact", redactor=redactor)
            for d in dbs:
                o = run.hosts.get(d.host)
                if o is None or o.status != "ok":
                    d.error = o.message if o else "no result from Ansible"
                    continue
                read_figures(d, o.result.get("ansible_facts", {}).get("mhops_perf_report", {}))
        else:
            gaps.append("no selected host defines mhops_databases: no database analysis")
    else:
        gaps.append("no inventory given: no database analysis")
    for d in dbs:
        findings.extend(db_findings(d, th))
        if d.error:
            gaps.append(f"{d.host}/{d.name}: figures could not be read: {d.error}")
        elif d.figures.get("statements_error"):
            gaps.append(f"{d.host}/{d.name}: top statements could not be read: "
                        f"{d.figures['statements_error']}")
    record = build_record(opts, period, th, selection, source, hosts, dbs, findings, advice,
                          gaps, started)
    run_dir = records.write_run(opts.records_dir, KIND, record, redactor)
    _echo(opts, record)
    opts.echo(str(run_dir))
    return records.Outcome(record["exit_code"], run_dir, record)


def exit_code(findings: list[trends.Finding]) -> int:
    sev = trends.worst([f.severity for f in findings])
    return {trends.CRITICAL: EXIT_CRITICAL, trends.WARNING: EXIT_WARNING}.get(sev, EXIT_OK)


def build_record(opts, period, th, selection, source, hosts, dbs, findings, advice, gaps,
                 started) -> dict[str, Any]:
    finished = records.utc_now()
    order = {trends.CRITICAL: 0, trends.WARNING: 1}
    findings = sorted(findings, key=lambda f: (order.get(f.severity, 2), f.scope, f.kind,
                                               f.subject))
    rows = []
    for i, f in enumerate(findings, 1):
        rows.append({"id": i, **f.as_dict(), **words(f, opts.lang)})
    code = exit_code(findings)
    forecasts = [{"host": h["host"], "mount": fs["mount"], "kind": key, **{
        k: fs[key].get(k) for k in ("last_value", "per_week", "slope_per_day",
                                    "days_until_full", "full_on", "status", "enough",
                                    "segment_start", "n")}}
        for h in hosts for fs in h["filesystems"] for key in ("disk", "inode") if key in fs]
    for a in advice:
        a["reasoning"] = advice_reason(a, opts.lang)
    db_out = []
    for d in dbs:
        f = d.figures
        s = f.get("settings") or {}
        entry = {"host": d.host, "name": d.name, "engine": d.engine, "database": d.database,
                 "server_version": d.server_version, "error": d.error or None,
                 "statements_source": d.statements_source or None,
                 "top_statements": f.get("statements") or [],
                 "long_transactions": f.get("long_transactions") or []}
        if d.engine == "postgresql" and not d.error:
            db = f.get("database") or {}
            hit, read = int(db.get("blks_hit") or 0), int(db.get("blks_read") or 0)
            entry.update(
                cache_hit_percent=round(100 * hit / (hit + read), 2) if hit + read else None,
                connections=f.get("connections"), max_connections=s.get("max_connections"),
                peak_connections=None, stats_reset=db.get("stats_reset"),
                server_started=s.get("server_started_utc"),
                pg_stat_statements={"available": s.get("pgss_available"),
                                    "preloaded": s.get("pgss_preloaded"),
                                    "created": bool(s.get("pgss_schema"))},
                seq_scan_tables=f.get("tables") or [], unused_indexes=f.get("unused_indexes")
                or [])
        elif d.engine == "mariadb" and not d.error:
            st = f.get("status") or {}
            req, rd = int(st.get("innodb_buffer_pool_read_requests") or 0), \
                int(st.get("innodb_buffer_pool_reads") or 0)
            entry.update(
                cache_hit_percent=round(100 * (1 - rd / req), 2) if req else None,
                connections=st.get("threads_connected"),
                max_connections=s.get("max_connections"),
                peak_connections=st.get("max_used_connections"),
                uptime_s=st.get("uptime"), performance_schema=bool(s.get("performance_schema")),
                slow_query_log=bool(s.get("slow_query_log")),
                full_scans=f.get("full_scans") or [],
                unused_indexes=f.get("unused_indexes") or [],
                select_full_join=st.get("select_full_join"), select_scan=st.get("select_scan"))
        db_out.append(entry)
    sources = [{"source": "inspection_records", **{k: v for k, v in source.items()
                                                   if k != "unreadable"}}]
    for d in dbs:
        if d.error:
            continue
        s = d.figures.get("settings") or {}
        if d.engine == "postgresql":
            since = (d.figures.get("database") or {}).get("stats_reset")
            sources.append({"source": f"{d.host}/{d.name}",
                            "detail": "pg_stat_database, pg_stat_activity, pg_stat_user_tables, "
                                      "pg_stat_user_indexes"
                                      + (", pg_stat_statements" if d.statements_source else ""),
                            "since": since or s.get("server_started_utc")})
        else:
            sources.append({"source": f"{d.host}/{d.name}",
                            "detail": "information_schema (GLOBAL_STATUS, INNODB_TRX, TABLES)"
                                      + (f", {d.statements_source}" if d.statements_source
                                         else ""),
                            "since": "uptime " + _fmt(d.figures["status"].get("uptime")) + " s"})
    counts = {s: sum(1 for f in findings if f.severity == s)
              for s in (trends.WARNING, trends.CRITICAL)}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "run_id": records.run_id(KIND, started),
        "lang": opts.lang,
        "status": {EXIT_OK: "normal", EXIT_WARNING: "warning"}.get(code, "critical"),
        "exit_code": code,
        "period": {"label": period.label, "kind": period.kind,
                   "start": period.start.isoformat(), "end": period.end.isoformat(),
                   "timezone": opts.timezone, "days": round(period.days, 1)},
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "scope": {"inventory": list(selection.sources) if selection else [],
                  "limit": selection.limit if selection else None,
                  "hosts": [h["host"] for h in hosts],
                  "databases": [f"{d.host}/{d.name}" for d in dbs]},
        "settings": {"thresholds": th, "top_n": opts.top_n},
        "hosts": hosts,
        "forecasts": forecasts,
        "databases": db_out,
        "findings": rows,
        "bottlenecks": [r for r in rows if r["kind"] not in ("pgss_missing", "ps_off",
                                                              "restart", "db_unreadable")],
        "recommendations": [{"id": r["id"], "severity": r["severity"], "scope": r["scope"],
                             "text": r["recommendation"]} for r in rows if r["recommendation"]],
        "restart_advice": advice,
        "data_sources": sources,
        "gaps": gaps,
        "summary": {"hosts": len(hosts), "databases": len(dbs), "findings": len(rows),
                    **counts, "restart_recommended": sum(1 for a in advice if a["restart"])},
        "ops_revision": records.ops_revision(),
    }


def _echo(opts: Options, record: dict[str, Any]) -> None:
    L = records.labels(opts.lang)
    P = L[KIND]
    opts.echo(f"{P['title']} {record['period']['label']}")
    for f in record["findings"]:
        opts.echo(f"[{L['statuses'][f['severity']]}] {f['scope']} {f['subject']}: "
                  f"{f['evidence_text']}")
        if f["recommendation"]:
            opts.echo(f"    → {f['recommendation']}")
    for a in record["restart_advice"]:
        if a["restart"]:
            opts.echo(f"[{P['restart_word']}] {a['subject']}: {a['reasoning']}")
    for g in record["gaps"]:
        opts.echo(f"  {P['gap_word']}: {g}")
    opts.echo(f"{P['overall']}: {L['statuses'][record['status']]} (exit {record['exit_code']})")

