"""JUnit XML and Prometheus text from a run record (a pure leaf).

Owns the two formats CI pipelines and node_exporter's textfile collector read:

- JUnit: one ``<testsuite>`` per host (or per database a drill restored), one
  ``<testcase>`` per check of it; critical/failed results are ``<failure>``, warnings
  go to ``<system-out>``, unknown/skipped results are ``<skipped>``. The shape is the
  one pytest's own xunit2 output validates against (``junit-10.xsd``): no ``<error>``
  elements, no properties inside test cases, suite times with three decimals.
- Prometheus: gauges ``mhops_check_value`` / ``mhops_check_status`` per host × check,
  ``mhops_host_status``, and run-level gauges, with HELP/TYPE lines, escaped label
  values, one sample per label set, and no timestamps (the textfile collector refuses
  them).

The input must already be redacted: this module formats, it does not judge.
Imports nothing of the project.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

from mhops.cases import FAIL, LEVEL_RANK, PASS, SKIP, WARN, Case, cases, run_level

STATUS_VALUE = {PASS: 0, WARN: 1, FAIL: 2, SKIP: -1}
# XML 1.0 cannot carry most control characters, even escaped: a stray byte from a
# log line would make the whole report unparsable for the CI server.
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_NAME_BAD = re.compile(r"[^A-Za-z0-9_]")


def _x(text: Any) -> str:
    return _XML_BAD.sub("?", "" if text is None else str(text))


def kind_slug(kind: Any) -> str:
    """A record kind as used in metric and file names (security.audit -> security_audit)."""
    return _NAME_BAD.sub("_", str(kind or "run")) or "run"


def _epoch(text: Any) -> float | None:
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _value_text(value: Any, unit: str) -> str:
    if value is None or value == "":
        return ""
    return f"{value} {unit}".strip()


def case_name(c: Case) -> str:
    return f"{c.check}[{c.key_target}]" if c.key_target else c.check


# ------------------------------------------------------------------------- JUnit

def junit_xml(record: dict[str, Any]) -> str:
    """The record as a JUnit XML document (UTF-8 text with an XML declaration)."""
    kind = kind_slug(record.get("kind"))
    run_id = _x(record.get("run_id"))
    all_cases = cases(record)
    subjects: dict[str, list[Case]] = {}
    for c in all_cases:
        subjects.setdefault(c.subject, []).append(c)
    for h in record.get("hosts") or []:  # a host with no results still shows up
        if isinstance(h, dict) and h.get("host") is not None:
            subjects.setdefault(str(h["host"]), [])
    durations = _durations(record)
    timestamp = _x((record.get("time") or {}).get("started_utc") or "")
    root = ET.Element("testsuites", name=f"mhops {kind}")
    totals = {"tests": 0, "failures": 0, "time": 0.0}
    for subject, items in subjects.items():
        failures = sum(1 for c in items if c.level == FAIL)
        skipped = sum(1 for c in items if c.level == SKIP)
        seconds = durations.get(subject, 0.0)
        suite = ET.SubElement(root, "testsuite", name=_x(subject) or kind, tests=str(len(items)),
                              failures=str(failures), errors="0", skipped=str(skipped),
                              time=f"{seconds:.3f}", timestamp=timestamp)
        props = ET.SubElement(suite, "properties")
        for name, value in (("kind", kind), ("run_id", run_id),
                            ("status", _x(record.get("status") or record.get("outcome")))):
            ET.SubElement(props, "property", name=name, value=value)
        classname = f"mhops.{kind}.{_NAME_BAD.sub('_', subject) or kind}"
        for c in items:
            _testcase(suite, classname, c)
        totals["tests"] += len(items)
        totals["failures"] += failures
        totals["time"] += seconds
    root.set("tests", str(totals["tests"]))
    root.set("failures", str(totals["failures"]))
    root.set("errors", "0")
    root.set("time", f"{totals['time']:.3f}")
    ET.indent(root)
    return "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n" + ET.tostring(
        root, encoding="unicode") + "\n"


def _testcase(suite: ET.Element, classname: str, c: Case) -> None:
    seconds = c.value if c.check == "step" and isinstance(c.value, (int, float)) else 0.0
    tc = ET.SubElement(suite, "testcase", classname=classname, name=_x(case_name(c)),
                       time=f"{float(seconds):.3f}")
    value = _value_text(c.value, c.unit)
    detail = "; ".join(x for x in (f"status: {c.status}", value and f"value: {value}",
                                   c.target if c.target != c.key_target else "",
                                   c.message) if x)
    if c.level == FAIL:
        el = ET.SubElement(tc, "failure", type=_x(c.status) or "failed",
                           message=_x(c.message or c.status))
        el.text = _x(detail)
    elif c.level == SKIP:
        ET.SubElement(tc, "skipped", type=_x(c.status) or "skipped",
                      message=_x(c.message or c.status or "not measured"))
    elif c.level == WARN:
        ET.SubElement(tc, "system-out").text = _x(detail)


def _durations(record: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for h in record.get("hosts") or []:
        if isinstance(h, dict) and isinstance(h.get("duration_ms"), (int, float)):
            out[str(h.get("host"))] = h["duration_ms"] / 1000
    duration = (record.get("time") or {}).get("duration_s")
    if not out and isinstance(duration, (int, float)):
        for c in cases(record):
            out.setdefault(c.subject, float(duration))
    return out


# -------------------------------------------------------------------- Prometheus

def _label(value: Any) -> str:
    return str("" if value is None else value).replace("\\", "\\\\").replace(
        "\"", "\\\"").replace("\n", "\\n")


def _num(value: Any) -> str | None:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return None


class _Family:
    def __init__(self, name: str, help_text: str):
        self.name, self.help, self.samples = name, help_text, {}

    def add(self, labels: dict[str, Any], value: str | None) -> None:
        if value is None:
            return
        key = ",".join(f"{k}=\"{_label(v)}\"" for k, v in labels.items())
        self.samples.setdefault(key, value)  # a repeated label set keeps its first value

    def text(self) -> str:
        if not self.samples:
            return ""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge"]
        lines += [f"{self.name}{{{k}}} {v}" for k, v in self.samples.items()]
        return "\n".join(lines) + "\n"


def prom_text(record: dict[str, Any]) -> str:
    """The record as Prometheus text exposition (textfile-collector compatible)."""
    kind = kind_slug(record.get("kind"))
    status_help = "0 normal, 1 warning, 2 critical or failed, -1 unknown or skipped."
    value = _Family("mhops_check_value", "Value an mhops check measured (see the unit label).")
    status = _Family("mhops_check_status", "Status of an mhops check: " + status_help)
    host = _Family("mhops_host_status", "Worst check status of a host in the run: "
                   + status_help)
    reach = _Family("mhops_host_reachable", "1 when the host answered in the run, else 0.")
    run = _Family("mhops_run_status", "Status of the last mhops run of this kind: "
                  + status_help)
    code = _Family("mhops_run_exit_code", "Exit code of the last mhops run of this kind.")
    finished = _Family("mhops_run_finished_timestamp_seconds",
                       "When the last mhops run of this kind finished (Unix time).")
    duration = _Family("mhops_run_duration_seconds",
                       "How long the last mhops run of this kind took.")
    seen: dict[tuple[str, str, str], int] = {}
    worst: dict[str, str] = {}
    for c in cases(record):
        key = (c.subject, c.check, c.key_target)
        seen[key] = seen.get(key, 0) + 1
        # Two results with one label set would make node_exporter drop the whole file.
        target = c.key_target if seen[key] == 1 else f"{c.key_target}#{seen[key]}"
        labels = {"kind": kind, "host": c.subject, "check": c.check, "target": target}
        value.add({**labels, "unit": c.unit}, _num(c.value))
        status.add(labels, str(STATUS_VALUE[c.level]))
        if c.level != SKIP and LEVEL_RANK[c.level] >= LEVEL_RANK.get(worst.get(c.subject,
                                                                                  PASS), 0):
            worst[c.subject] = c.level
        worst.setdefault(c.subject, PASS)
    for subject, lvl in worst.items():
        host.add({"kind": kind, "host": subject}, str(STATUS_VALUE[lvl]))
    for h in record.get("hosts") or []:
        if isinstance(h, dict) and "reachable" in h:
            reach.add({"kind": kind, "host": h.get("host")}, _num(bool(h["reachable"])))
    run.add({"kind": kind}, str(STATUS_VALUE[run_level(record)]))
    code.add({"kind": kind}, _num(record.get("exit_code")))
    t = record.get("time") or {}
    ts = _epoch(t.get("finished_utc"))
    finished.add({"kind": kind}, _num(float(ts)) if ts is not None else None)
    duration.add({"kind": kind}, _num(t.get("duration_s")))
    return "".join(f.text() for f in (value, status, host, reach, run, code, finished,
                                      duration))
