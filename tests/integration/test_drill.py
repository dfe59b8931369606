"""`drill restore` on the real PostgreSQL and MariaDB servers of this machine.

Backups are made here in the shared format (pg_dump -Fc / mariadb-dump plain SQL plus
the manifest JSON), so these tests do not depend on the backup producer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from mhops import drill
from mhops.errors import MhopsError

REPO = Path(__file__).resolve().parents[2]
# Per process: the full suite may run in several checkouts at once on the same servers.
PG_DB, MY_DB = f"mhd_drill_pg_{os.getpid()}", f"mhd_drill_my_{os.getpid()}"
TABLES = ("departments", "doctors", "patients", "appointments", "mhops_canary")

_DDL = [
    "CREATE TABLE departments (id integer PRIMARY KEY, code varchar(8) NOT NULL UNIQUE, "
    "name varchar(32) NOT NULL)",
    "CREATE TABLE doctors (id integer PRIMARY KEY, department_id integer NOT NULL "
    "REFERENCES departments(id), title varchar(16) NOT NULL)",
    "CREATE TABLE patients (id bigint PRIMARY KEY, name varchar(32) NOT NULL, "
    "mobile char(11) NOT NULL)",
    "CREATE TABLE appointments (id bigint PRIMARY KEY, patient_id bigint NOT NULL "
    "REFERENCES patients(id), doctor_id integer NOT NULL REFERENCES doctors(id), "
    "department_id integer NOT NULL REFERENCES departments(id), visit_date date NOT NULL, "
    "status varchar(16) NOT NULL)",
    "CREATE INDEX appointments_department_date_idx ON appointments (department_id, visit_date)",
]
_PG_CANARY = "CREATE TABLE mhops_canary (token text PRIMARY KEY, written_at timestamptz NOT NULL)"
_MY_CANARY = "CREATE TABLE mhops_canary (token char(32) PRIMARY KEY, written_at datetime NOT NULL)"


def _pg(sql: str, db: str = PG_DB) -> str:
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                           "127.0.0.1", "-U", "postgres", "-d", db, "-c", sql],
                          check=True, capture_output=True, text=True).stdout


def _my(sql: str, db: str | None = MY_DB) -> str:
    argv = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", "3306", "-u", "root", "-N",
            "-B"] + ([f"--database={db}"] if db else []) + ["-e", sql]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture(scope="module")
def pg_source():
    _pg(f"DROP DATABASE IF EXISTS {PG_DB}", "postgres")
    _pg(f"CREATE DATABASE {PG_DB}", "postgres")
    for s in [*_DDL, _PG_CANARY]:
        _pg(s)
    _pg("INSERT INTO departments SELECT i, 'D' || lpad(i::text, 3, '0'), '科室' || i "
        "FROM generate_series(1, 20) i")
    _pg("INSERT INTO doctors SELECT i, (i % 20) + 1, '主治医师' FROM generate_series(1, 100) i")
    _pg("INSERT INTO patients SELECT i, '测试' || i, '139' || lpad(i::text, 8, '0') "
        "FROM generate_series(1, 2000) i")
    _pg("INSERT INTO appointments SELECT i, (i % 2000) + 1, (i % 100) + 1, (i % 100 % 20) + 1, "
        "current_date - (i % 7), 'booked' FROM generate_series(1, 4000) i")
    yield PG_DB
    _pg(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)", "postgres")


@pytest.fixture(scope="module")
def my_source():
    _my(f"DROP DATABASE IF EXISTS {MY_DB}", None)
    _my(f"CREATE DATABASE {MY_DB} CHARACTER SET utf8mb4", None)
    for s in [*_DDL, _MY_CANARY]:
        _my(s + (" ENGINE=InnoDB" if s.startswith("CREATE TABLE") else ""))
    _my("INSERT INTO departments SELECT seq, CONCAT('D', LPAD(seq, 3, '0')), "
        "CONCAT('科室', seq) FROM seq_1_to_20")
    _my("INSERT INTO doctors SELECT seq, (seq % 20) + 1, '主治医师' FROM seq_1_to_100")
    _my("INSERT INTO patients SELECT seq, CONCAT('测试', seq), CONCAT('139', LPAD(seq, 8, '0')) "
        "FROM seq_1_to_2000")
    _my("INSERT INTO appointments SELECT seq, (seq % 2000) + 1, (seq % 100) + 1, "
        "(seq % 100 % 20) + 1, CURDATE() - INTERVAL (seq % 7) DAY, 'booked' FROM seq_1_to_4000")
    yield MY_DB
    _my(f"DROP DATABASE IF EXISTS {MY_DB}", None)


def make_backup(engine: str, db: str, folder: Path, name: str, *, stamp: str | None = None,
                exclude: str | None = None, manifest: bool = True) -> Path:
    """One backup in the shared format: canary, counts, dump to a temp name, rename, manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    stamp = stamp or f"{now:%Y%m%dT%H%M%SZ}"
    token = uuid.uuid4().hex
    started = now.isoformat().replace("+00:00", "Z")
    ext = "dump" if engine == "postgresql" else "sql"
    final = folder / f"{name}-{stamp}.{ext}"
    temp = folder / f".{final.name}.partial"
    if engine == "postgresql":
        _pg(f"INSERT INTO mhops_canary VALUES ('{token}', now())", db)
        counts = {f"public.{t}": int(_pg(f"SELECT count(*) FROM {t}", db)) for t in TABLES}
        argv = ["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", "-f", str(temp), db]
        if exclude:
            argv[1:1] = ["-T", exclude]
        tool = "pg_dump 15"
    else:
        _my(f"INSERT INTO mhops_canary VALUES ('{token}', UTC_TIMESTAMP())", db)
        counts = {t: int(_my(f"SELECT COUNT(*) FROM {t}", db)) for t in TABLES}
        argv = ["mariadb-dump", "--no-defaults", "-h", "127.0.0.1", "-u", "root",
                "--single-transaction", f"--result-file={temp}", db]
        if exclude:
            argv.insert(-1, f"--ignore-table={db}.{exclude}")
        tool = "mariadb-dump"
    subprocess.run(argv, check=True, capture_output=True)
    os.rename(temp, final)
    data = final.read_bytes()
    if manifest:
        (folder / f"{name}-{stamp}.manifest.json").write_text(json.dumps({
            "schema_version": 1, "name": name, "engine": engine, "database": db,
            "server_version": "test", "file": final.name,
            "format": "custom" if engine == "postgresql" else "sql",
            "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
            "started_at": started, "finished_at": started, "tables": counts,
            "canary": {"table": "mhops_canary", "token": token, "written_at": started},
            "tool": tool, "host": "localhost"}, indent=2))
    return final


@pytest.fixture
def world(tmp_path):
    """An inventory with both test databases and a production entry; folders for the run."""
    backups = tmp_path / "backups"
    dbs = [
        {"name": "mhd_pg", "engine": "postgresql", "host": "127.0.0.1", "port": 5432,
         "user": "postgres", "password": "", "database": PG_DB, "production": False,
         "backup_dir": str(backups)},
        {"name": "mhd_my", "engine": "mariadb", "host": "127.0.0.1", "port": 3306,
         "user": "root", "password": "", "database": MY_DB, "production": False,
         "backup_dir": str(backups)},
        {"name": "his_pg", "engine": "postgresql", "host": "localhost", "port": 5432,
         "user": "postgres", "password": "", "database": "postgres", "production": True},
    ]
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "mhops_databases": dbs}}}}))
    # The scratch servers run as postgres/mysql: pytest's 0700 tmp tree is closed to them.
    scratch_dir = Path(tempfile.mkdtemp(prefix="mhd_scratch_"))
    os.chmod(scratch_dir, 0o711)

    class W:
        root, inventory, records = tmp_path, inv, tmp_path / "records"
        scratch = scratch_dir
        folder = backups

        def opts(self, **kw):
            base = {"records_dir": self.records, "inventory": [str(inv)],
                    "scratch_dir": str(scratch_dir), "operator": "演练员",
                    "smoke_day": "today", "echo": lambda line: None}
            base.update(kw)
            return drill.Options(**base)
    yield W()
    shutil.rmtree(scratch_dir, ignore_errors=True)


def _leftovers(scratch_dir: Path) -> list[Path]:
    return list(scratch_dir.glob("mhops-drill-*"))


def _in_use_lines(folder: Path) -> list[str]:
    f = folder / ".in-use"
    return f.read_text().split() if f.exists() else []


def test_pg_latest_passes_and_is_recorded(world, pg_source):
    folder = world.folder / "mhd_pg"
    older = make_backup("postgresql", pg_source, folder, "mhd_pg", stamp="20240101T000000Z")
    good = make_backup("postgresql", pg_source, folder, "mhd_pg")
    # Newer by mtime but older by name; and a newer one still being written (no manifest).
    os.utime(older, (time.time() + 3600, time.time() + 3600))
    make_backup("postgresql", pg_source, folder, "mhd_pg", stamp="29990101T000000Z",
                manifest=False)
    out = drill.run(world.opts(engine="postgresql", name="mhd_pg"))
    r = out.record
    assert out.exit_code == 0, r["reason"]
    assert r["outcome"] == "passed" and r["backup"]["file"] == good.name
    assert {t["table"] for t in r["verification"]["tables"]} == {f"public.{t}" for t in TABLES}
    assert all(t["status"] == "ok" for t in r["verification"]["tables"])
    assert r["verification"]["canary"]["present"] is True
    sums = r["verification"]["checksums"]
    assert [s["table"] for s in sums] == ["public.departments", "public.doctors"]
    assert all(s["reference"] == "source" and s["status"] == "ok" for s in sums)
    assert r["verification"]["smoke"]["rows"] > 0
    assert r["verification"]["instance"]["tcp_listening"] is True
    assert r["rto"]["status"] == "ok" and 0 < r["rto"]["seconds"] < 60
    assert r["rpo"]["status"] == "ok"
    assert r["teardown"] == {"instance_stopped": True, "folder_removed": True,
                             "folder": r["teardown"]["folder"]}
    assert not _leftovers(world.scratch) and not _in_use_lines(folder)
    md = (out.record_dir / "record.md").read_text()
    assert "灾难恢复演练记录" in md and "演练员" in md and "通过" in md
    assert (out.record_dir / "record.html").read_text().count("<table>") >= 4


def test_mariadb_passes_in_english(world, my_source):
    make_backup("mariadb", my_source, world.folder / "mhd_my", "mhd_my")
    out = drill.run(world.opts(engine="mariadb", lang="en"))
    r = out.record
    assert out.exit_code == 0, r["reason"]
    assert r["verification"]["canary"]["present"] is True
    assert all(s["status"] == "ok" for s in r["verification"]["checksums"])
    assert "Disaster recovery drill record" in (out.record_dir / "record.md").read_text()
    assert not _leftovers(world.scratch)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def test_flipped_byte_fails_without_fallback(world, pg_source):
    folder = world.folder / "mhd_pg"
    make_backup("postgresql", pg_source, folder, "mhd_pg", stamp="20240101T000000Z")
    bad = make_backup("postgresql", pg_source, folder, "mhd_pg")
    _flip(bad, bad.stat().st_size // 2)
    out = drill.run(world.opts(engine="postgresql", name="mhd_pg"))
    r = out.record
    assert out.exit_code == 2 and r["outcome"] == "failed"
    assert r["backup"]["file"] == bad.name and "sha256" in r["reason"]
    assert next(s for s in r["steps"] if s["step"] == "restore")["status"] == "skipped"
    assert not _leftovers(world.scratch) and not _in_use_lines(folder)


def test_truncated_mariadb_dump_fails(world, my_source):
    bad = make_backup("mariadb", my_source, world.folder / "mhd_my", "mhd_my")
    with open(bad, "r+b") as fh:
        fh.truncate(bad.stat().st_size * 2 // 3)
    out = drill.run(world.opts(backup=str(bad)))
    assert out.exit_code == 2
    assert "truncated" in out.record["reason"]
    assert "失败" in (out.record_dir / "record.md").read_text()


def test_table_missing_from_dump_fails(world, pg_source):
    bad = make_backup("postgresql", pg_source, world.folder / "mhd_pg", "mhd_pg",
                      exclude="public.appointments")
    # The manifest counted every table; the dump lacks one that nothing references, so
    # the restore itself succeeds and only the verification can notice.
    out = drill.run(world.opts(backup=str(bad)))
    r = out.record
    assert out.exit_code == 2
    missing = [t for t in r["verification"]["tables"] if t["status"] == "failed"]
    assert [t["table"] for t in missing] == ["public.appointments"]
    assert "public.appointments missing" in r["reason"]
    assert next(s for s in r["steps"] if s["step"] == "restore")["status"] == "ok"


def test_refuses_production_target_before_writing(world, pg_source):
    bad = make_backup("postgresql", pg_source, world.folder / "mhd_pg", "mhd_pg")
    for target in ("his_pg", "localhost:5432", "[::1]:5432"):
        with pytest.raises(MhopsError, match="refusing"):
            drill.run(world.opts(backup=str(bad), target=target))
    with pytest.raises(MhopsError, match="PGHOST/PGPORT"):
        os.environ["PGPORT"] = "5432"
        try:
            drill.run(world.opts(backup=str(bad)))
        finally:
            del os.environ["PGPORT"]
    assert not world.records.exists() and not _leftovers(world.scratch)
    assert not (bad.parent / ".in-use").exists()


def test_sigint_tears_down(world, pg_source):
    backup = make_backup("postgresql", pg_source, world.folder / "mhd_pg", "mhd_pg")
    # Keep the restore busy long enough to be interrupted mid-drill.
    code = (
        "import sys; from pathlib import Path; from mhops import drill\n"
        f"o = drill.Options(records_dir=Path({str(world.records)!r}), "
        f"scratch_dir={str(world.scratch)!r}, backup={str(backup)!r}, smoke_day='today')\n"
        "import mhops.scratch as s; real = s.Instance.restore\n"
        "def slow(self, *a, **k):\n"
        "    print('RESTORING', flush=True); import time; time.sleep(30)\n"
        "s.Instance.restore = slow\n"
        "sys.exit(drill.run(o).exit_code)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    pid = None
    for line in proc.stdout:
        if "RESTORING" in line:
            break
    dirs = _leftovers(world.scratch)
    assert len(dirs) == 1
    pid = int((dirs[0] / "data" / "postmaster.pid").read_text().split()[0])
    assert drill.scratch._alive(pid)
    assert _in_use_lines(backup.parent) == [backup.name]
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=30)
    assert rc == 2, proc.stderr.read()
    assert not _leftovers(world.scratch)
    assert not drill.scratch._alive(pid)
    assert not _in_use_lines(backup.parent)
    run = next(p for p in world.records.iterdir() if not p.name.startswith("."))
    record = json.loads((run / "record.json").read_text())
    assert record["interrupted"] is True and "SIGINT" in record["reason"]


def test_checksum_differs_from_source_fails(world, pg_source):
    backup = make_backup("postgresql", pg_source, world.folder / "mhd_pg", "mhd_pg")
    old = _pg("SELECT name FROM departments WHERE id = 1").strip()
    _pg("UPDATE departments SET name = '改名' WHERE id = 1")  # same row count, other content
    try:
        out = drill.run(world.opts(backup=str(backup)))
    finally:
        _pg(f"UPDATE departments SET name = '{old}' WHERE id = 1")
    sums = {s["table"]: s for s in out.record["verification"]["checksums"]}
    assert out.exit_code == 2
    assert sums["public.departments"]["status"] == "failed"
    assert sums["public.doctors"]["status"] == "ok"
    assert "differs from the same query on the source" in out.record["reason"]
