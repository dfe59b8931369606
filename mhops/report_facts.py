"""What the weekly, monthly and quarterly reports say, computed from run records (a pure leaf).

Owns the reading of every record kind's fields into report facts: inspection runs and
their outcome, abnormal events as episodes with their resolution, log error counts by
pattern and day, incidents with SLA compliance (from ``fault`` records and the open
incidents an incident store lists), changes (upgrades, patches, rollbacks, index
maintenance, drills, runbooks), and the evidence the contract requires but the period
lacks. Records are written by other capabilities, some of them newer than this code:
every field is read defensively and a missing one never stops a report.

Standard library only; imports nothing of the project. Times are aware datetimes.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

ABNORMAL = ("warning", "critical")
_RANK = {"normal": 0, "unknown": 0, "warning": 1, "critical": 2}

# The order in which kinds appear in the bundle and its index; unknown kinds follow.
KIND_ORDER = ("inspection", "security_audit", "fault", "fault_analysis", "fault_summary",
              "upgrade", "rollback", "patch", "drill", "perf", "db_maintain", "backup_run",
              "backup_check", "runbook")
CHANGE_KINDS = ("upgrade", "patch", "rollback", "db_maintain", "drill", "runbook")
# Severity / priority words that make an incident major: it then needs an analysis report.
MAJOR_WORDS = frozenset(("1", "p1", "p0", "0", "s1", "sev1", "critical", "major", "high",
                         "urgent", "patient-safety", "严重", "重大", "紧急", "一级", "特大"))


def parse_time(text: Any) -> datetime | None:
    """An ISO-8601 time as records write it ('Z' or an offset); naive = UTC; else None."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def started(rec: dict[str, Any]) -> datetime | None:
    t = rec.get("time")
    return parse_time(t.get("started_utc")) if isinstance(t, dict) else None


def worst(statuses) -> str:
    return max(statuses, key=lambda s: _RANK.get(s, 0), default="normal")


def _list(x: Any) -> list:
    return x if isinstance(x, list) else []


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def by_time(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Stable order: start time, then run id (two runs in the same second stay ordered)."""
    return sorted(recs, key=lambda r: (iso(started(r)) or "", str(r.get("run_id") or "")))


def host_names(x: Any) -> list[str]:
    """Hosts of a record field that may be names, {host: ...} dicts or a mapping."""
    if isinstance(x, dict):
        return sorted(str(k) for k in x)
    out = []
    for h in _list(x):
        if isinstance(h, dict):
            name = h.get("host") or h.get("name")
            if name:
                out.append(str(name))
        elif h is not None:
            out.append(str(h))
    return out


# ------------------------------------------------------------------ inspections

def inspection_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One inspection (or security audit) run as a line of a report."""
    hosts = _list(rec.get("hosts"))
    summary = _dict(rec.get("summary"))
    counts = _dict(summary.get("counts"))
    events = _list(rec.get("events"))
    down = sum(1 for h in hosts if not _dict(h).get("reachable", True))
    return {"run_id": rec.get("run_id"), "kind": rec.get("kind"),
            "time": iso(started(rec)), "status": status_of(rec),
            "exit_code": rec.get("exit_code"), "operator": rec.get("operator"),
            "headline": rec.get("headline"),
            "hosts": summary.get("hosts_total", len(hosts)),
            "unreachable": summary.get("hosts_unreachable", down),
            "warning": counts.get("warning", sum(1 for e in events
                                                 if _dict(e).get("status") == "warning")),
            "critical": counts.get("critical", sum(1 for e in events
                                                   if _dict(e).get("status") == "critical")),
            "events": len(events)}


def inspection_outcome(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_status: dict[str, int] = defaultdict(int)
    for r in rows:
        by_status[r["status"]] += 1
    return {"runs": len(rows), "status": worst([r["status"] for r in rows]) if rows else None,
            "by_status": {k: by_status[k] for k in ("normal", "warning", "critical", "unknown")
                          if by_status.get(k)},
            "events": sum(r["events"] for r in rows)}


def episodes(inspections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Abnormal results as episodes: first and last seen, how often, how it was resolved.

    An episode of (host, check, target) ends at the first later inspection that
    reached the host and did not find it abnormal: that run is when it was resolved.
    The resolution text is what the operator entered on the runs that saw it, else the
    suggested resolution the inspection gave.
    """
    open_: dict[tuple, dict[str, Any]] = {}
    done: list[dict[str, Any]] = []
    for rec in by_time(inspections):
        when = iso(started(rec))
        seen = set()
        for e in _list(rec.get("events")):
            e = _dict(e)
            if e.get("status") not in ABNORMAL:
                continue
            key = (str(e.get("host")), str(e.get("check")), str(e.get("target") or ""))
            seen.add(key)
            ep = open_.get(key)
            if ep is None:
                ep = open_[key] = {"host": key[0], "check": key[1], "target": key[2],
                                   "first": when, "first_run": rec.get("run_id"),
                                   "occurrences": 0, "status": "normal", "entered": [],
                                   "resolved": None, "resolved_run": None}
            ep.update(last=when, last_run=rec.get("run_id"),
                      explanation=e.get("explanation") or "",
                      suggested=e.get("resolution") or "")
            ep["occurrences"] += 1
            ep["status"] = worst([ep["status"], e["status"]])
            entered = rec.get("resolution")
            if entered and entered not in ep["entered"]:
                ep["entered"].append(str(entered))
        reached = {str(_dict(h).get("host")) for h in _list(rec.get("hosts"))
                   if _dict(h).get("reachable", True)}
        for key in sorted(open_):
            if key not in seen and key[0] in reached:
                ep = open_.pop(key)
                ep.update(resolved=when, resolved_run=rec.get("run_id"))
                done.append(ep)
    done.extend(open_.values())
    return sorted(done, key=lambda e: (e["first"] or "", e["host"], e["check"], e["target"]))


_PATTERN = re.compile(r"\[([^\]]+)\]\s*$")


def log_counts(inspections: list[dict[str, Any]], day_of) -> dict[str, Any]:
    """Log error matches per pattern and day (``day_of(datetime) -> 'YYYY-MM-DD'``).

    Each inspection counts the lines since the previous one, so the sum over runs is
    the number of matching lines; the pattern is the ``[name]`` ending the target.
    """
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    per_host: dict[tuple[str, str], int] = defaultdict(int)
    for rec in inspections:
        t0 = started(rec)
        for h in _list(rec.get("hosts")):
            h = _dict(h)
            when = parse_time(h.get("collected_at")) or t0
            if when is None:
                continue
            for r in _list(h.get("results")):
                r = _dict(r)
                v = r.get("value")
                if r.get("check") != "log_matches" or isinstance(v, bool) \
                        or not isinstance(v, (int, float)):
                    continue
                m = _PATTERN.search(str(r.get("target") or ""))
                name = m.group(1) if m else str(r.get("target") or "?")
                per[name][day_of(when)] += int(v)
                per_host[(name, str(h.get("host")))] += int(v)
    days = sorted({d for p in per.values() for d in p})
    patterns = [{"pattern": name, "total": sum(per[name].values()),
                 "by_day": {d: per[name].get(d, 0) for d in days},
                 "top_hosts": [{"host": host, "count": n} for (p, host), n in sorted(
                     per_host.items(), key=lambda kv: (-kv[1], kv[0][1])) if p == name and n][:5]}
                for name in sorted(per)]
    return {"days": days, "patterns": patterns}


# ------------------------------------------------------------------ incidents

def incident_row(inc: dict[str, Any], source: str | None) -> dict[str, Any]:
    inc = _dict(inc)
    sla = _dict(inc.get("sla"))
    rep, res = parse_time(inc.get("reported_utc")), parse_time(inc.get("resolved_utc"))
    # The incident store writes sla.state (met/breached/running) and breached_by_min;
    # sla.met and breached_by_s are read too.
    met = sla.get("met") if isinstance(sla.get("met"), bool) else \
        {"met": True, "breached": False}.get(str(sla.get("state")))
    late = sla.get("breached_by_s")
    if late is None and isinstance(sla.get("breached_by_min"), (int, float)):
        late = round(60 * sla["breached_by_min"])
    return {"id": str(inc.get("id") if inc.get("id") is not None else ""),
            "title": str(inc.get("title") or ""),
            "scope": inc.get("scope"), "type": inc.get("type"),
            "severity": inc.get("severity"), "priority": inc.get("priority"),
            "reported": iso(rep), "acknowledged": iso(parse_time(inc.get("acknowledged_utc"))),
            "resolved": iso(res),
            "duration_s": round((res - rep).total_seconds()) if rep and res else None,
            "sla_met": met, "breached_by_s": late, "source": source,
            "major": is_major(inc)}


def is_major(inc: dict[str, Any]) -> bool:
    return any(str(inc.get(k) or "").strip().lower() in MAJOR_WORDS
               for k in ("severity", "priority"))


def incidents(fault_records: list[dict[str, Any]],
              store: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per incident id: the newest fault record's view, then the store's open ones."""
    rows: dict[str, dict[str, Any]] = {}
    for rec in by_time(fault_records):
        inc = rec.get("incident")
        if isinstance(inc, dict):
            row = incident_row(inc, rec.get("run_id"))
            rows[row["id"] or str(rec.get("run_id"))] = row
    for inc in store or []:
        row = incident_row(inc, None)
        if row["id"] and row["id"] not in rows:
            rows[row["id"]] = row
    return sorted(rows.values(), key=lambda r: (r["reported"] or "", r["id"]))


def incident_summary(rows: list[dict[str, Any]], start: datetime,
                     end: datetime) -> dict[str, Any]:
    """Opened and resolved in [start, end), SLA compliance of the resolved, still open."""
    def inside(t):
        d = parse_time(t)
        return d is not None and start <= d < end

    opened = [r for r in rows if inside(r["reported"])]
    resolved = [r for r in rows if inside(r["resolved"])]
    judged = [r for r in resolved if r["sla_met"] is not None]
    met = sum(1 for r in judged if r["sla_met"])
    still_open = [r for r in rows if not r["resolved"]
                  and (parse_time(r["reported"]) is None or parse_time(r["reported"]) < end)]
    durations = [r["duration_s"] for r in resolved if r["duration_s"] is not None]
    counts: dict[str, int] = defaultdict(int)
    for r in opened:
        counts[str(r["severity"] or "-")] += 1
    return {"opened": opened, "resolved": resolved, "open": still_open,
            "sla_judged": len(judged), "sla_met": met,
            "sla_percent": round(100.0 * met / len(judged), 1) if judged else None,
            "breached": [r for r in judged if not r["sla_met"]],
            "mttr_s": round(sum(durations) / len(durations)) if durations else None,
            "by_severity": dict(sorted(counts.items()))}


# ------------------------------------------------------------------ changes

def change_row(rec: dict[str, Any]) -> dict[str, Any]:
    """An upgrade, patch, rollback, maintenance, drill or runbook run as a report line."""
    kind = str(rec.get("kind"))
    hosts = host_names(rec.get("hosts"))
    if not hosts:
        hosts = host_names(_dict(rec.get("scope")).get("hosts"))
    detail = ""
    if kind in ("upgrade", "rollback"):
        frm, to = rec.get("version_from"), rec.get("version_to")
        detail = " ".join(str(x) for x in (rec.get("component"), frm and f"{frm} →", to) if x)
    elif kind == "patch":
        pkgs = sorted({str(p.get("name") if isinstance(p, dict) else p)
                       for h in _list(rec.get("hosts")) for p in _list(_dict(h).get("packages"))})
        detail = ", ".join(pkgs[:8]) + (f" (+{len(pkgs) - 8})" if len(pkgs) > 8 else "")
    elif kind == "drill":
        b = _dict(rec.get("backup"))
        detail = " ".join(str(x) for x in (b.get("engine"), b.get("name")) if x)
    elif kind == "db_maintain":
        detail = str(rec.get("mode") or "")
        if not hosts:
            hosts = host_names(rec.get("databases"))
    elif kind == "runbook":
        detail = str(rec.get("runbook") or rec.get("name") or "")
    outcome = rec.get("outcome") or rec.get("status") or "unknown"
    return {"kind": kind, "run_id": rec.get("run_id"), "time": iso(started(rec)),
            "status": status_of(rec), "outcome": str(outcome),
            "hosts": hosts, "detail": detail, "headline": rec.get("headline"),
            "operator": rec.get("operator")}


def _status_of(outcome: Any) -> str:
    o = str(outcome).lower()
    if o in ("ok", "passed", "success", "succeeded", "done", "applied", "normal"):
        return "normal"
    if o in ("failed", "failure", "error", "critical", "interrupted", "rolled_back"):
        return "critical"
    return "warning" if o in ("warning", "partial", "degraded") else "unknown"


def status_of(rec: dict[str, Any]) -> str:
    """A record's status; records without one (drills) by their outcome, then exit code."""
    s = rec.get("status")
    if s in _RANK:
        return str(s)
    if rec.get("outcome") is not None:
        got = _status_of(rec["outcome"])
        if got != "unknown":
            return got
    return {0: "normal", 1: "warning", 2: "critical"}.get(rec.get("exit_code"), "unknown")


def is_applied(rec: dict[str, Any]) -> bool:
    """Plans and dry runs changed nothing: they are not changes."""
    return not (rec.get("check_mode") or rec.get("mode") == "plan" or rec.get("check"))


# ------------------------------------------------------------------ evidence

def analysis_ids(analyses: list[dict[str, Any]]) -> set[str]:
    """Incident ids a fault analysis report covers (its incident, incident_id or incidents)."""
    out = set()
    for rec in analyses:
        for key in ("incident", "incidents", "incident_id", "incident_ids"):
            v = rec.get(key)
            for item in v if isinstance(v, list) else [v]:
                if isinstance(item, dict) and item.get("id"):
                    out.add(str(item["id"]))
                elif isinstance(item, (str, int)) and str(item):
                    out.add(str(item))
    return out


def missing_evidence(kinds_present: dict[str, list[dict[str, Any]]], months: list[str],
                     month_of, *, quarter: bool, incident_rows: list[dict[str, Any]],
                     faq_files: list[str] | None) -> list[dict[str, Any]]:
    """What the contract requires for the period and the records do not show.

    ``months`` are the period's 'YYYY-MM' labels; ``month_of(datetime)`` gives a run's.
    Each entry is ``{code, params}``; the report words it in its language.
    """
    out = []
    seen_months = {month_of(started(r)) for r in kinds_present.get("inspection", [])
                   if started(r) is not None}
    for m in months:
        if m not in seen_months:
            out.append({"code": "no_inspection_month", "params": {"month": m}})
    if quarter:
        if not kinds_present.get("perf"):
            out.append({"code": "no_perf", "params": {}})
        if not kinds_present.get("drill"):
            out.append({"code": "no_drill", "params": {}})
        if not faq_files:
            out.append({"code": "no_faq", "params": {}})
    covered = analysis_ids(kinds_present.get("fault_analysis", []))
    for r in incident_rows:
        if r["major"] and r["id"] and r["id"] not in covered:
            out.append({"code": "no_fault_analysis", "params": {"id": r["id"]}})
    return out
