"""A run record as a flat list of checks (a pure leaf): what JUnit, Prometheus and
notifications all read.

Owns the mapping of the record shapes to ``Case`` rows and of every capability's status
words to four levels: ``pass``, ``warn``, ``fail``, ``skip``. Shapes understood:

- inspection-like: ``hosts[].results[]`` (inspection, and any record that follows it,
  such as upgrade or security.audit): one case per host × result;
- drill: ``steps[]``, ``verification`` (tables, canary, checksums, smoke), ``rto``, ``rpo``;
- generic: ``items[]`` of mappings (``subject``/``host``, ``check``, ``target``,
  ``status``, ``value``, ``unit``, ``explanation``), e.g. SLA reminders.

Imports nothing of the project.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
LEVEL_RANK = {PASS: 0, SKIP: 0, WARN: 1, FAIL: 2}
_LEVELS = {
    PASS: ("normal", "ok", "pass", "passed", "success", "succeeded", "done", "applied"),
    WARN: ("warning", "warn", "degraded"),
    FAIL: ("critical", "failed", "fail", "error", "bad", "rolled_back", "breached"),
    SKIP: ("unknown", "skipped", "skip", "n/a", "none", ""),
}
_BY_WORD = {w: level for level, words in _LEVELS.items() for w in words}
# Checks whose target describes the measurement (it changes every run) rather than
# naming what was measured: as a JUnit name or a Prometheus label it would start a new
# test / time series on every run.
VOLATILE_TARGETS = frozenset({"load_per_core"})


def level(status: Any) -> str:
    """The level of a status word; an unrecognised word is treated as a warning."""
    return _BY_WORD.get(str(status if status is not None else "").strip().lower(), WARN)


@dataclass(frozen=True)
class Case:
    """One check of one subject (a host, or the database a drill restored)."""

    subject: str
    check: str
    target: str
    status: str
    value: Any = None
    unit: str = ""
    message: str = ""

    @property
    def level(self) -> str:
        return level(self.status)

    @property
    def key_target(self) -> str:
        """The target as part of the check's identity ('' when it only describes)."""
        return "" if self.check in VOLATILE_TARGETS else self.target


def _s(v: Any) -> str:
    return "" if v is None else str(v)


def cases(record: dict[str, Any]) -> list[Case]:
    """Every check in `record`, in the record's order."""
    if isinstance(record.get("hosts"), list) and any(
            isinstance(h, dict) and isinstance(h.get("results"), list)
            for h in record["hosts"]):
        return _inspection_like(record)
    if isinstance(record.get("steps"), list):
        return _drill(record)
    out = []
    for item in record.get("items") or []:
        if isinstance(item, dict):
            out.append(Case(_s(item.get("subject") or item.get("host")),
                            _s(item.get("check") or item.get("name")), _s(item.get("target")),
                            _s(item.get("status")), item.get("value"), _s(item.get("unit")),
                            _s(item.get("explanation") or item.get("detail"))))
    return out


def _inspection_like(record: dict[str, Any]) -> list[Case]:
    out = []
    for h in record["hosts"]:
        if not isinstance(h, dict):
            continue
        for r in h.get("results") or []:
            out.append(Case(_s(h.get("host")), _s(r.get("check")), _s(r.get("target")),
                            _s(r.get("status")), r.get("value"), _s(r.get("unit")),
                            _s(r.get("explanation"))))
    return out


def drill_subject(record: dict[str, Any]) -> str:
    b = record.get("backup") or {}
    return _s(b.get("name") or b.get("file") or "drill")


def _drill(record: dict[str, Any]) -> list[Case]:
    subject = drill_subject(record)
    out = [Case(subject, "step", _s(s.get("step")), _s(s.get("status")),
                s.get("duration_s"), "s", _s(s.get("detail")))
           for s in record["steps"] if isinstance(s, dict)]
    v = record.get("verification") or {}
    for t in v.get("tables") or []:
        out.append(Case(subject, "table_rows", _s(t.get("table")), _s(t.get("status")),
                        t.get("actual"), "", f"expected {_s(t.get('expected'))}"))
    if isinstance(v.get("canary"), dict):
        c = v["canary"]
        out.append(Case(subject, "canary", _s(c.get("table")), _s(c.get("status")),
                        1 if c.get("present") else 0))
    for c in v.get("checksums") or []:
        out.append(Case(subject, "checksum", _s(c.get("table")), _s(c.get("status")),
                        message=_s(c.get("reason"))))
    if isinstance(v.get("smoke"), dict):
        s = v["smoke"]
        out.append(Case(subject, "smoke_query", "", _s(s.get("status")), s.get("rows"), "",
                        f"min {_s(s.get('min_rows'))}"))
    for key in ("rto", "rpo"):
        x = record.get(key)
        if isinstance(x, dict):
            out.append(Case(subject, f"{key}_seconds", "", _s(x.get("status")),
                            x.get("seconds"), "s", f"target {_s(x.get('target_seconds'))}"))
    return out


def run_level(record: dict[str, Any]) -> str:
    """The level of the whole run: its status, else the drill outcome, else the worst case."""
    for key in ("status", "outcome"):
        if record.get(key):
            return level(record[key])
    found = [c.level for c in cases(record)]
    return max(found, key=LEVEL_RANK.__getitem__) if found else SKIP
