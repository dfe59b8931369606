"""The drill's pure rules: production guards, target parsing, backup choice, verdicts."""

from __future__ import annotations

import pytest

from mhops import drill_files, drill_guards, drill_rules
from mhops.drill_guards import Endpoint, refusals
from mhops.errors import MhopsError

PROD = [
    Endpoint("postgresql", "10.0.0.5", 5432, name="his_pg", production=True),
    Endpoint("postgresql", "localhost", 5433, socket="/var/run/postgresql",
             data_dir="/var/lib/postgresql/15/main", name="local_pg", production=True),
    Endpoint("mariadb", "127.0.0.1", 3306, socket="/run/mysqld/mysqld.sock",
             data_dir="/var/lib/mysql", name="local_my", production=True),
]
ALIASES = frozenset({"dbhost01", "10.0.0.5"})


def scratch(port=55432, host="127.0.0.1", data_dir=None, **kw):
    return Endpoint("postgresql", host, port, data_dir=data_dir, **kw)


def test_a_free_loopback_scratch_target_is_allowed():
    assert refusals(scratch(), PROD, {}, ALIASES) == []
    assert refusals(scratch(data_dir="/srv/drills"), PROD, {}, ALIASES) == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2",
                                  "LOCALHOST"])
def test_loopback_spellings_are_the_same_host(host):
    reasons = refusals(scratch(5433, host), PROD, {}, ALIASES)
    assert any("same host and port as local_pg" in r for r in reasons)


def test_this_machines_own_names_count_as_the_same_host():
    # his_pg is configured by this machine's address: the scratch port must not clash.
    assert any("his_pg" in r for r in refusals(scratch(5432), PROD, {}, ALIASES))
    assert refusals(scratch(5432), PROD[:1], {}, frozenset()) == []


def test_same_port_on_another_engine_is_refused():
    reasons = refusals(Endpoint("postgresql", "127.0.0.1", 3306), PROD, {}, ALIASES)
    assert any("local_my" in r for r in reasons)


def test_non_loopback_target_is_refused():
    assert any("not a loopback" in r for r in refusals(scratch(host="10.0.0.9"), [], {}))


@pytest.mark.parametrize("folder", ["/var/lib/postgresql/15/main",
                                    "/var/lib/postgresql/15/main/",
                                    "/var/lib/postgresql/15/main/base/../drill",
                                    "/var/lib/mysql", "/var/run/postgresql"])
def test_scratch_folder_in_a_production_data_or_socket_folder_is_refused(folder):
    assert refusals(scratch(data_dir=folder), PROD, {}, ALIASES)


def test_socket_clash_is_refused():
    t = Endpoint("mariadb", "127.0.0.1", 3399, socket="/run/mysqld/mysqld.sock")
    assert any("same socket as local_my" in r for r in refusals(t, PROD, {}, ALIASES))


def test_target_marked_production_in_the_inventory_is_refused():
    t = scratch(55000, name="his_pg", production=True)
    assert any("marked production" in r for r in refusals(t, PROD, {}, ALIASES))


@pytest.mark.parametrize("env, who", [
    ({"PGPORT": "5433"}, "local_pg"),
    ({"PGHOST": "127.0.0.1", "PGPORT": "5433"}, "local_pg"),
    ({"PGHOST": "/var/run/postgresql"}, "local_pg"),
    ({"PGHOST": "dbhost01"}, "his_pg"),
    ({"MYSQL_TCP_PORT": "3306"}, "local_my"),
    ({"MYSQL_HOST": "::1"}, "local_my"),
    ({"MYSQL_UNIX_PORT": "/run/mysqld/mysqld.sock"}, "local_my"),
])
def test_client_environment_pointing_at_production_is_refused(env, who):
    reasons = refusals(scratch(), PROD, env, ALIASES)
    assert any("in the environment point at production" in r and who in r for r in reasons)


def test_client_environment_elsewhere_is_allowed():
    env = {"PGHOST": "127.0.0.1", "PGPORT": "6543", "MYSQL_TCP_PORT": "3307",
           "MYSQL_HOST": "10.9.9.9"}
    assert refusals(scratch(), PROD, env, ALIASES) == []


def test_production_endpoints_from_inventory_entries():
    entries = [{"name": "a", "engine": "postgresql", "host": "h", "production": True},
               {"name": "b", "engine": "mariadb", "production": False},
               {"name": "c", "engine": "mariadb", "port": 3307, "production": True,
                "data_dir": "/d"}]
    got = drill_guards.production_endpoints(entries)
    assert [(e.name, e.host, e.port, e.data_dir) for e in got] == [
        ("a", "h", 5432, None), ("c", "127.0.0.1", 3307, "/d")]


ENTRIES = [{"name": "his_pg", "engine": "postgresql", "host": "localhost", "port": 5432,
            "production": True},
           {"name": "drill_slot", "engine": "postgresql", "port": 55432, "production": False}]


@pytest.mark.parametrize("spec, want", [
    (None, drill_guards.TargetSpec()),
    ("scratch", drill_guards.TargetSpec()),
    ("127.0.0.1:6000", drill_guards.TargetSpec(port=6000)),
    ("[::1]:6000", drill_guards.TargetSpec(host="::1", port=6000)),
    ("port=6001,dir=/srv/drill", drill_guards.TargetSpec(port=6001, parent="/srv/drill")),
    ("his_pg", drill_guards.TargetSpec(host="localhost", port=5432, entry="his_pg",
                                       production=True)),
    ("drill_slot", drill_guards.TargetSpec(port=55432, entry="drill_slot")),
])
def test_parse_target(spec, want):
    assert drill_guards.parse_target(spec, ENTRIES) == want


@pytest.mark.parametrize("spec", ["nonsense", "port=x", "colour=red", "port=1,foo"])
def test_parse_target_rejects_bad_specs(spec):
    with pytest.raises(MhopsError, match="--target"):
        drill_guards.parse_target(spec, ENTRIES)


def test_named_production_target_is_refused_end_to_end_in_pure_rules():
    spec = drill_guards.parse_target("his_pg", ENTRIES)
    target = Endpoint("postgresql", spec.host, spec.port, name=spec.entry,
                      production=spec.production)
    reasons = refusals(target, drill_guards.production_endpoints(ENTRIES), {})
    assert any("marked production" in r for r in reasons)
    assert any("same host and port" in r for r in reasons)


def test_pick_latest_uses_the_name_stamp_and_needs_a_manifest():
    files = ["pg-20250101T000000Z.dump", "pg-20250101T000000Z.manifest.json",
             "pg-20250301T000000Z.dump", "pg-20250301T000000Z.manifest.json",
             "pg-20250401T000000Z.dump",  # still being written: no manifest yet
             "pg2-20260101T000000Z.dump", "pg2-20260101T000000Z.manifest.json",
             ".pg-20260101T000000Z.dump.partial", ".in-use"]
    assert drill_files.pick_latest(files, "pg") == "pg-20250301T000000Z.dump"
    assert drill_files.pick_latest(files, "pg2") == "pg2-20260101T000000Z.dump"
    assert drill_files.pick_latest(files, "my") is None
    assert drill_files.pick_latest(["my-20250101T000000Z.sql.gz",
                              "my-20250101T000000Z.manifest.json"], "my") \
        == "my-20250101T000000Z.sql.gz"


def test_compare_counts():
    got = drill_rules.compare_counts({"a": 10, "b": 5, "c": 100}, {"a": 10, "b": 4, "c": 101})
    assert [r["status"] for r in got] == ["ok", "failed", "failed"]
    assert drill_rules.compare_counts({"c": 100}, {"c": 101}, tolerance=0.01)[0]["status"] == "ok"
    missing = drill_rules.compare_counts({"x": 0}, {})[0]
    assert missing["status"] == "failed" and "missing" in missing["reason"]


def test_sample_tables_prefers_config_then_smallest_non_empty():
    counts = {"public.big": 1000, "public.mhops_canary": 1, "public.empty": 0,
              "public.dept": 20, "public.doc": 100}
    assert drill_rules.sample_tables(counts, [], "mhops_canary") == ["public.dept", "public.doc"]
    assert drill_rules.sample_tables(counts, ["public.big"], "mhops_canary") == ["public.big"]


def test_verdicts():
    assert drill_rules.against_target(10, 60) == "ok"
    assert drill_rules.against_target(61, 60) == "warning"
    assert drill_rules.against_target(None, 60) == "unknown"
    assert drill_rules.outcome_of(["ok", "skipped"], "ok", "ok") == "passed"
    assert drill_rules.outcome_of(["ok"], "warning", "ok") == "warning"
    assert drill_rules.outcome_of(["ok", "failed"], "ok", "ok") == "failed"
    assert drill_rules.EXIT == {"passed": 0, "warning": 1, "failed": 2}
