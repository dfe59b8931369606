"""The upgrade's platform database backup, on a real PostgreSQL and two loopback hosts.

Component `sample` runs on mhw1 and names `backup_database: mhw_app_pg`, an
`mhops_databases` entry of the database host mhw2. In the order an operator meets it:
`--check` finds no backup and takes none; the first upgrade takes one with
`backup.run` before the plan that names it (file, sha256, restore command) is written;
the next upgrade reuses the fresh backup; the plan's restore command really restores
the database; a backup older than the limit is replaced; a backup that cannot be
taken refuses the upgrade with no host changed; an unknown name is an error with the
inventory file and line.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import no_leak

from demo.sample_app import build, fleet
from mhops import dbseed, releases
from mhops.errors import MhopsError

pytestmark = pytest.mark.ssh
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""}
DB = f"mhw_rel_{os.getpid()}"
NAME = "mhw_app_pg"
SECRET = "Mhw-Planted-S3cret"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    from mhops.lab import SshLab

    root = tmp_path_factory.mktemp("relbk")
    art = root / "artifacts"
    build.build("1.0.0", art)
    for v in ("1.1.0", "1.2.0"):
        build.build(v, art, like="1.0.0")
    dbseed.seed("postgresql", database=DB, size=1, drop=True, **PG)
    comps: dict = {}
    try:
        with SshLab(root / "lab", 2, first_octet=66, prefix="mhw") as lab:
            app = lab.hosts[0]
            comps[app.name] = fleet.component(root / "hosts" / app.name / "srv" / "sample",
                                              app.address, fleet.free_port(app.address))
            yield Env(root, lab, comps, art)
    finally:
        fleet.stop_services(comps)
        dbseed.drop_database("postgresql", database=DB, **PG)


class Env:
    def __init__(self, root: Path, lab, comps: dict, art: Path):
        self.root, self.lab, self.comps, self.art = root, lab, comps, art
        self.records, self.state = root / "records", root / "state"
        self.app, self.db = lab.hosts[0].name, lab.hosts[1].name
        self.backups = root / "on-db-host"
        self.inv = self.inventory(root / "hosts.yml")
        self.taken: dict = {}

    def inventory(self, path: Path, database: str = DB, name: str = NAME) -> Path:
        entry = {"name": NAME, "engine": "postgresql", **PG, "password": SECRET,
                 "database": database, "production": False, "backup_dir": str(self.backups)}
        comp = dict(self.comps[self.app], backup_database=name)
        # The community database modules need psycopg2: this environment's Python.
        return self.lab.write_inventory(path, group="api", hostvars={
            self.app: {"mhops_release_components": {"sample": comp}},
            self.db: {"ansible_python_interpreter": sys.executable,
                      "mhops_databases": [entry]}})

    def upgrade(self, version: str, inventory: Path | None = None, **kw):
        lines: list[str] = []
        out = releases.upgrade(releases.UpgradeOptions(
            inventory=[str(inventory or self.inv)], records_dir=self.records,
            state_dir=self.state, component="sample", version=version,
            artifacts_dir=self.art, verify_window_s=10, operator="测试员",
            echo=lines.append, **kw))
        out.lines = lines
        return out

    def dumps(self) -> list[Path]:
        return sorted((self.backups / NAME).glob(f"{NAME}-*.dump"))

    def current(self) -> str:
        return os.readlink(Path(self.comps[self.app]["app_root"]) / "current")


def _plan(env, outcome) -> dict:
    plan_id = outcome.record["plan"]["plan_run_id"]
    return json.loads((env.records / plan_id / "record.json").read_text())


def test_check_finds_no_backup_and_takes_none(env):
    out = env.upgrade("1.0.0", check=True)
    assert out.exit_code == 0, out.lines
    (db,) = out.record["database_backups"]
    assert (db["name"], db["host"], db["state"]) == (NAME, env.db, "stale")
    assert "no backup" in db["reason"] and db["backup_run_id"] is None
    assert "database_backup_stale" in {r["code"] for r in out.record["risk"]["reasons"]}
    assert env.dumps() == []
    assert not (Path(env.comps[env.app]["app_root"]) / "current").exists()


def test_first_upgrade_takes_the_backup_before_the_plan_names_it(env):
    out = env.upgrade("1.0.0")
    assert out.exit_code == 0, out.lines
    (dump,) = env.dumps()
    plan = _plan(env, out)
    (db,) = plan["database_backups"]
    assert db["state"] == "taken" and db["path"] == str(dump)
    assert db["sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    manifest = json.loads(dump.with_name(dump.name[:-len(".dump")] + ".manifest.json")
                          .read_text())
    assert manifest["sha256"] == db["sha256"]
    # The backup's own record exists and is referenced.
    assert (env.records / db["backup_run_id"] / "record.json").is_file()
    assert (env.records / db["check_run_id"] / "record.json").is_file()
    (host_plan,) = plan["plan"]["hosts"]
    assert host_plan["database_backups"][0]["path"] == str(dump)
    assert db["restore_command"] in host_plan["steps"][-1]
    steps = [s["step"] for s in out.record["execution"]["steps"]]
    assert steps.index("database_backup") < steps.index("risk_assessment") + 2
    assert all(steps.index("database_backup") < i for i, s in enumerate(steps)
               if s.startswith(("deploy", "verify")))
    env.taken.update(db)
    # The folder, not the run id: a run in the same second gets a "-2" suffix.
    md = (env.records / out.record["plan"]["plan_run_id"] / "record.md").read_text()
    assert "平台数据库备份" in md and db["sha256"] in md
    no_leak([env.records], SECRET)


def test_fresh_backup_is_reused(env):
    before = env.dumps()
    out = env.upgrade("1.1.0")
    assert out.exit_code == 0, out.lines
    (db,) = out.record["database_backups"]
    assert db["state"] == "fresh" and db["backup_run_id"] is None
    assert db["path"] == str(before[-1]) and env.dumps() == before
    assert "database_backup" not in [s["step"] for s in out.record["execution"]["steps"]]


def _counts() -> dict[str, int]:
    conn = dbseed.connect("postgresql", database=DB, **PG)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT relname FROM pg_stat_user_tables")
            tables = [r[0] for r in cur.fetchall()]
            out = {}
            for t in tables:
                cur.execute(f'SELECT count(*) FROM "{t}"')
                out[t] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


def test_plan_restore_command_restores_the_database(env):
    db = env.taken
    assert db, "the first upgrade took no backup"
    before = _counts()
    conn = dbseed.connect("postgresql", database=DB, **PG)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE mhw_after_backup (x int)")
            victim = "messages"  # nothing references it
            cur.execute(f'DELETE FROM "{victim}" WHERE ctid IN (SELECT ctid FROM "{victim}" '
                        "LIMIT 5)")
    finally:
        conn.close()
    assert _counts() != before
    res = subprocess.run(db["restore_command"], shell=True, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    after = _counts()
    assert after[victim] == before[victim]
    # --clean drops what the dump has; a table created later stays (it is listed).
    after.pop("mhw_after_backup", None)
    assert after == before


def test_stale_backup_is_replaced(env):
    before = env.dumps()
    out = env.upgrade("1.2.0", backup_max_age_hours=0)
    assert out.exit_code == 0, out.lines
    (db,) = out.record["database_backups"]
    assert db["state"] == "taken" and "too old" in db["reason"]
    assert len(env.dumps()) == len(before) + 1 and db["path"] == str(env.dumps()[-1])


def test_failed_backup_refuses_the_upgrade(env):
    live = env.current()
    inv = env.inventory(env.root / "missing.yml", database=f"{DB}_missing")
    out = env.upgrade("1.2.0", inventory=inv, backup_max_age_hours=0)
    assert out.exit_code == 2, out.lines
    (db,) = out.record["database_backups"]
    assert db["state"] == "failed"
    assert any("no upgrade without a backup" in b for b in out.record["risk"]["blocking"])
    assert env.current() == live
    assert "database_backup" in [s["step"] for s in out.record["execution"]["steps"]]


def test_unknown_database_name_points_at_the_inventory(env):
    inv = env.inventory(env.root / "unknown.yml", name="no_such_db")
    with pytest.raises(MhopsError) as err:
        env.upgrade("1.2.0", inventory=inv, check=True)
    assert "no_such_db" in str(err.value) and err.value.path == str(inv)
    assert err.value.line
    yaml.safe_load(inv.read_text())


def test_invoke_upgrade_check_over_the_cli_reports_the_backup(env):
    invoke = Path(sys.executable).parent / "invoke"
    res = subprocess.run(
        [str(invoke), "-r", str(Path(__file__).resolve().parents[2]), "upgrade",
         "--component", "sample", "--version", "1.2.0", "--check", "--rollback-plan",
         "--lang", "en"],
        env=dict(os.environ, INVOKE_MHOPS_RECORDS_DIR=str(env.records),
                 INVOKE_MHOPS_STATE_DIR=str(env.state),
                 INVOKE_RELEASE_ARTIFACTS_DIR=str(env.art),
                 INVOKE_RELEASE_INVENTORY=str(env.inv)),
        capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert f"database backup {NAME}" in res.stdout and "pg_restore" in res.stdout
    run = next(Path(x.strip()) for x in reversed(res.stdout.splitlines())
               if (Path(x.strip()) / "record.json").is_file())
    rec = json.loads((run / "record.json").read_text())
    assert rec["database_backups"][0]["state"] == "fresh"
    assert "Platform database backups" in (run / "record.html").read_text()
