"""Incidents with SLA clocks: ``invoke incident.*`` and the calls other modules make.

Owns the incident life cycle (open -> acknowledged -> resolved, notes, on-site
arrival, analysis edits) on top of :mod:`mhops.incident_store`, the priority and
deadlines from :mod:`mhops.incident_rules`, the plain-dict view of an incident with
its SLA verdict, and the console output. The records themselves (故障处理记录,
系统故障分析报告, monthly summary) are built in :mod:`mhops.incident_report`.

For other modules (all take the database path; ``now`` is injectable):
:func:`attach` (a runbook run attaches its steps and outputs to an incident),
:func:`due_soon` (open incidents whose next deadline is near, for notifications),
:func:`list_incidents` (plain dicts for a period, for report bundles).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mhops import incident_report, incident_rules, records
from mhops.errors import MhopsError
from mhops.incident_store import Store, path_for
from mhops.redact import Redactor

ANALYSIS_FIELDS = incident_report.ANALYSIS_FIELDS


@dataclass
class Options:
    records_dir: Path
    db: str = ""                                   # empty: <records_dir>/incidents.sqlite3
    config: dict[str, Any] = field(default_factory=dict)   # invoke.yaml `incident:`
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    now: Callable[[], datetime] = records.utc_now
    echo: Callable[[str], None] = print

    @property
    def db_path(self) -> Path:
        return path_for(self.records_dir, self.db)

    def rules(self) -> incident_rules.Rules:
        try:
            return incident_rules.validate(self.config)
        except incident_rules.RuleError as exc:
            raise MhopsError(f"invoke.yaml {exc}") from None


@dataclass
class Written(records.Outcome):
    """The fault record's outcome plus the analysis report written beside it, if any."""

    analysis: dict[str, Any] | None = None
    analysis_dir: Path | None = None


def _store(path: Path) -> Store:
    return Store(path, Redactor())


def _iso(dt: datetime | None) -> str | None:
    """UTC, whole seconds: the stored strings must compare as times when compared as text."""
    return records.iso(dt.astimezone(UTC).replace(microsecond=0)) if dt else None


def _t(text: str | None) -> datetime | None:
    return records.parse_time(text)


def _rule_error(exc: incident_rules.RuleError) -> MhopsError:
    return MhopsError(str(exc))


# ------------------------------------------------------------------ the view

def view(row: dict[str, Any], now: datetime) -> dict[str, Any]:
    """An incident row as a plain dict with its SLA verdict at *now*."""
    reported, resolved = _t(row["reported_utc"]), _t(row["resolved_utc"])
    verdict = incident_rules.sla(
        _t(row["respond_by_utc"]), _t(row["onsite_by_utc"]),
        acknowledged=_t(row["acknowledged_utc"]), resolved=resolved,
        onsite=_t(row["onsite_utc"]), now=now)
    verdict["respond_by_utc"] = row["respond_by_utc"]
    verdict["onsite_by_utc"] = row["onsite_by_utc"]
    nxt = incident_rules.next_deadline(
        _t(row["respond_by_utc"]), _t(row["onsite_by_utc"]),
        acknowledged=_t(row["acknowledged_utc"]), resolved=resolved, onsite=_t(row["onsite_utc"]))
    verdict["next"] = ({"clock": nxt[0], "due_utc": _iso(nxt[1]),
                        "minutes_left": round((nxt[1] - now).total_seconds() / 60, 1)}
                       if nxt else None)
    return {
        "id": row["id"], "title": row["title"], "scope": row["scope"], "type": row["type"],
        "severity": row["severity"], "priority": row["priority"],
        "fault_class": row["fault_class"], "emergency": bool(row["emergency"]),
        "status": row["status"], "reporter": row["reporter"], "host": row["host"],
        "operator": row["operator"],
        "reported_utc": row["reported_utc"], "acknowledged_utc": row["acknowledged_utc"],
        "onsite_utc": row["onsite_utc"], "resolved_utc": row["resolved_utc"],
        "resolution": row["resolution"], "runbook": row["runbook"],
        "feedback": row["feedback"],
        "time_to_resolve_min": (round((resolved - reported).total_seconds() / 60, 1)
                                if resolved else None),
        "sla": verdict,
    }


# -------------------------------------------------------------- commands

def open_incident(opts: Options, *, title: str, scope: str, type_: str, severity: str,
                  reporter: str = "", host: str = "") -> records.Outcome:
    """Register a fault, derive its priority and deadlines, print them."""
    records.labels(opts.lang)
    rules = opts.rules()
    if not str(title or "").strip():
        raise MhopsError("--title: a short description of the fault is required")
    try:
        c = incident_rules.classify(rules, scope, type_, severity)
    except incident_rules.RuleError as exc:
        raise _rule_error(exc) from None
    now = opts.now()
    due = incident_rules.deadlines(c, now)
    with _store(opts.db_path) as store:
        n = store.create({
            "title": title.strip(), "scope": scope, "type": type_, "severity": severity,
            "priority": c.priority, "fault_class": c.fault_class, "emergency": int(c.emergency),
            "reporter": reporter or "", "host": host or "",
            "operator": records.operator_name(opts.operator), "status": "open",
            "reported_utc": _iso(now), "respond_by_utc": _iso(due.respond_by),
            "onsite_by_utc": _iso(due.onsite_by), "updated_utc": _iso(now)})
        inc = view(store.get(n), now)
    for line in incident_report.opened_lines(inc, c, opts.lang, opts.timezone):
        opts.echo(line)
    return records.Outcome(0, None, inc)


def ack(opts: Options, incident_id: Any, *, text: str = "", onsite: bool = False
        ) -> records.Outcome:
    """Acknowledge (respond to) an incident; the first acknowledgement stops the clock."""
    now, who = opts.now(), records.operator_name(opts.operator)
    with _store(opts.db_path) as store, store.write():
        row = store.get(incident_id)
        _not_resolved(row)
        changes: dict[str, Any] = {}
        if not row["acknowledged_utc"]:
            changes.update(acknowledged_utc=_iso(now), status="acknowledged")
        if onsite and not row["onsite_utc"]:
            changes["onsite_utc"] = _iso(now)
        if changes:
            store.update(row["id"], changes, _iso(now))
        event = "onsite" if onsite else "ack"
        store.add_note(row["id"], _iso(now), text or "", author=who, source=event)
        inc = view(store.get(row["id"]), now)
    L = records.labels(opts.lang)["incident"]
    opts.echo(L["acked"].format(id=inc["id"], at=inc["acknowledged_utc"],
                                sla=L["sla_states"][inc["sla"].get("response", "running")]))
    return records.Outcome(0, None, inc)


def note(opts: Options, incident_id: Any, text: str, *, onsite: bool = False
         ) -> records.Outcome:
    """Add a handling step; ``onsite`` also records the on-site arrival (first one counts)."""
    if not str(text or "").strip():
        raise MhopsError("incident.note: the note text is empty")
    now, who = opts.now(), records.operator_name(opts.operator)
    with _store(opts.db_path) as store, store.write():
        row = store.get(incident_id)
        _not_resolved(row)
        if onsite and not row["onsite_utc"]:
            store.update(row["id"], {"onsite_utc": _iso(now)}, _iso(now))
        note_id = store.add_note(row["id"], _iso(now), text.strip(), author=who,
                                 source="onsite" if onsite else "note")
    opts.echo(records.labels(opts.lang)["incident"]["noted"].format(id=row["id"], note=note_id))
    return records.Outcome(0, None, {"id": row["id"], "note_id": note_id})


def resolve(opts: Options, incident_id: Any, *, resolution: str, runbook: str = "",
            feedback: str = "") -> Written:
    """Close an incident and write its fault handling record (and analysis report)."""
    records.labels(opts.lang)
    if not str(resolution or "").strip():
        raise MhopsError("--resolution: say how the fault was solved")
    now, who = opts.now(), records.operator_name(opts.operator)
    with _store(opts.db_path) as store:
        with store.write():
            row = store.get(incident_id)
            _not_resolved(row)
            store.update(row["id"], {"status": "resolved", "resolved_utc": _iso(now),
                                     "resolution": resolution.strip(),
                                     "runbook": runbook or "", "feedback": feedback or ""},
                         _iso(now))
            store.add_note(row["id"], _iso(now), resolution.strip(), author=who,
                           source="resolve")
        # Resolving succeeded even when the analysis still waits for a person: only a
        # breached SLA makes the exit code 1 here; `report` also counts the analysis.
        return _write_records(opts, store, row["id"], now, count_analysis=False)


def edit(opts: Options, incident_id: Any, field_name: str, text: str) -> records.Outcome:
    """Fill in one field of the fault analysis report; `report` re-renders it."""
    if field_name not in ANALYSIS_FIELDS:
        raise MhopsError(f"--field: {field_name!r} is not an analysis field; valid: "
                         + ", ".join(ANALYSIS_FIELDS))
    if not str(text or "").strip():
        raise MhopsError("--text: the field text is empty")
    now, who = opts.now(), records.operator_name(opts.operator)
    with _store(opts.db_path) as store, store.write():
        row = store.get(incident_id)
        if row["scope"] not in incident_report.ANALYSED_SCOPES:
            raise MhopsError(f"incident {row['id']} has scope {row['scope']!r}: analysis "
                             "reports are written for scope "
                             + " and ".join(incident_report.ANALYSED_SCOPES))
        store.set_field(row["id"], field_name, text.strip(), editor=who, at=_iso(now))
    opts.echo(records.labels(opts.lang)["incident"]["edited"].format(id=row["id"],
                                                                     field=field_name))
    return records.Outcome(0, None, {"id": row["id"], "field": field_name})


def report(opts: Options, incident_id: Any) -> Written:
    """Re-render the incident's records from the database (after edits or notes)."""
    records.labels(opts.lang)
    with _store(opts.db_path) as store:
        row = store.get(incident_id)
        return _write_records(opts, store, row["id"], opts.now())


def _write_records(opts: Options, store: Store, n: int, now: datetime, *,
                   count_analysis: bool = True) -> Written:
    inc = view(store.get(n), now)
    notes, fields = store.notes(n), store.fields(n)
    fault = incident_report.fault_record(inc, notes, opts.lang, opts.timezone,
                                         opts.operator, now)
    fault_dir = records.write_run(opts.records_dir, incident_report.KIND_FAULT, fault,
                                  store.redactor)
    changes = {"record_dir": str(fault_dir)}
    written = [fault_dir]
    analysis = None
    if inc["scope"] in incident_report.ANALYSED_SCOPES:
        analysis = incident_report.analysis_record(inc, notes, fields, opts.lang,
                                                   opts.timezone, opts.operator, now)
        a_dir = records.write_run(opts.records_dir, incident_report.KIND_ANALYSIS, analysis,
                                  store.redactor)
        changes["analysis_dir"] = str(a_dir)
        written.append(a_dir)
    with store.write():
        store.update(n, changes, _iso(now))
    opts.echo(fault["headline"])
    if analysis:
        opts.echo(analysis["headline"])
    for d in written:
        opts.echo(str(d))
    code = max(fault["exit_code"], analysis["exit_code"] if analysis and count_analysis else 0)
    return Written(code, fault_dir, fault, analysis, written[1] if analysis else None)


def list_(opts: Options, *, open_only: bool = False, breached: bool = False,
          since: Any = None, until: Any = None) -> records.Outcome:
    """Print incidents (reported in [since, until) when given) with their clocks."""
    try:
        lo = _iso(incident_rules.parse_when(since, "--since")) if since else None
        hi = _iso(incident_rules.parse_when(until, "--until")) if until else None
    except incident_rules.RuleError as exc:
        raise _rule_error(exc) from None
    now = opts.now()
    with _store(opts.db_path) as store:
        rows = [view(r, now) for r in store.query(lo, hi, open_only=open_only)]
    if breached:
        rows = [r for r in rows if r["sla"]["state"] == "breached"]
    for line in incident_report.list_lines(rows, opts.lang, opts.timezone):
        opts.echo(line)
    return records.Outcome(0, None, {"incidents": rows})


def rules_table(opts: Options) -> records.Outcome:
    """Print the effective rule table: every classification with its priority and deadlines."""
    try:
        rows = incident_rules.table(opts.rules())
    except incident_rules.RuleError as exc:
        raise _rule_error(exc) from None
    L = records.labels(opts.lang)["incident"]
    opts.echo(L["rules_header"])
    for r in rows:
        onsite = "" if r["onsite_minutes"] is None else f"{r['onsite_minutes']:g}"
        opts.echo(f"{r['scope']} | {r['type']} | {r['severity']} | {r['priority']} "
                  f"({L['priorities'].get(r['priority'], '')}) | {L['classes'][r['class']]} | "
                  f"{r['respond_minutes']:g} | {onsite}")
    return records.Outcome(0, None, {"rules": rows})


def summary(opts: Options, month: str) -> records.Outcome:
    """Write the monthly fault summary (fault_summary) for ``YYYY-MM`` in the hospital's zone."""
    records.labels(opts.lang)
    try:
        first, nxt = incident_rules.parse_month(month)
    except incident_rules.RuleError as exc:
        raise _rule_error(exc) from None
    tz = incident_report.zone(opts.timezone)
    start = datetime(first.year, first.month, 1, tzinfo=tz)
    end = datetime(nxt.year, nxt.month, 1, tzinfo=tz)
    now = opts.now()
    with _store(opts.db_path) as store:
        in_month = [view(r, now) for r in store.query(_iso(start), _iso(end))]
        still_open = [view(r, now) for r in store.query(until=_iso(end), open_only=True)]
    rec = incident_report.summary_record(first.strftime("%Y-%m"), start, end, in_month,
                                         still_open, opts.lang, opts.timezone, opts.operator,
                                         now)
    run_dir = records.write_run(opts.records_dir, incident_report.KIND_SUMMARY, rec)
    opts.echo(rec["headline"])
    opts.echo(str(run_dir))
    return records.Outcome(rec["exit_code"], run_dir, rec)


def _not_resolved(row: dict[str, Any]) -> None:
    if row["status"] == "resolved":
        raise MhopsError(f"incident {row['id']} was resolved at {row['resolved_utc']}; "
                         f"`invoke incident.report {row['id']}` re-renders its records")


# --------------------------------------------------------- for other modules

def attach(store_path: str | Path, incident_id: int, source: str,
           entries: Iterable[Any], *, author: str = "",
           now: Callable[[], datetime] = records.utc_now) -> int:
    """Attach a run's steps/outputs to an incident (one note per entry); returns the count.

    *entries* are strings or dicts (e.g. ``{"step": ..., "status": ..., "output": ...}``);
    a dict is kept as data and summarised as text. Everything is redacted. Works on
    resolved incidents too (a runbook's verification may finish after the fix).
    """
    at = _iso(now())
    who = records.operator_name(author)
    count = 0
    with _store(Path(store_path)) as store, store.write():
        row = store.get(incident_id)
        for entry in entries:
            if isinstance(entry, dict):
                text = " · ".join(f"{k}: {v}" for k, v in entry.items() if v not in (None, ""))
                store.add_note(row["id"], at, text, author=who, source=source, data=entry)
            else:
                store.add_note(row["id"], at, str(entry), author=who, source=source)
            count += 1
    return count


def due_soon(store_path: str | Path, within_minutes: float, *,
             now: Callable[[], datetime] = records.utc_now) -> list[dict[str, Any]]:
    """Open incidents whose next running clock falls due within *within_minutes*.

    Clocks already past due are included (``sla.next.minutes_left`` < 0), soonest first,
    so a notifier can escalate them as well. Each item is :func:`view`'s plain dict.
    """
    t = now()
    limit = t + timedelta(minutes=float(within_minutes))
    with _store(Path(store_path)) as store:
        rows = [view(r, t) for r in store.query(open_only=True)]
    due = [r for r in rows if r["sla"]["next"] and _t(r["sla"]["next"]["due_utc"]) <= limit]
    return sorted(due, key=lambda r: r["sla"]["next"]["due_utc"])


def list_incidents(store_path: str | Path, since: Any = None, until: Any = None, *,
                   now: Callable[[], datetime] = records.utc_now) -> list[dict[str, Any]]:
    """Incidents reported in [since, until) as plain dicts (times: ISO strings or datetimes)."""
    try:
        lo = _iso(incident_rules.parse_when(since, "since")) if since else None
        hi = _iso(incident_rules.parse_when(until, "until")) if until else None
    except incident_rules.RuleError as exc:
        raise _rule_error(exc) from None
    t = now()
    with _store(Path(store_path)) as store:
        return [view(r, t) | {"notes": store.notes(r["id"])} for r in store.query(lo, hi)]


def sla_reminders(store_path: str | Path, within_minutes: float, *,
                  now: Callable[[], datetime] = records.utc_now) -> list[dict[str, Any]]:
    """:func:`due_soon` flattened to what a notifier announces (id, due, minutes left)."""
    return [{"id": i["id"], "due": i["sla"]["next"]["due_utc"],
             "minutes_left": i["sla"]["next"]["minutes_left"],
             "clock": i["sla"]["next"]["clock"], "title": i["title"],
             "priority": i["priority"], "host": i["host"]}
            for i in due_soon(store_path, within_minutes, now=now)]


def attach_run(store_path: str | Path, incident_id: int, record: dict[str, Any], *,
               now: Callable[[], datetime] = records.utc_now) -> int:
    """Attach a runbook run (its redacted record) to an incident: one note per step and
    change, then the outcome, each pointing back at the run's record."""
    book = (record.get("runbook") or {}).get("id") or record.get("kind", "run")
    entries: list[Any] = []
    for s in record.get("steps") or []:
        entries.append({"run_id": record.get("run_id"), "phase": s.get("phase"),
                        "step": s.get("step"), "status": s.get("status"),
                        "summary": s.get("summary") or s.get("error") or ""})
        for ch in s.get("changes") or []:
            entries.append({"run_id": record.get("run_id"), "change": ch.get("description"),
                            "command": ch.get("command"), "outcome": ch.get("outcome")})
    entries.append({"run_id": record.get("run_id"), "outcome": record.get("outcome"),
                    "headline": record.get("headline")})
    return attach(store_path, incident_id, f"runbook:{book}", entries,
                  author=str(record.get("operator") or ""), now=now)


def require(store_path: str | Path, incident_id: Any) -> None:
    """Refuse an unknown incident before work is done in its name (MhopsError lists ids)."""
    with _store(Path(store_path)) as store:
        store.get(incident_id)
