"""The incident records: 故障处理记录, 系统故障分析报告 and the monthly fault summary.

Owns the content of the three record kinds (``fault``, ``fault_analysis``,
``fault_summary``) built from plain incident dicts (:func:`mhops.incident.view`),
their notes and the analysis fields a person entered; which analysis fields are
pre-filled and which need a person; the summary arithmetic (counts, mean and worst
time to resolve, SLA compliance); and the console lines of the incident commands.
Writing, rendering and redaction are :func:`mhops.records.write_run`'s.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from statistics import mean
from typing import Any

from mhops import incident_rules, records

KIND_FAULT, KIND_ANALYSIS, KIND_SUMMARY = "fault", "fault_analysis", "fault_summary"
SCHEMA_VERSION = 1
ANALYSED_SCOPES = ("department", "hospital")
# 事件描述, 处理步骤, 原因分析, 故障影响范围, 表现形式及解决方法, 总结
ANALYSIS_FIELDS = ("description", "steps", "cause", "impact", "symptoms", "summary")
# Drafted from the record, but only a person can say why it happened, whom it hit
# and what to learn: these stay marked until someone edits them.
NEEDS_PERSON = ("cause", "impact", "summary")
CATEGORIES = ("scope", "type", "severity", "priority")


def zone(tz: str) -> tzinfo:
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(tz)
    except Exception:  # no tz database: the machine's zone still reads sensibly
        return datetime.now().astimezone().tzinfo


def _local(text: str | None, tz: str) -> str:
    dt = records.parse_time(text)
    return dt.astimezone(zone(tz)).strftime("%Y-%m-%d %H:%M:%S %z") if dt else ""


def _L(lang: str) -> dict[str, Any]:
    return records.labels(lang)["incident"]


def _base(kind: str, lang: str, tz: str, operator: str, now: datetime, code: int,
          headline: str) -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "kind": kind, "run_id": records.run_id(kind, now),
            "lang": lang, "status": "normal" if code == 0 else "warning", "exit_code": code,
            "time": records.time_block(now, now, tz),
            "operator": records.operator_name(operator), "headline": headline}


def _incident_block(inc: dict[str, Any], tz: str) -> dict[str, Any]:
    keys = ("id", "title", "scope", "type", "severity", "priority", "fault_class",
            "emergency", "status", "reporter", "host", "reported_utc", "acknowledged_utc",
            "onsite_utc", "resolved_utc", "time_to_resolve_min", "sla")
    block = {k: inc[k] for k in keys}
    for k in ("reported", "acknowledged", "onsite", "resolved"):
        block[f"{k}_local"] = _local(inc[f"{k}_utc"], tz)
    block["sla"] = {**inc["sla"], "respond_by_local": _local(inc["sla"]["respond_by_utc"], tz),
                    "onsite_by_local": _local(inc["sla"]["onsite_by_utc"], tz)}
    return block


def _steps(notes: list[dict[str, Any]], tz: str) -> list[dict[str, Any]]:
    return [{"at_utc": n["at_utc"], "at_local": _local(n["at_utc"], tz), "author": n["author"],
             "source": n["source"], "text": n["text"], "data": n["data"]} for n in notes]


# ------------------------------------------------------------------ 故障处理记录

def fault_record(inc: dict[str, Any], notes: list[dict[str, Any]], lang: str, tz: str,
                 operator: str, now: datetime) -> dict[str, Any]:
    L = _L(lang)
    breached = inc["sla"]["state"] == "breached"
    fmt = {"id": inc["id"], "priority": inc["priority"], "title": inc["title"],
           "minutes": inc["time_to_resolve_min"], "late": inc["sla"]["breached_by_min"]}
    if inc["status"] != "resolved":
        headline = L["headline_fault_open"].format(**fmt)
    else:
        headline = L["headline_fault_breached" if breached else "headline_fault_met"].format(
            **fmt)
    rec = _base(KIND_FAULT, lang, tz, operator, now, 1 if breached else 0, headline)
    rec.update({
        "incident": _incident_block(inc, tz),
        "classification": {"scope": inc["scope"], "type": inc["type"],
                           "severity": inc["severity"], "priority": inc["priority"],
                           "fault_class": inc["fault_class"], "emergency": inc["emergency"]},
        "steps": _steps(notes, tz),
        "result": {"resolved": inc["status"] == "resolved", "resolution": inc["resolution"],
                   "runbook": inc["runbook"], "time_to_resolve_min": inc["time_to_resolve_min"]},
        "feedback": {"reporter": inc["reporter"], "text": inc["feedback"]},
        "ops_revision": records.ops_revision(),
    })
    return rec


# ------------------------------------------------------------ 系统故障分析报告

def _draft(inc: dict[str, Any], notes: list[dict[str, Any]], lang: str, tz: str
           ) -> dict[str, str]:
    L = _L(lang)
    names = {"scope": L["scopes"][inc["scope"]], "type": L["types"][inc["type"]],
             "severity": L["severities"][inc["severity"]]}
    host = L["host_part"].format(host=inc["host"]) if inc["host"] else ""
    steps = [f"{i}. {_local(n['at_utc'], tz)} [{L['sources'].get(n['source'], n['source'])}] "
             f"{n['text']}".rstrip() for i, n in enumerate(notes, 1)]
    minutes = inc["time_to_resolve_min"]
    sla_text = (L["sla_met_text"] if inc["sla"]["state"] == "met" else
                L["sla_breached_text"].format(late=inc["sla"]["breached_by_min"])
                if inc["sla"]["state"] == "breached" else L["sla_states"]["running"])
    runbook = L["runbook_part"].format(runbook=inc["runbook"]) if inc["runbook"] else ""
    return {
        "description": L["auto_description"].format(
            reported=_local(inc["reported_utc"], tz),
            reporter=inc["reporter"] or L["no_reporter"], title=inc["title"],
            priority=inc["priority"], priority_label=L["priorities"].get(inc["priority"], ""),
            host_part=host, **names),
        "steps": "\n".join(steps) or L["no_steps"],
        "cause": L["auto_cause"].format(runbook_part=runbook),
        "impact": L["auto_impact"].format(
            scope=names["scope"], host_part=host,
            reported=_local(inc["reported_utc"], tz),
            resolved=_local(inc["resolved_utc"], tz) or L["statuses"]["open"],
            minutes="" if minutes is None else minutes),
        "symptoms": L["auto_symptoms"].format(title=inc["title"],
                                              resolution=inc["resolution"] or L["unresolved"],
                                              runbook_part=runbook),
        "summary": L["auto_summary"].format(minutes="" if minutes is None else minutes,
                                            sla=sla_text),
    }


def analysis_record(inc: dict[str, Any], notes: list[dict[str, Any]],
                    edits: dict[str, dict[str, Any]], lang: str, tz: str, operator: str,
                    now: datetime) -> dict[str, Any]:
    L = _L(lang)
    draft = _draft(inc, notes, lang, tz)
    fields = []
    for key in ANALYSIS_FIELDS:
        e = edits.get(key)
        fields.append({
            "key": key, "text": e["text"] if e else draft[key],
            "source": "edited" if e else "draft",
            "needs_input": key in NEEDS_PERSON and not e,
            "editor": e["editor"] if e else "", "edited_utc": e["edited_utc"] if e else ""})
    pending = [f["key"] for f in fields if f["needs_input"]]
    state = (L["analysis_complete"] if not pending else L["analysis_pending"].format(
        n=len(pending), fields=", ".join(L["fields"][k] for k in pending)))
    rec = _base(KIND_ANALYSIS, lang, tz, operator, now, 1 if pending else 0,
                L["headline_analysis"].format(id=inc["id"], title=inc["title"], state=state))
    rec.update({"incident": _incident_block(inc, tz), "fields": fields,
                "complete": not pending, "pending": pending,
                "edit_hint": f"invoke incident.edit {inc['id']} --field FIELD --text TEXT; "
                             f"invoke incident.report {inc['id']}",
                "ops_revision": records.ops_revision()})
    return rec


# ------------------------------------------------------------------ monthly summary

def _stats(items: list[dict[str, Any]]) -> dict[str, Any]:
    times = [i["time_to_resolve_min"] for i in items if i["time_to_resolve_min"] is not None]
    met = sum(1 for i in items if i["sla"]["state"] == "met")
    breached = sum(1 for i in items if i["sla"]["state"] == "breached")
    decided = met + breached
    return {"count": len(items), "resolved": len(times), "open": len(items) - len(times),
            "mean_resolve_min": round(mean(times), 1) if times else None,
            "worst_resolve_min": max(times) if times else None,
            "sla_met": met, "sla_breached": breached, "sla_running": len(items) - decided,
            "compliance_percent": round(100 * met / decided, 1) if decided else None}


def summary_record(month: str, start: datetime, end: datetime, in_month: list[dict[str, Any]],
                   still_open: list[dict[str, Any]], lang: str, tz: str, operator: str,
                   now: datetime) -> dict[str, Any]:
    """Counts, time to resolve and SLA compliance by category for incidents reported in
    the month; open items are all incidents reported before its end and still open."""
    L = _L(lang)
    totals = _stats(in_month)
    by: dict[str, list[dict[str, Any]]] = {}
    for cat in CATEGORIES:
        # Every value of the table is listed, zeros included, so months compare row by row.
        values = list(incident_rules.AXES.get(cat, ())) or sorted({i[cat] for i in in_month})
        by[cat] = [{"value": v, **_stats([i for i in in_month if i[cat] == v])} for v in values]
    open_items = [{"id": i["id"], "title": i["title"], "priority": i["priority"],
                   "status": i["status"], "reported_utc": i["reported_utc"],
                   "reported_local": _local(i["reported_utc"], tz),
                   "age_hours": round((now - records.parse_time(i["reported_utc"]))
                                      .total_seconds() / 3600, 1),
                   "sla": i["sla"]} for i in still_open]
    rate = "—" if totals["compliance_percent"] is None else f"{totals['compliance_percent']}%"
    code = 1 if totals["sla_breached"] or any(o["sla"]["state"] == "breached"
                                              for o in open_items) else 0
    rec = _base(KIND_SUMMARY, lang, tz, operator, now, code, L["headline_summary"].format(
        month=month, count=totals["count"], resolved=totals["resolved"], rate=rate,
        open=len(open_items)))
    rec.update({
        "period": {"month": month, "timezone": tz, "start_local": start.isoformat(),
                   "end_local": end.isoformat(),
                   "start_utc": records.iso(start.astimezone(UTC)),
                   "end_utc": records.iso(end.astimezone(UTC))},
        "totals": totals, "by_category": by,
        "incidents": [{k: i[k] for k in ("id", "title", "scope", "type", "severity",
                                          "priority", "status", "reported_utc",
                                          "resolved_utc", "time_to_resolve_min", "sla")}
                      for i in in_month],
        "open_items": open_items,
        "ops_revision": records.ops_revision(),
    })
    return rec


# ------------------------------------------------------------------ console lines

def opened_lines(inc: dict[str, Any], c: Any, lang: str, tz: str) -> list[str]:
    L = _L(lang)
    lines = [L["opened"].format(id=inc["id"], title=inc["title"]),
             L["opened_class"].format(scope=L["scopes"][inc["scope"]],
                                      type=L["types"][inc["type"]],
                                      severity=L["severities"][inc["severity"]],
                                      priority=inc["priority"],
                                      priority_label=L["priorities"].get(inc["priority"], ""),
                                      klass=L["classes"][inc["fault_class"]]),
             L["respond_by"].format(utc=inc["sla"]["respond_by_utc"],
                                    local=_local(inc["sla"]["respond_by_utc"], tz),
                                    minutes=f"{c.respond_minutes:g}")]
    if inc["sla"]["onsite_by_utc"]:
        lines.append(L["onsite_by"].format(utc=inc["sla"]["onsite_by_utc"],
                                           local=_local(inc["sla"]["onsite_by_utc"], tz),
                                           minutes=f"{c.onsite_minutes:g}"))
    return lines


def list_lines(rows: list[dict[str, Any]], lang: str, tz: str) -> list[str]:
    L = _L(lang)
    if not rows:
        return [L["list_empty"]]
    out = [L["list_header"]]
    for r in rows:
        nxt = r["sla"]["next"]
        if r["sla"]["state"] == "breached":
            clock = L["overdue"].format(m=r["sla"]["breached_by_min"])
        elif nxt:
            clock = L["minutes_left"].format(clock=L["clocks"][nxt["clock"]],
                                             m=nxt["minutes_left"])
        else:
            clock = L["sla_states"][r["sla"]["state"]]
        out.append(f"#{r['id']} | {r['priority']} | {L['statuses'][r['status']]} | "
                   f"{L['scopes'][r['scope']]}/{L['types'][r['type']]}/"
                   f"{L['severities'][r['severity']]} | {_local(r['reported_utc'], tz)} | "
                   f"{clock} | {r['title']}")
    return out
