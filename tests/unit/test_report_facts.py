"""Pure report logic: episodes, incidents and SLA, changes read defensively, missing
evidence, week periods, and the byte-stable zip and PDF dates."""

from __future__ import annotations

import io
import zipfile
from datetime import UTC, date, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhops import report, report_output
from mhops import report_facts as f
from mhops.errors import MhopsError


def insp(when: str, events=(), hosts=("a", "b"), resolution=None, down=()) -> dict:
    return {"kind": "inspection", "run_id": when, "time": {"started_utc": when},
            "status": "warning" if events else "normal", "resolution": resolution,
            "hosts": [{"host": h, "reachable": h not in down} for h in hosts],
            "events": [{"host": h, "check": c, "target": t, "status": s,
                        "explanation": "x", "resolution": "suggested"}
                       for h, c, t, s in events]}


def test_episode_ends_at_the_first_run_that_reaches_the_host_and_finds_it_normal():
    runs = [insp("2026-10-01T00:00:00Z", [("a", "disk_percent", "/data", "warning")]),
            insp("2026-10-02T00:00:00Z", [("a", "disk_percent", "/data", "critical")],
                 resolution="清理"),
            insp("2026-10-03T00:00:00Z", down=("a",)),      # unreachable: not a recovery
            insp("2026-10-04T00:00:00Z"),
            insp("2026-10-05T00:00:00Z", [("a", "disk_percent", "/data", "warning")])]
    eps = f.episodes(runs)
    assert [(e["first"], e["status"], e["occurrences"], e["resolved"], e["entered"])
            for e in eps] == [
        ("2026-10-01T00:00:00Z", "critical", 2, "2026-10-04T00:00:00Z", ["清理"]),
        ("2026-10-05T00:00:00Z", "warning", 1, None, [])]


def test_incidents_newest_record_wins_and_the_store_adds_open_ones():
    def fault(when, resolved, met):
        return {"kind": "fault", "run_id": when, "time": {"started_utc": when},
                "incident": {"id": "I1", "title": "t", "severity": "严重",
                             "reported_utc": "2026-10-01T00:00:00Z", "resolved_utc": resolved,
                             "sla": {"met": met}}}
    rows = f.incidents([fault("2026-10-02T00:00:00Z", "2026-10-02T00:00:00Z", False),
                        fault("2026-10-01T00:00:00Z", None, None)],
                       store=[{"id": "I1", "title": "stale"},
                              {"id": "I2", "reported_utc": "2026-10-03T00:00:00Z"}])
    assert [(r["id"], r["resolved"], r["sla_met"], r["major"]) for r in rows] == [
        ("I1", "2026-10-02T00:00:00Z", False, True), ("I2", None, None, False)]
    s = f.incident_summary(rows, datetime(2026, 10, 1, tzinfo=UTC),
                           datetime(2026, 11, 1, tzinfo=UTC))
    assert (len(s["opened"]), len(s["resolved"]), s["sla_percent"], [r["id"] for r in s["open"]],
            s["mttr_s"]) == (2, 1, 0.0, ["I2"], 86400)


def test_incident_store_sla_fields():
    row = f.incident_row({"id": 7, "priority": "P2", "severity": "patient-safety",
                          "sla": {"state": "breached", "breached_by_min": 12}}, None)
    assert (row["id"], row["sla_met"], row["breached_by_s"], row["major"]) == ("7", False, 720,
                                                                              True)
    assert f.incident_row({"sla": {"state": "running"}}, None)["sla_met"] is None
    assert f.analysis_ids([{"incident": {"id": 7}}]) == {"7"}


def test_change_rows_from_partial_records():
    assert f.change_row({"kind": "upgrade"})["detail"] == ""
    row = f.change_row({"kind": "patch", "outcome": "failed", "hosts": [
        {"host": "h1", "packages": ["openssl", {"name": "curl"}]}, "junk"]})
    assert (row["status"], row["hosts"], row["detail"]) == ("critical", ["h1", "junk"],
                                                           "curl, openssl")
    assert not f.is_applied({"kind": "db_maintain", "mode": "plan"})
    # Drill records carry an outcome and an exit code but no status.
    assert f.status_of({"kind": "drill", "outcome": "passed", "exit_code": 0}) == "normal"
    assert f.status_of({"kind": "drill", "outcome": "warning", "exit_code": 1}) == "warning"
    assert f.status_of({"kind": "x", "exit_code": 2}) == "critical"
    assert f.status_of({"kind": "x"}) == "unknown"


def test_missing_evidence_words_each_gap():
    rows = [{"id": "I1", "major": True}, {"id": "I2", "major": False}]
    got = f.missing_evidence({"inspection": [insp("2026-10-05T00:00:00Z")]},
                             ["2026-10", "2026-11"], lambda d: d.strftime("%Y-%m"),
                             quarter=True, incident_rows=rows, faq_files=[])
    assert [g["code"] for g in got] == ["no_inspection_month", "no_perf", "no_drill", "no_faq",
                                        "no_fault_analysis"]
    assert got[0]["params"] == {"month": "2026-11"}


@given(st.recursive(st.none() | st.integers() | st.text() | st.booleans(),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(), c,
                                                                         max_size=3)))
def test_readers_never_fail_on_odd_fields(junk):
    rec = {"kind": "upgrade", "hosts": junk, "incident": junk, "events": junk, "summary": junk,
           "time": junk, "sla": junk, "backup": junk}
    f.change_row(rec)
    f.inspection_row(rec)
    f.episodes([rec])
    f.incidents([rec], store=[junk] if isinstance(junk, dict) else [])
    f.analysis_ids([rec])


def test_week_periods_and_defaults():
    p = report.period_for("weekly", "2026-W01", "Asia/Shanghai")
    assert (p.label, p.start.date(), p.end.date()) == ("2026-W01", date(2025, 12, 29),
                                                       date(2026, 1, 5))
    today = date(2026, 11, 28)
    assert report.period_for("weekly", None, "UTC", today).label == "2026-W48"
    assert report.period_for("monthly", None, "UTC", today).label == "2026-11"
    assert report.period_for("quarterly", None, "UTC", today).label == "2026Q4"
    assert report.months_of(report.period_for("quarterly", "2026Q4", "UTC")) == [
        "2026-10", "2026-11", "2026-12"]
    with pytest.raises(MhopsError, match="a monthly report needs a month"):
        report.period_for("monthly", "2026Q4", "UTC")


def test_months_not_begun_at_generation_time_are_not_missing(tmp_path):
    p = report.period_for("quarterly", "2026Q4", "Asia/Shanghai")
    def due(when):
        return report.due_months(p, report.Options(
            what="quarterly", records_dir=tmp_path, out_dir=tmp_path, generated_at=when))
    assert due(datetime(2026, 11, 28, tzinfo=UTC)) == ["2026-10", "2026-11"]
    # 2026-11-30T16:30Z is already December 1st in Shanghai.
    assert due(datetime(2026, 11, 30, 16, 30, tzinfo=UTC)) == ["2026-10", "2026-11", "2026-12"]


def test_zip_is_byte_stable_and_pdf_dates_are_pinned():
    a = report_output.zip_bytes({"b.txt": b"2", "a/x.html": b"1"})
    assert a == report_output.zip_bytes({"a/x.html": b"1", "b.txt": b"2"})
    with zipfile.ZipFile(io.BytesIO(a)) as z:
        assert z.namelist() == ["a/x.html", "b.txt"]
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    pdf = b"<</CreationDate (D:20261128151832+00'00')\n/ModDate (D:20261128151833+00'00')>>"
    pinned = report_output.pin_pdf_dates(pdf)
    assert len(pinned) == len(pdf) and b"2026" not in pinned
