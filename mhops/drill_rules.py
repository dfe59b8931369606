"""Verdicts of restore drills: pure rules, no I/O.

Owns the statuses of a drill's checks and of the whole drill, row counts against the
manifest, which sample tables to checksum, RTO/RPO against their targets, and the
exit code of each outcome (0 passed, 1 passed but over target, 2 failed).
"""

from __future__ import annotations

from typing import Any

PASSED, WARNING, FAILED = "passed", "warning", "failed"
OK, BAD, UNKNOWN, SKIPPED = "ok", "failed", "unknown", "skipped"
EXIT = {PASSED: 0, WARNING: 1, FAILED: 2}


def compare_counts(expected: dict[str, int], actual: dict[str, int | None],
                   tolerance: float = 0.0) -> list[dict[str, Any]]:
    """One result per manifest table: missing, count differing beyond `tolerance`, or ok."""
    out = []
    for table, want in expected.items():
        got = actual.get(table)
        if got is None:
            out.append({"table": table, "expected": want, "actual": None, "status": BAD,
                        "reason": "missing from the restored database"})
            continue
        allowed = int(abs(want) * tolerance)
        ok = abs(got - want) <= allowed
        out.append({"table": table, "expected": want, "actual": got,
                    "status": OK if ok else BAD,
                    "reason": "" if ok else f"{got} rows restored, manifest says {want}"})
    return out


def sample_tables(counts: dict[str, int], configured: list[str], canary_table: str,
                  n: int = 2) -> list[str]:
    """Tables to checksum: the configured ones, else the `n` smallest non-empty ones.

    Small tables are usually reference data (departments, doctors): cheap to hash and
    rarely written, so the live source is a fair reference for them.
    """
    if configured:
        return list(configured)
    canary = canary_table.split(".")[-1]
    candidates = sorted((c, t) for t, c in counts.items()
                        if c > 0 and t.split(".")[-1] != canary)
    return [t for _, t in candidates[:n]]


def against_target(value: float | None, target: float | None) -> str:
    if value is None:
        return UNKNOWN
    if target is None or target <= 0:
        return UNKNOWN
    return OK if value <= target else WARNING


def outcome_of(checks: list[str], rto: str, rpo: str) -> str:
    if any(c == BAD for c in checks):
        return FAILED
    return WARNING if WARNING in (rto, rpo) else PASSED
