"""Classification -> priority -> contract deadlines, SLA verdicts, and bad input (pure leaf)."""

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhops import incident_rules as ir

T0 = datetime(2026, 11, 3, 2, 0, tzinfo=UTC)
RULES = ir.validate(None)

# Written out by hand from the contract and the documented default table in invoke.yaml,
# not computed: (scope, severity) -> (priority, respond minutes, on-site minutes or None).
# The type (server/software) does not change the default priority: both are checked.
EXPECTED = {
    ("person", "patient-safety"): ("P1", 5, 120),
    ("person", "clinical"): ("P2", 30, 120),
    ("person", "operations"): ("P3", 30, None),
    ("person", "experience"): ("P4", 60, None),
    ("department", "patient-safety"): ("P1", 5, 120),
    ("department", "clinical"): ("P2", 30, 120),
    ("department", "operations"): ("P3", 30, None),
    ("department", "experience"): ("P3", 30, None),
    ("hospital", "patient-safety"): ("P1", 5, 120),
    ("hospital", "clinical"): ("P1", 5, 120),
    ("hospital", "operations"): ("P2", 30, 120),
    ("hospital", "experience"): ("P2", 30, 120),
}
CASES = [(s, t, sev, *EXPECTED[(s, sev)]) for (s, sev) in EXPECTED for t in ir.TYPES]


def test_every_classification_is_in_the_table():
    assert len(CASES) == len(ir.SCOPES) * len(ir.TYPES) * len(ir.SEVERITIES) == 24


@pytest.mark.parametrize("scope, type_, severity, priority, respond, onsite", CASES)
def test_deadlines_for_every_classification(scope, type_, severity, priority, respond, onsite):
    c = ir.classify(RULES, scope, type_, severity)
    assert (c.priority, c.respond_minutes, c.onsite_minutes) == (priority, respond, onsite)
    assert c.emergency is (onsite is not None)
    d = ir.deadlines(c, T0)
    assert d.respond_by == T0 + timedelta(minutes=respond)
    assert d.onsite_by == (T0 + timedelta(minutes=onsite) if onsite else None)


def test_the_table_is_configurable():
    rules = ir.validate({"classes": {"routine": 20},
                         "rules": [{"type": "server", "scope": ["hospital", "department"],
                                    "priority": "P1"}, {"priority": "P3"}]})
    assert ir.classify(rules, "department", "server", "experience").priority == "P1"
    assert ir.classify(rules, "department", "software", "patient-safety").priority == "P3"
    assert ir.classify(rules, "person", "software", "clinical").respond_minutes == 20


@pytest.mark.parametrize("raw, message", [
    ({"classes": {"urgent": 5}}, "unknown class 'urgent'; valid: simple, routine, other"),
    ({"classes": {"simple": -1}}, "incident.classes.simple: must not be negative"),
    ({"classes": {"simple": "soon"}}, "must be a number of minutes"),
    ({"onsite_minutes": True}, "incident.onsite_minutes: must be a number"),
    ({"priorities": {"P1": {"class": "fast"}}}, "'fast' is not a class; valid: simple, "
                                                "routine, other"),
    ({"priorities": {"P1": {"class": "simple", "sla": 1}}}, "unknown key 'sla'"),
    ({"rules": [{"scope": "ward", "priority": "P1"}, {"priority": "P4"}]},
     "incident.rules[0].scope: 'ward' is not a scope; valid: person, department, hospital"),
    ({"rules": [{"severity": "fatal", "priority": "P1"}]},
     "valid: patient-safety, clinical, operations, experience"),
    ({"rules": [{"priority": "P9"}]}, "'P9' is not a priority; valid: P1, P2, P3, P4"),
    ({"rules": [{"host": "x", "priority": "P1"}]}, "unknown key 'host'"),
    ({"rules": [{"scope": "person", "priority": "P1"}]},
     "no rule matches scope=department type=server severity=patient-safety"),
    ([1], "incident: must be a mapping"),
])
def test_bad_tables_are_refused_with_the_valid_values(raw, message):
    with pytest.raises(ir.RuleError, match=None) as err:
        ir.validate(raw)
    assert message in str(err.value)


@pytest.mark.parametrize("axis, value, valid", [
    ("scope", "ward", "person, department, hospital"),
    ("type", "network", "server, software"),
    ("severity", "high", "patient-safety, clinical, operations, experience"),
])
def test_values_outside_the_table_list_the_valid_ones(axis, value, valid):
    args = {"scope": "person", "type": "server", "severity": "clinical", axis: value}
    with pytest.raises(ir.RuleError) as err:
        ir.classify(RULES, args["scope"], args["type"], args["severity"])
    assert f"--{axis}: {value!r} is not a valid {axis}; valid: {valid}" in str(err.value)


def _sla(offsets, onsite_by=120, now=300, respond=30):
    """Verdict with times given in minutes after T0 (None = not happened)."""
    def m(x):
        return None if x is None else T0 + timedelta(minutes=x)
    ack, resolved, onsite = offsets
    return ir.sla(m(respond), m(onsite_by), acknowledged=m(ack), resolved=m(resolved),
                  onsite=m(onsite), now=m(now))


@pytest.mark.parametrize("offsets, onsite_by, now, state, late_min", [
    ((10, 60, None), 120, 300, "met", 0),          # answered in time, solved remotely
    ((31, 60, None), 120, 300, "breached", 1),     # answered a minute late
    ((None, 20, None), 120, 300, "met", 0),        # solved before anyone acknowledged
    ((10, 200, 110), 120, 300, "met", 0),          # remote failed, on site in time
    ((10, 200, 130), 120, 300, "breached", 10),    # on site 10 minutes late
    ((10, 150, None), 120, 300, "breached", 30),   # nobody on site, solved 30 min late
    ((10, None, None), 120, 100, "running", 0),    # open, on-site clock still running
    ((None, None, None), 120, 45, "breached", 15),  # open and unanswered: breached at now
    ((None, None, None), None, 10, "running", 0),
    ((5, None, None), None, 500, "met", 0),        # no on-site rule: answered is enough
])
def test_sla_verdicts(offsets, onsite_by, now, state, late_min):
    v = _sla(offsets, onsite_by, now)
    assert v["state"] == state
    assert v["breached_by_min"] == late_min
    assert v["met"] is (state == "met")


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "26-11", "2026/11", "2026-1", "",
                                  None, "november"])
def test_malformed_months_are_refused(text):
    with pytest.raises(ir.RuleError, match="expected YYYY-MM, e.g. 2026-11"):
        ir.parse_month(text)


@given(st.integers(1, 9998), st.integers(1, 12))
def test_months_parse_to_their_bounds(year, month):
    first, nxt = ir.parse_month(f"{year:04d}-{month:02d}")
    assert (first.year, first.month, first.day) == (year, month, 1)
    assert nxt > first and nxt.day == 1 and (nxt - first).days in (28, 29, 30, 31)


@given(st.text(max_size=12))
def test_month_parser_never_crashes(text):
    try:
        first, _ = ir.parse_month(text)
    except ir.RuleError:
        return
    assert f"{first:%Y-%m}" == text.strip()


@pytest.mark.parametrize("text", ["yesterday", "2026-02-30", "2026-11-28 25:00"])
def test_malformed_dates_are_refused(text):
    with pytest.raises(ir.RuleError, match="is not a date; expected YYYY-MM-DD"):
        ir.parse_when(text, "--since")


def test_naive_dates_are_utc():
    assert ir.parse_when("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    assert ir.parse_when("2026-11-01T08:00+08:00") == datetime(2026, 11, 1, tzinfo=UTC)


def test_effective_table_spells_out_every_classification():
    rows = ir.table(RULES)
    assert len(rows) == 24
    assert {(r["scope"], r["severity"]): r["priority"] for r in rows} == {
        k: v[0] for k, v in EXPECTED.items()}
