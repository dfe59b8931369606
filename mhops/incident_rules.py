"""Incident classification, priority and SLA deadlines (a pure leaf).

Owns the classification vocabulary (scope, type, severity), the validation of the
``incident:`` rule table in invoke.yaml, the mapping classification -> priority ->
contract deadlines, the SLA verdict of an incident at a given moment, and the
parsing of months and times given on the command line. Imports nothing of the
project: errors are :class:`RuleError` (a ValueError) that callers turn into exit 3.

The contract names three response classes and one on-site rule:

* ``simple``  -- simple faults are handled at once (``classes.simple`` minutes of
  tolerance, 5 by default, so "at once" can be measured);
* ``routine`` -- routine faults within 30 minutes;
* ``other``   -- every other fault within 1 hour;
* ``onsite_minutes`` -- on-site arrival within 2 hours for emergencies that remote
  work cannot solve (priorities with ``emergency: true``).

The rule table (first match wins, a missing key matches any value) gives the
priority; the priority gives the response class and whether it is an emergency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

SCOPES = ("person", "department", "hospital")
TYPES = ("server", "software")
SEVERITIES = ("patient-safety", "clinical", "operations", "experience")
CLASSES = ("simple", "routine", "other")
AXES = {"scope": SCOPES, "type": TYPES, "severity": SEVERITIES}

DEFAULT_CONFIG: dict[str, Any] = {
    "classes": {"simple": 5, "routine": 30, "other": 60},
    "onsite_minutes": 120,
    "priorities": {
        "P1": {"class": "simple", "emergency": True},
        "P2": {"class": "routine", "emergency": True},
        "P3": {"class": "routine", "emergency": False},
        "P4": {"class": "other", "emergency": False},
    },
    "rules": [
        {"severity": "patient-safety", "priority": "P1"},
        {"scope": "hospital", "severity": "clinical", "priority": "P1"},
        {"severity": "clinical", "priority": "P2"},
        {"scope": "hospital", "priority": "P2"},
        {"scope": "department", "priority": "P3"},
        {"severity": "operations", "priority": "P3"},
        {"priority": "P4"},
    ],
}


class RuleError(ValueError):
    """Bad classification input or rule table; the message lists the valid values."""


@dataclass(frozen=True)
class Rules:
    classes: dict[str, float]
    onsite_minutes: float
    priorities: dict[str, dict[str, Any]]
    rules: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Classification:
    scope: str
    type: str
    severity: str
    priority: str
    fault_class: str
    respond_minutes: float
    emergency: bool
    onsite_minutes: float | None
    rule: int  # index of the matching rule (0-based), for the record's "why"


@dataclass(frozen=True)
class Deadlines:
    respond_by: datetime
    onsite_by: datetime | None


def _minutes(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RuleError(f"{where}: must be a number of minutes, got {value!r}")
    if value < 0:
        raise RuleError(f"{where}: must not be negative, got {value!r}")
    return float(value)


def validate(raw: Any, where: str = "incident") -> Rules:
    """The ``incident:`` settings merged over the defaults, or RuleError naming the key."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise RuleError(f"{where}: must be a mapping, got {type(raw).__name__}")
    known = {"classes", "onsite_minutes", "priorities", "rules"}
    cfg = {k: v for k, v in raw.items() if k in known and v not in (None, {}, [])}
    merged = {**DEFAULT_CONFIG, **cfg}
    classes_raw = merged["classes"]
    if not isinstance(classes_raw, dict):
        raise RuleError(f"{where}.classes: must be a mapping of class -> minutes")
    classes = dict(DEFAULT_CONFIG["classes"])
    for name, minutes in classes_raw.items():
        if name not in CLASSES:
            raise RuleError(f"{where}.classes: unknown class {name!r}; valid: "
                            + ", ".join(CLASSES))
        classes[name] = _minutes(minutes, f"{where}.classes.{name}")
    onsite = _minutes(merged["onsite_minutes"], f"{where}.onsite_minutes")
    prios_raw = merged["priorities"]
    if not isinstance(prios_raw, dict) or not prios_raw:
        raise RuleError(f"{where}.priorities: must be a non-empty mapping of "
                        "priority -> {class, emergency}")
    priorities: dict[str, dict[str, Any]] = {}
    for name, spec in prios_raw.items():
        at = f"{where}.priorities.{name}"
        if not isinstance(spec, dict):
            raise RuleError(f"{at}: must be a mapping with class and emergency")
        extra = set(spec) - {"class", "emergency"}
        if extra:
            raise RuleError(f"{at}: unknown key {sorted(extra)[0]!r}; valid: class, emergency")
        if spec.get("class") not in CLASSES:
            raise RuleError(f"{at}.class: {spec.get('class')!r} is not a class; valid: "
                            + ", ".join(CLASSES))
        if not isinstance(spec.get("emergency", False), bool):
            raise RuleError(f"{at}.emergency: must be true or false")
        priorities[str(name)] = {"class": spec["class"],
                                 "emergency": bool(spec.get("emergency", False))}
    rules_raw = merged["rules"]
    if not isinstance(rules_raw, list) or not rules_raw:
        raise RuleError(f"{where}.rules: must be a non-empty list of "
                        "{scope?, type?, severity?, priority}")
    rules = []
    for i, rule in enumerate(rules_raw):
        at = f"{where}.rules[{i}]"
        if not isinstance(rule, dict):
            raise RuleError(f"{at}: must be a mapping")
        extra = set(rule) - {*AXES, "priority"}
        if extra:
            raise RuleError(f"{at}: unknown key {sorted(extra)[0]!r}; valid: "
                            "scope, type, severity, priority")
        if rule.get("priority") not in priorities:
            raise RuleError(f"{at}.priority: {rule.get('priority')!r} is not a priority; "
                            "valid: " + ", ".join(priorities))
        clean: dict[str, Any] = {"priority": rule["priority"]}
        for axis, valid in AXES.items():
            if axis not in rule:
                continue
            values = rule[axis] if isinstance(rule[axis], list) else [rule[axis]]
            for v in values:
                if v not in valid:
                    raise RuleError(f"{at}.{axis}: {v!r} is not a {axis}; valid: "
                                    + ", ".join(valid))
            clean[axis] = tuple(values)
        rules.append(clean)
    out = Rules(classes, onsite, priorities, tuple(rules))
    # Every classification must land somewhere: a gap would make `open` fail at 3 a.m.
    for s in SCOPES:
        for t in TYPES:
            for sev in SEVERITIES:
                if _match(out, s, t, sev) is None:
                    raise RuleError(f"{where}.rules: no rule matches scope={s} type={t} "
                                    f"severity={sev}; end the table with a catch-all "
                                    "{priority: ...}")
    return out


def _match(rules: Rules, scope: str, type_: str, severity: str) -> int | None:
    given = {"scope": scope, "type": type_, "severity": severity}
    for i, rule in enumerate(rules.rules):
        if all(given[axis] in rule[axis] for axis in AXES if axis in rule):
            return i
    return None


def check_value(axis: str, value: Any) -> str:
    """*value* when it is in the table for *axis*, else RuleError listing the valid ones."""
    valid = AXES[axis]
    if value not in valid:
        raise RuleError(f"--{axis}: {value!r} is not a valid {axis}; valid: "
                        + ", ".join(valid))
    return value


def classify(rules: Rules, scope: str, type_: str, severity: str) -> Classification:
    check_value("scope", scope)
    check_value("type", type_)
    check_value("severity", severity)
    i = _match(rules, scope, type_, severity)
    if i is None:  # validate() refuses such tables; a hand-built Rules may still have one
        raise RuleError(f"no rule matches scope={scope} type={type_} severity={severity}")
    priority = rules.rules[i]["priority"]
    spec = rules.priorities[priority]
    return Classification(scope, type_, severity, priority, spec["class"],
                          rules.classes[spec["class"]], spec["emergency"],
                          rules.onsite_minutes if spec["emergency"] else None, i)


def deadlines(c: Classification, reported: datetime) -> Deadlines:
    return Deadlines(
        reported + timedelta(minutes=c.respond_minutes),
        reported + timedelta(minutes=c.onsite_minutes) if c.onsite_minutes is not None
        else None)


def sla(respond_by: datetime, onsite_by: datetime | None, *, acknowledged: datetime | None,
        resolved: datetime | None, onsite: datetime | None, now: datetime) -> dict[str, Any]:
    """The SLA verdict: response in time, and (emergencies) on site or solved remotely in time.

    The response is the acknowledgement, or the resolution when nobody acknowledged.
    An emergency solved remotely before the on-site deadline needs nobody on site.
    Open clocks are judged at *now*: a deadline already passed is a breach. ``state``
    is ``met``, ``breached`` or ``running`` (nothing decided yet).
    """
    response = acknowledged or resolved
    parts: dict[str, Any] = {}
    late: list[float] = []
    pending = False
    if response is not None:
        over = (response - respond_by).total_seconds()
        parts["response"] = "met" if over <= 0 else "breached"
        if over > 0:
            late.append(over)
    elif now > respond_by:
        parts["response"] = "breached"
        late.append((now - respond_by).total_seconds())
    else:
        parts["response"] = "running"
        pending = True
    if onsite_by is not None:
        done = min((t for t in (resolved, onsite) if t is not None), default=None)
        if done is not None:
            over = (done - onsite_by).total_seconds()
            parts["onsite"] = "met" if over <= 0 else "breached"
            if over > 0:
                late.append(over)
        elif now > onsite_by:
            parts["onsite"] = "breached"
            late.append((now - onsite_by).total_seconds())
        else:
            parts["onsite"] = "running"
            pending = True
    breached_s = max(late, default=0.0)
    state = "breached" if late else ("running" if pending else "met")
    return {"state": state, "met": state == "met", "breached_by_s": round(breached_s),
            "breached_by_min": round(breached_s / 60, 1), **parts}


def next_deadline(respond_by: datetime, onsite_by: datetime | None, *,
                  acknowledged: datetime | None, resolved: datetime | None,
                  onsite: datetime | None) -> tuple[str, datetime] | None:
    """The earliest clock still running on an open incident: ('response'|'onsite', when)."""
    if resolved is not None:
        return None
    if acknowledged is None:
        return "response", respond_by
    if onsite_by is not None and onsite is None:
        return "onsite", onsite_by
    return None


_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")  # ASCII only: \d also takes other scripts


def parse_month(text: Any) -> tuple[date, date]:
    """'YYYY-MM' -> (first day, first day of next month); RuleError otherwise."""
    m = _MONTH.fullmatch(str(text or "").strip())
    try:
        if not m:
            raise ValueError
        first = date(int(m.group(1)), int(m.group(2)), 1)
        nxt = date(first.year + (first.month == 12), first.month % 12 + 1, 1)
    except ValueError:  # month 13, year 0, or a month after 9999-11 has no end
        raise RuleError(f"--month: {text!r} is not a month; expected YYYY-MM, "
                        "e.g. 2026-11") from None
    return first, nxt


def parse_when(text: Any, what: str = "time") -> datetime:
    """An ISO date or date-time ('Z', offset, or naive = UTC); RuleError otherwise."""
    if isinstance(text, datetime):
        return text if text.tzinfo else text.replace(tzinfo=UTC)
    if isinstance(text, date):
        return datetime(text.year, text.month, text.day, tzinfo=UTC)
    try:
        dt = datetime.fromisoformat(str(text).strip().replace("Z", "+00:00"))
    except ValueError:
        raise RuleError(f"{what}: {text!r} is not a date; expected YYYY-MM-DD or "
                        "YYYY-MM-DDTHH:MM[:SS][Z|+08:00]") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def table(rules: Rules) -> list[dict[str, Any]]:
    """The effective table, every classification spelled out (for docs and `incident.rules`)."""
    rows = []
    for s in SCOPES:
        for t in TYPES:
            for sev in SEVERITIES:
                c = classify(rules, s, t, sev)
                rows.append({"scope": s, "type": t, "severity": sev, "priority": c.priority,
                             "class": c.fault_class, "respond_minutes": c.respond_minutes,
                             "onsite_minutes": c.onsite_minutes})
    return rows
