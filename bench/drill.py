"""Restore drill benchmark: `drill restore` against the bare pg_restore floor.

Generates a PostgreSQL database of at least --min-mb (default 200) MB in `mhd_bench`
with generate_series, backs it up in the shared format (pg_dump -Fc + manifest), then
alternately times

  floor: initdb + start + `pg_restore -j2` into a fresh cluster (same server settings as
         the drill's scratch instance, no verification) + stop and remove, and
  drill: the whole `drill restore` run (the same steps plus sha256 against the manifest,
         Testinfra, row counts of every table, canary, sample checksums against the
         source, smoke query, teardown and the record),

and prints the medians and `ratio drill/pg_restore: <x>` (target <= 1.3). With
`--remote-octet N` the same backup is also drilled as held by a loopback SSH host
127.0.0.N, so the drill fetches it over SSH (playbooks/drill.yml) before restoring; that
ratio is printed as well. The database and every temp folder are removed afterwards.

    .venv/bin/python bench/drill.py --repeat 2 [--database mhq_bench] [--remote-octet 61]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

# Replace (not prepend to) the script's folder: bench/inspect.py would shadow the stdlib.
sys.path[0] = str(Path(__file__).resolve().parents[1])

from mhops import drill, scratch  # noqa: I001

DB = "mhd_bench"
TABLES = ("departments", "doctors", "patients", "appointments", "mhops_canary")


def psql(sql: str, db: str | None = None) -> str:
    return subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h",
                           "127.0.0.1", "-U", "postgres", "-d", db or DB, "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()


def generate(scale: float) -> int:
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", "postgres")
    psql(f"CREATE DATABASE {DB}", "postgres")
    patients, appts = int(1_000_000 * scale), int(2_000_000 * scale)
    for sql in (
        "CREATE TABLE departments (id integer PRIMARY KEY, code varchar(8) UNIQUE NOT NULL, "
        "name varchar(32) NOT NULL)",
        "CREATE TABLE doctors (id integer PRIMARY KEY, department_id integer NOT NULL "
        "REFERENCES departments(id), title varchar(16) NOT NULL)",
        "CREATE TABLE patients (id bigint PRIMARY KEY, name varchar(32) NOT NULL, "
        "id_card char(18) NOT NULL, mobile char(11) NOT NULL, created_at timestamp NOT NULL)",
        "CREATE TABLE appointments (id bigint PRIMARY KEY, patient_id bigint NOT NULL "
        "REFERENCES patients(id), doctor_id integer NOT NULL REFERENCES doctors(id), "
        "department_id integer NOT NULL REFERENCES departments(id), visit_date date NOT NULL, "
        "status varchar(16) NOT NULL, note text)",
        "CREATE TABLE mhops_canary (token text PRIMARY KEY, written_at timestamptz NOT NULL)",
        "INSERT INTO departments SELECT i, 'D' || lpad(i::text, 3, '0'), '科室' || i "
        "FROM generate_series(1, 20) i",
        "INSERT INTO doctors SELECT i, (i % 20) + 1, '主治医师' FROM generate_series(1, 100) i",
        f"INSERT INTO patients SELECT i, '测试' || i, lpad(i::text, 18, '0'), "
        f"'139' || lpad((i % 100000000)::text, 8, '0'), now() - (i || ' s')::interval "
        f"FROM generate_series(1, {patients}) i",
        f"INSERT INTO appointments SELECT i, (i % {patients}) + 1, (i % 100) + 1, "
        f"(i % 100 % 20) + 1, current_date - (i % 30), 'booked', md5(i::text) "
        f"FROM generate_series(1, {appts}) i",
        "CREATE INDEX appointments_department_date_idx ON appointments "
        "(department_id, visit_date)",
        "CREATE INDEX appointments_patient_idx ON appointments (patient_id)",
        "VACUUM ANALYZE",
    ):
        psql(sql)
    return int(psql(f"SELECT pg_database_size('{DB}')"))


def backup(folder: Path) -> Path:
    now = datetime.now(UTC).replace(microsecond=0)
    token = uuid.uuid4().hex
    psql(f"INSERT INTO mhops_canary VALUES ('{token}', now())")
    counts = {f"public.{t}": int(psql(f"SELECT count(*) FROM {t}")) for t in TABLES}
    stem = f"{DB}-{now:%Y%m%dT%H%M%SZ}"
    final = folder / DB / f"{stem}.dump"
    final.parent.mkdir(parents=True)
    tmp = final.with_name(f".{final.name}.partial")
    subprocess.run(["pg_dump", "-Fc", "-h", "127.0.0.1", "-U", "postgres", "-f", str(tmp), DB],
                   check=True)
    os.rename(tmp, final)
    h = hashlib.sha256()
    with open(final, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    at = now.isoformat().replace("+00:00", "Z")
    (final.parent / f"{stem}.manifest.json").write_text(json.dumps({
        "schema_version": 1, "name": DB, "engine": "postgresql", "database": DB,
        "server_version": psql("SHOW server_version"), "file": final.name, "format": "custom",
        "sha256": h.hexdigest(), "size": final.stat().st_size, "started_at": at,
        "finished_at": at, "tables": counts,
        "canary": {"table": "mhops_canary", "token": token, "written_at": at},
        "tool": "pg_dump", "host": "localhost"}))
    return final


def floor(dump: Path, parent: Path) -> float:
    t0 = time.monotonic()
    inst = scratch.Instance("postgresql", parent=parent)
    try:
        inst.create()
        inst.init()
        inst.start()
        inst.create_database(DB)
        inst.restore(dump, "custom", DB, jobs=2)
    finally:
        inst.stop()
    return time.monotonic() - t0


def run_drill(dump: Path, parent: Path, records: Path, inventory: Path,
              limit: str | None = None, stage_local: str = "direct") -> tuple[float, float]:
    t0 = time.monotonic()
    out = drill.run(drill.Options(records_dir=records, inventory=[str(inventory)], name=DB,
                                  limit=limit, backup=str(dump), scratch_dir=str(parent),
                                  smoke_day="today", stage_local=stage_local,
                                  echo=lambda line: None))
    took = time.monotonic() - t0
    if out.exit_code != 0:
        raise SystemExit(f"drill did not pass: {out.record['reason']}")
    return took, out.record["rto"]["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--min-mb", type=int, default=200)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--database", default="mhd_bench", help="name of the generated database")
    ap.add_argument("--remote-octet", type=int, default=0,
                    help="also drill the backup as held by a loopback SSH host 127.0.0.N "
                         "(fetched over SSH) and print that ratio too")
    ap.add_argument("--stage-local", choices=["direct", "ansible"], default="direct",
                    help="how the drill stages a backup on this machine (drill.stage_local)")
    args = ap.parse_args()
    global DB
    DB = args.database
    stack = contextlib.ExitStack()
    work = Path(tempfile.mkdtemp(prefix="mhd_bench_"))
    os.chmod(work, 0o711)  # the scratch servers run as postgres
    try:
        t = time.monotonic()
        size = generate(args.scale)
        print(f"generated {DB}: {size / 2**20:.0f} MB in {time.monotonic() - t:.0f} s")
        if size < args.min_mb * 2**20:
            raise SystemExit(f"database is only {size / 2**20:.0f} MB: raise --scale")
        dump = backup(work / "backups")
        print(f"backup: {dump.stat().st_size / 2**20:.0f} MB")
        dbs = [{"name": DB, "engine": "postgresql", "host": "127.0.0.1", "port": 5432,
                "user": "postgres", "password": "", "database": DB, "production": False,
                "backup_dir": str(work / "backups")}]
        inventory = work / "hosts.yml"
        inventory.write_text(json.dumps({"all": {"hosts": {"localhost": {
            "ansible_connection": "local", "mhops_databases": dbs}}}}))
        remote = None
        if args.remote_octet:
            from mhops.lab import SshLab

            lab = stack.enter_context(SshLab(work / "lab", 1, first_octet=args.remote_octet,
                                             prefix="benchdb"))
            remote = work / "remote.yml"
            lab.write_inventory(remote, hostvars={"benchdb1": {
                "ansible_python_interpreter": sys.executable, "mhops_databases": dbs}})
        floors, drills, rtos, fetched = [], [], [], []
        for i in range(args.repeat):
            floors.append(floor(dump, work))
            d, rto = run_drill(dump, work, work / "records", inventory,
                               stage_local=args.stage_local)
            drills.append(d)
            rtos.append(rto)
            line = (f"round {i + 1}: pg_restore floor {floors[-1]:.1f} s, drill {d:.1f} s "
                    f"(RTO {rto:.1f} s)")
            if remote:
                fetched.append(run_drill(dump, work, work / "records", remote, "benchdb1")[0])
                line += f", drill of the backup fetched over SSH {fetched[-1]:.1f} s"
            print(line)
        f, d = statistics.median(floors), statistics.median(drills)
        print(f"median floor {f:.1f} s, median drill {d:.1f} s, "
              f"median RTO {statistics.median(rtos):.1f} s")
        print(f"ratio drill/pg_restore: {d / f:.2f}")
        if fetched:
            print(f"ratio drill (backup fetched over SSH)/pg_restore: "
                  f"{statistics.median(fetched) / f:.2f}")
    finally:
        stack.close()
        shutil.rmtree(work, ignore_errors=True)
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", "postgres")


if __name__ == "__main__":
    main()
