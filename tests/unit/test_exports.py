"""--junit and --prom-textfile: schema-valid JUnit, parseable Prometheus text, atomic
files, nothing sensitive in either."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree
from prometheus_client.parser import text_string_to_metric_families

from mhops import exports, junitprom
from mhops.cases import cases
from mhops.errors import MhopsError
from mhops.redact import Redactor
from tests.sample_records import VAULT_SECRET, drill_record, inspection_record, leaks

XSD = Path(__file__).resolve().parents[1] / "fixtures" / "junit-10.xsd"


@pytest.fixture(scope="module")
def schema():
    return etree.XMLSchema(etree.parse(str(XSD)))


def _validate(schema, path: Path) -> etree._ElementTree:
    doc = etree.parse(str(path))
    assert schema.validate(doc), schema.error_log
    return doc


def _metrics(text: str) -> dict[str, list]:
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


REDACTOR = Redactor(secrets=[VAULT_SECRET])


def test_inspection_junit_is_schema_valid_one_case_per_host_and_check(schema, tmp_path):
    rec = inspection_record("en")
    path = exports.write_junit(rec, tmp_path / "junit.xml", REDACTOR)
    doc = _validate(schema, path)
    suites = doc.findall("testsuite")
    assert [s.get("name") for s in suites] == ["web01", "web02"]
    total = sum(len(h["results"]) for h in rec["hosts"])
    assert len(doc.findall(".//testcase")) == total == int(doc.getroot().get("tests"))
    critical = sum(1 for h in rec["hosts"] for r in h["results"] if r["status"] == "critical")
    assert len(doc.findall(".//failure")) == critical == int(doc.getroot().get("failures"))
    web01 = {tc.get("name"): tc for tc in suites[0].findall("testcase")}
    assert web01["disk_percent[/]"].find("failure") is not None
    assert web01["process[api]"].find("failure") is not None
    warned = [n for n, tc in web01.items() if tc.find("system-out") is not None]
    assert any(n.startswith("disk_percent[/data/") for n in warned), warned
    assert web01["cpu_percent"].find("failure") is None
    assert suites[1].find("testcase").get("name") == "reachable"
    assert suites[0].get("time") == "0.230"
    assert leaks(path.read_text()) == []


def test_drill_junit_is_schema_valid_with_failed_step_and_table(schema, tmp_path):
    path = exports.write_junit(drill_record("failed"), tmp_path / "d.xml", REDACTOR)
    doc = _validate(schema, path)
    failed = [tc.get("name") for tc in doc.iter("testcase") if tc.find("failure") is not None]
    assert failed == ["step[verify]", "table_rows[patients]"]
    assert [tc.get("name") for tc in doc.iter("testcase")
            if tc.find("skipped") is not None] == ["checksum[departments]"]
    assert doc.find("testsuite").get("name") == "his"
    assert leaks(path.read_text()) == []


def test_prom_textfile_parses_and_carries_values_and_statuses(tmp_path):
    rec = inspection_record("en")
    path = exports.write_prom(rec, tmp_path, REDACTOR)
    assert path == tmp_path / "mhops_inspection.prom"
    text = path.read_text()
    m = _metrics(text)
    disk = {s.labels["target"]: s.value for s in m["mhops_check_value"]
            if s.labels["check"] == "disk_percent"}
    assert disk["/"] == 97.0
    status = {(s.labels["host"], s.labels["check"], s.labels["target"]): s.value
              for s in m["mhops_check_status"]}
    assert status["web01", "disk_percent", "/"] == 2
    assert status["web01", "cpu_percent", ""] == 0
    assert status["web02", "reachable", ""] == 2
    hosts = {s.labels["host"]: s.value for s in m["mhops_host_status"]}
    assert hosts == {"web01": 2, "web02": 2}
    assert {s.labels["host"]: s.value for s in m["mhops_host_reachable"]} == {
        "web01": 1, "web02": 0}
    assert m["mhops_run_exit_code"][0].value == 2
    assert m["mhops_run_finished_timestamp_seconds"][0].value > 1.7e9
    for name in ("mhops_check_value", "mhops_check_status"):
        assert f"# HELP {name} " in text and f"# TYPE {name} gauge" in text
    # the planted mount point with a quote and a backslash survives escaping, ID redacted
    odd = [s.labels["target"] for s in m["mhops_check_status"]
           if s.labels["target"].startswith("/data/")]
    assert odd and all('"' in t and "\\" in t for t in odd), odd
    assert leaks(text) == []


def test_drill_prom_has_rto_and_failed_step(tmp_path):
    m = _metrics(exports.write_prom(drill_record("failed"), tmp_path, REDACTOR).read_text())
    values = {s.labels["check"] + s.labels["target"]: s.value for s in m["mhops_check_value"]}
    assert values["rto_seconds"] == 44.3
    status = {s.labels["check"] + ":" + s.labels["target"]: s.value
              for s in m["mhops_check_status"]}
    assert status["step:verify"] == 2 and status["checksum:departments"] == -1
    assert m["mhops_run_status"][0].value == 2


def test_files_are_atomic_and_readable_by_node_exporter(tmp_path):
    rec = inspection_record("en")
    prom = exports.write_prom(rec, tmp_path)
    junit = exports.write_junit(rec, tmp_path / "j.xml")
    for p in (prom, junit):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path)) == ["j.xml", "mhops_inspection.prom"]


def test_duplicate_label_sets_stay_unique():
    rec = {"kind": "security.audit", "hosts": [{"host": "h", "results": [
        {"check": "c", "target": "t", "status": "normal", "value": 1},
        {"check": "c", "target": "t", "status": "critical", "value": 2}]}]}
    m = _metrics(junitprom.prom_text(rec))
    targets = sorted(s.labels["target"] for s in m["mhops_check_status"])
    assert targets == ["t", "t#2"]
    assert {s.labels["kind"] for s in m["mhops_check_status"]} == {"security_audit"}


def test_destinations_are_refused_before_the_run(tmp_path):
    with pytest.raises(MhopsError, match="--prom-textfile"):
        exports.Targets(prom_dir=tmp_path / "missing").check()
    with pytest.raises(MhopsError, match="--junit"):
        exports.Targets(junit=tmp_path / "missing" / "j.xml").check()
    with pytest.raises(MhopsError, match="not a folder"):
        exports.Targets(junit=tmp_path).check()
    exports.Targets(junit=tmp_path / "j.xml", prom_dir=tmp_path).check()


def test_generic_items_shape_and_levels():
    rec = {"kind": "sla", "items": [{"subject": "INC-1", "check": "sla", "status": "warning",
                                     "value": 12, "unit": "min"}]}
    (c,) = cases(rec)
    assert (c.subject, c.level, c.value) == ("INC-1", "warn", 12)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=150, deadline=None)
@given(host=_text, check=_text, target=_text, status=st.sampled_from(
    ["normal", "warning", "critical", "unknown", "weird"]),
    value=st.one_of(st.none(), st.floats(allow_nan=True), st.integers(), _text))
def test_any_strings_give_parseable_prom_and_valid_junit(host, check, target, status, value):
    rec = {"kind": "inspection", "status": status, "exit_code": 0,
           "hosts": [{"host": host, "results": [{"check": check, "target": target,
                                                  "status": status, "value": value,
                                                  "explanation": target}]}]}
    m = _metrics(junitprom.prom_text(rec))
    (s,) = m["mhops_check_status"]
    assert s.labels["host"] == host and s.labels["target"] == target
    doc = etree.fromstring(junitprom.junit_xml(rec).encode())
    assert _SCHEMA.validate(doc), _SCHEMA.error_log


_SCHEMA = etree.XMLSchema(etree.parse(str(XSD)))
