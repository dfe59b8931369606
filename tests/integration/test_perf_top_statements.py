"""`invoke perf` top statements, live: a scratch PostgreSQL with pg_stat_statements
preloaded and a scratch MariaDB with performance_schema ON (the shared servers have
neither and are never restarted), a few known slow statements carrying a fake ID-card
number and a planted secret as literals, and the perf record's top statements.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import psycopg2
import pymysql
import pytest
import yaml
from conftest import FAKE_ID

from mhops import perf, scratch

DB = "mhr_perf"
SECRET = "Mhr-Perf-S3cret"
SLOW_PG = (f"SELECT pg_sleep(0.15), count(*) FROM mhr_patients WHERE id_card = '{FAKE_ID}' "
           f"AND note <> 'password={SECRET}'")
SLOWER_PG = "SELECT pg_sleep(0.3), count(*) FROM mhr_patients WHERE name = '王某某'"
SLOW_MY = (f"SELECT SLEEP(0.15), COUNT(*) FROM mhr_patients WHERE id_card = '{FAKE_ID}' "
           f"AND note <> 'password={SECRET}'")
SLOWER_MY = "SELECT SLEEP(0.3), COUNT(*) FROM mhr_patients WHERE name = '王某某'"
TABLE = ("CREATE TABLE mhr_patients (id int PRIMARY KEY, name varchar(40), "
         "id_card varchar(18), note varchar(80))")
ROWS = f"INSERT INTO mhr_patients VALUES (1, '王某某', '{FAKE_ID}', 'x'), (2, '李某', '1', 'y')"


@pytest.fixture(scope="module")
def parent():
    # The server accounts (postgres, mysql) must be able to enter the scratch folder.
    folder = Path(tempfile.mkdtemp(prefix="mhr_scratch_"))
    os.chmod(folder, 0o711)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pg(parent):
    if not (scratch.PG_BIN.parent / "lib" / "pg_stat_statements.so").exists():
        pytest.fail("pg_stat_statements.so is missing: apt-get install postgresql-contrib")
    scratch.require_tools("postgresql")
    inst = scratch.Instance("postgresql", parent=parent,
                            extra_args=("-c", "shared_preload_libraries=pg_stat_statements",
                                        "-c", "pg_stat_statements.track=top"))
    with inst:
        inst.create()
        inst.init()
        inst.start()
        inst.create_database(DB)
        conn = psycopg2.connect(host=str(inst.socket_path), port=inst.port, user="postgres",
                                dbname=DB)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION pg_stat_statements")
            cur.execute(TABLE)
            cur.execute(ROWS)
            cur.execute("SELECT pg_stat_statements_reset()")
            for _ in range(4):
                cur.execute(SLOW_PG)
            for _ in range(3):
                cur.execute(SLOWER_PG)
        conn.close()
        yield inst


@pytest.fixture(scope="module")
def my(parent):
    scratch.require_tools("mariadb")
    inst = scratch.Instance("mariadb", parent=parent, extra_args=("--performance-schema=ON",))
    with inst:
        inst.create()
        inst.init()
        inst.start()
        inst.create_database(DB)
        # root logs in by socket only; the perf role connects over TCP as its own user.
        inst.client(["CREATE USER 'mhr_perf'@'127.0.0.1';",
                     "GRANT ALL PRIVILEGES ON *.* TO 'mhr_perf'@'127.0.0.1';"])
        conn = pymysql.connect(unix_socket=str(inst.socket_path), user="root", database=DB,
                               autocommit=True)
        with conn.cursor() as cur:
            cur.execute(TABLE)
            cur.execute(ROWS)
            for _ in range(4):
                cur.execute(SLOW_MY)
            for _ in range(3):
                cur.execute(SLOWER_MY)
        conn.close()
        yield inst


def _inventory(tmp_path: Path, pg, my) -> Path:
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"mhrdb": {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "mhops_databases": [
            # A socket folder as host: the scratch cluster accepts no TCP logins.
            {"name": "his_pg", "engine": "postgresql", "database": DB, "production": False,
             "host": str(pg.socket_path), "port": pg.port, "user": "postgres"},
            {"name": "his_my", "engine": "mariadb", "database": DB, "production": False,
             "host": "127.0.0.1", "port": my.port, "user": "mhr_perf", "password": ""}]}}}}))
    return inv


def test_top_statements_from_pg_stat_statements_and_performance_schema(tmp_path, pg, my):
    (tmp_path / "records").mkdir()
    lines: list[str] = []
    out = perf.run(perf.Options(records_dir=tmp_path / "out",
                                inspections_dir=tmp_path / "records",
                                inventory=[str(_inventory(tmp_path, pg, my))], period="2026Q4",
                                operator="测试员", echo=lines.append))
    r = out.record
    dbs = {d["name"]: d for d in r["databases"]}
    assert not [g for g in r["gaps"] if "could not be read" in g], r["gaps"]

    pgd = dbs["his_pg"]
    assert pgd["error"] is None and pgd["statements_source"] == "pg_stat_statements"
    assert pgd["pg_stat_statements"] == {"available": True, "preloaded": True, "created": True}
    top = pgd["top_statements"]
    # By total time: 3 x 0.3 s, then 4 x 0.15 s; the analysis' own queries are quick.
    assert "pg_sleep" in top[0]["query"] and "name =" in top[0]["query"]
    assert top[0]["calls"] == 3 and top[0]["total_ms"] >= 850
    assert "pg_sleep" in top[1]["query"] and "id_card =" in top[1]["query"]
    assert top[1]["calls"] == 4 and top[1]["total_ms"] >= 550
    assert "$" in top[1]["query"]       # constants were normalised away
    assert not any(f["kind"] == "pgss_missing" for f in r["findings"]
                   if f["scope"] == "mhrdb/his_pg")

    myd = dbs["his_my"]
    assert myd["error"] is None and myd["statements_source"] == "performance_schema"
    assert myd["performance_schema"] is True
    slow = [s for s in myd["top_statements"] if "SLEEP" in s["query"].upper()]
    assert [s["calls"] for s in slow] == [3, 4], myd["top_statements"]
    assert slow[0]["total_ms"] >= 850 and slow[1]["total_ms"] >= 550
    assert "?" in slow[1]["query"] and "id_card" in slow[1]["query"]
    assert not any(f["kind"] == "ps_off" for f in r["findings"] if f["scope"] == "mhrdb/his_my")

    # No literal of the statements reached the record or the screen.
    md = (out.record_dir / "record.md").read_text()
    assert "pg_sleep" in md and "SLEEP" in md.upper()
    for f in out.record_dir.iterdir():
        text = f.read_text()
        for leak in (FAKE_ID, SECRET, "王某某"):
            assert leak not in text, f"{leak!r} leaked into {f}"
    assert not any(FAKE_ID in ln or SECRET in ln or "王某某" in ln for ln in lines)
