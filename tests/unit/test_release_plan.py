"""Pure release rules: versions, batches, risk, cleanup choice, the on-host module's switch."""

from __future__ import annotations

import importlib.util
import os
import threading
from datetime import UTC, datetime

import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st

from mhops import release_plan as rp


def _module():
    path = REPO / "roles" / "mhops_release" / "library" / "mhops_release.py"
    spec = importlib.util.spec_from_file_location("mhops_release", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


M = _module()


@pytest.mark.parametrize("a,b", [("1.9", "1.10"), ("v1.0.0", "2.0.0"), ("2.0", "2.0.1"),
                                 ("1.0.0", "1.0.0+build2")])
def test_version_order(a, b):
    assert rp.version_key(a) < rp.version_key(b)
    assert rp.is_downgrade(b, a) and not rp.is_downgrade(a, b)


def test_release_names_round_trip():
    name = rp.release_name("2.0.0", datetime(2026, 11, 28, 15, 0, 1, tzinfo=UTC))
    assert name == "2.0.0-20261128T150001Z"
    assert rp.parse_release(name) == ("2.0.0", "20261128T150001Z")
    assert not rp.valid_version("2.0-rc1") and rp.valid_version("2.0~rc1")


@pytest.mark.parametrize("serial,expect", [(0, [[1, 2, 3, 4, 5]]), (2, [[1, 2], [3, 4], [5]]),
                                           (9, [[1, 2, 3, 4, 5]])])
def test_batches_like_ansible_serial(serial, expect):
    assert rp.batches([1, 2, 3, 4, 5], serial) == expect


def test_max_fail_percentage_rule():
    assert rp.batch_failed(1, 2, 0) and not rp.batch_failed(0, 2, 0)
    assert not rp.batch_failed(1, 4, 25) and rp.batch_failed(2, 4, 25)


def _facts(**kw):
    f = {"reachable": True, "current_version": "1.0.0", "healthy": True, "applied": ["0001"],
         "db_exists": True, "backup_age_hours": 1.0, "disk_free_bytes": 10**9}
    f.update(kw)
    return f


def test_risk_low_when_nothing_special():
    r = rp.assess({"h": _facts()}, version="1.1.0", pending_up=[], down_steps={},
                  tarball_bytes=1000, backup_max_age_hours=24, allow_downgrade=False)
    assert (r.level, r.blocking) == ("low", [])


def test_risk_medium_for_migration_and_stale_backup():
    r = rp.assess({"h": _facts(backup_age_hours=40)}, version="2.0.0", pending_up=["0002"],
                  down_steps={"0002": True}, tarball_bytes=1000, backup_max_age_hours=24,
                  allow_downgrade=False)
    assert r.level == "medium"
    assert {x["code"] for x in r.reasons} == {"migration", "backup_stale"}


@pytest.mark.parametrize("facts,down,code", [
    (_facts(healthy=False), True, "unhealthy_now"),
    (_facts(disk_free_bytes=10), True, "disk_space"),
    (_facts(), False, "migration_no_down"),
])
def test_risk_high(facts, down, code):
    r = rp.assess({"h": facts}, version="2.0.0", pending_up=["0002"],
                  down_steps={"0002": down}, tarball_bytes=1000, backup_max_age_hours=24,
                  allow_downgrade=False)
    assert r.level == "high" and code in {x["code"] for x in r.reasons} and not r.blocking


def test_downgrade_and_unreachable_block():
    r = rp.assess({"a": _facts(current_version="3.0.0"), "b": {"reachable": False,
                                                               "error": "timed out"}},
                  version="2.0.0", pending_up=[], down_steps={}, tarball_bytes=1,
                  backup_max_age_hours=24, allow_downgrade=False)
    assert len(r.blocking) == 2 and r.level == "high"
    ok = rp.assess({"a": _facts(current_version="3.0.0")}, version="2.0.0", pending_up=[],
                   down_steps={}, tarball_bytes=1, backup_max_age_hours=24,
                   allow_downgrade=True)
    assert not ok.blocking and ok.level == "high"


def _target(age="normal", checksum="normal", integrity="normal", newest=True):
    items = [{"check": "age", "status": age, "explanation": "30 h"},
             {"check": "size", "status": "warning", "explanation": "shrank"},
             {"check": "checksum", "status": checksum, "explanation": "sha256 differs"},
             {"check": "integrity", "status": integrity, "explanation": "no footer"}]
    if not newest:
        items = [{"check": "exists", "status": "critical", "explanation": "no backup in /b"}]
    return {"newest": {"file": "app-20261128T000000Z.dump"} if newest else None,
            "items": items}


@pytest.mark.parametrize("target,usable,word", [
    (_target(), True, "fresh and intact"),
    (_target(age="critical"), False, "too old"),
    (_target(checksum="critical"), False, "checksum"),
    (_target(integrity="critical"), False, "truncated"),
    (_target(newest=False), False, "no backup in /b"),
    (None, False, "no backup found"),
])
def test_backup_verdict(target, usable, word):
    ok, why = rp.backup_verdict(target)
    assert ok is usable and word in why


@pytest.mark.parametrize("entry,path,expect", [
    ({"engine": "postgresql", "database": "his app", "host": "db1", "port": 5433,
      "user": "ops", "password": "never-shown"}, "/b/x.dump",
     "pg_restore --clean --if-exists --single-transaction --exit-on-error --no-owner "
     "-h db1 -p 5433 -U ops -d 'his app' /b/x.dump"),
    ({"engine": "mariadb", "database": "app"}, "/b/x.sql",
     "mariadb -h 127.0.0.1 -P 3306 -u root app < /b/x.sql"),
    ({"engine": "mariadb", "database": "app"}, "/b/x.sql.zst",
     "bash -o pipefail -c 'zstd -dc /b/x.sql.zst | mariadb -h 127.0.0.1 -P 3306 -u root "
     "app'"),
])
def test_restore_command(entry, path, expect):
    assert rp.restore_command(entry, path) == expect
    assert "never-shown" not in rp.restore_command(entry, path)


def _db(state, **kw):
    d = {"name": "his_pg", "host": "db1", "state": state, "file": "f.dump",
         "age_hours": 2.0, "reason": "no backup found"}
    d.update(kw)
    return d


@pytest.mark.parametrize("state,level,code,blocks", [
    ("fresh", "low", "database_backup_fresh", False),
    ("taken", "low", "database_backup_taken", False),
    ("stale", "medium", "database_backup_stale", False),
    ("failed", "high", "database_backup_failed", True),
])
def test_database_backup_risk(state, level, code, blocks):
    r = rp.assess({"h": _facts()}, version="1.1.0", pending_up=[], down_steps={},
                  tarball_bytes=1000, backup_max_age_hours=24, allow_downgrade=False,
                  database_backups=[_db(state)])
    assert r.level == level and code in {x["code"] for x in r.reasons}
    assert bool(r.blocking) is blocks


def test_plan_names_the_database_backup_and_its_restore_command():
    cfg = {"app_root": "/srv/a", "backup_database": "his_pg"}
    dbs = [_db("taken", path="/b/f.dump", sha256="ab" * 32, engine="postgresql",
               restore_command="pg_restore … /b/f.dump"),
           _db("fresh", name="other", restore_command="x")]
    plan = rp.host_plan("h", {"current": "1.0.0-20261128T000000Z", "current_version": "1.0.0"},
                        component="a", new_release="2.0.0-20261128T010000Z", cfg=cfg,
                        pending_up=[], database_backups=dbs)
    assert [d["name"] for d in plan["database_backups"]] == ["his_pg"]
    assert plan["database_backups"][0]["sha256"] == "ab" * 32
    assert plan["steps"][-1].startswith("# manual") and "pg_restore … /b/f.dump" in \
        plan["steps"][-1]


def test_modules_changed():
    got = rp.modules_changed({"app.py": "1", "migrations/a.sql": "x", "gone.txt": "g"},
                             {"app.py": "2", "migrations/a.sql": "x", "migrations/b.sql": "y"})
    assert got["modules"] == ["app.py", "gone.txt", "migrations/"]
    assert (got["added"], got["changed"], got["removed"]) == (["migrations/b.sql"],
                                                              ["app.py"], ["gone.txt"])


names = st.lists(st.builds(lambda v, d: f"{v}-2026{d:04d}T000000Z",
                           st.sampled_from(["1.0", "2.0", "3.1"]), st.integers(101, 1231)),
                 unique=True, max_size=12)


@given(names, st.integers(2, 6), st.data())
def test_cleanup_never_deletes_protected_and_keeps_newest(ns, keep, data):
    protected = data.draw(st.lists(st.sampled_from(ns), max_size=2)) if ns else []
    delete, kept = M.choose_cleanup(ns, keep, protected)
    assert not set(delete) & set(protected)
    assert set(delete) | set(kept) == set(ns) and not set(delete) & set(kept)
    assert len(kept) >= min(keep, len(ns))
    if delete:  # everything deleted is older than every unprotected release kept
        # Two releases stamped in the same second are ordered by name, as by_stamp does.
        def key(n):
            return (M.parse_name(n)[1], n)
        newest_deleted = max(key(n) for n in delete)
        assert all(key(k) > newest_deleted for k in kept if k not in protected)


def test_cleanup_refuses_keep_below_two():
    with pytest.raises(M.ReleaseError):
        M.choose_cleanup(["1.0-20260101T000000Z"], 1, [])


def test_switch_is_atomic_under_concurrent_readers(tmp_path):
    app = tmp_path / "app"
    for n in ("1.0-20260101T000000Z", "2.0-20260102T000000Z"):
        (app / "releases" / n).mkdir(parents=True)
    M.switch_to(str(app), "1.0-20260101T000000Z")
    bad = []
    stop = threading.Event()

    def read():
        while not stop.is_set():
            if not os.path.isdir(app / "current"):
                bad.append(1)
    t = threading.Thread(target=read)
    t.start()
    for i in range(300):
        M.switch_to(str(app), ("1.0-20260101T000000Z", "2.0-20260102T000000Z")[i % 2])
    stop.set()
    t.join()
    assert not bad
    assert os.readlink(app / "current") == "releases/2.0-20260102T000000Z"
    with pytest.raises(M.ReleaseError):
        M.switch_to(str(app), "9.9-20990101T000000Z")
    assert os.readlink(app / "current") == "releases/2.0-20260102T000000Z"


def test_unpack_refuses_tar_slip(tmp_path):
    import io
    import tarfile

    tb = tmp_path / "evil.tar.gz"
    with tarfile.open(tb, "w:gz") as tar:
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(M.ReleaseError):
        M.unpack({"app_root": str(tmp_path / "app"), "name": "1.0-20260101T000000Z",
                  "tarball": str(tb)}, False)
    assert not (tmp_path / "app" / "releases" / "1.0-20260101T000000Z").exists()


def test_component_settings_errors_name_file_and_line(tmp_path):
    from mhops import release_hosts as rh
    from mhops.errors import MhopsError
    from mhops.inventory import select

    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    web1:\n      ansible_connection: local\n"
                   "      mhops_release_components:\n        sample:\n"
                   "          app_root: relative/path\n          port: 8000\n"
                   "          colour: blue\n")
    with pytest.raises(MhopsError) as err:
        rh.component_hosts(select([str(inv)]), "sample")
    text = str(err.value)
    assert str(inv) in text and "health_url is missing" in text
    assert "unknown keys colour" in text and "app_root must be an absolute path" in text
    with pytest.raises(MhopsError, match="no selected host runs component 'other'"):
        rh.component_hosts(select([str(inv)]), "other")
