"""`invoke perf` against the real PostgreSQL 15 and MariaDB servers (databases mhp_*),
with a quarter of inspection records written in the real record schema.

The seeded databases get the workload a quarterly analysis must notice: repeated
sequential scans of a table without a suitable index, an index nobody uses, and a
transaction left open. pg_stat_statements is not preloaded and performance_schema is
off on the shared servers (they are never restarted here): the record must say how to
enable both.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pymysql
import pytest
import yaml

from mhops import dbseed, perf
from mhops.errors import MhopsError

DB = "mhp_perf"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""}
MY = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
# The seeded tables are small: the size floors are lowered so that they count.
THRESHOLDS = {"seq_scan_min_bytes": 65536, "seq_scan_min_count": 20,
              "unused_index_min_bytes": 8192, "long_transaction_minutes": 0.01}
Q4 = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def seeded():
    for engine, conn in (("postgresql", PG), ("mariadb", MY)):
        dbseed.seed(engine, database=DB, size=1, drop=True, **conn)
    pg = psycopg2.connect(dbname=DB, host=PG["host"], port=PG["port"], user=PG["user"])
    pg.autocommit = True
    with pg.cursor() as cur:
        cur.execute("CREATE INDEX messages_title_idx ON messages (title)")  # never used
        # Created but not preloaded: the view cannot be read, the record says what is missing.
        cur.execute("CREATE EXTENSION pg_stat_statements")
        cur.execute("ANALYZE messages")
        for _ in range(30):  # no index on category: every one is a whole-table scan
            cur.execute("SELECT count(*) FROM messages WHERE category = 'notice'")
        # The same table read through an index must not become a candidate.
        cur.execute("SET enable_seqscan = off")
        for _ in range(30):
            cur.execute("SELECT count(*) FROM appointments WHERE patient_id = 7")
    pg.close()  # statistics are flushed when the session ends
    yield DB
    for engine, conn in (("postgresql", PG), ("mariadb", MY)):
        dbseed.drop_database(engine, database=DB, **conn)


def inventory(tmp_path: Path) -> Path:
    inv = tmp_path / "inventory.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"dbhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "mhops_databases": [
            {"name": "his_pg", "engine": "postgresql", "database": DB, "production": False,
             **PG},
            {"name": "his_my", "engine": "mariadb", "database": DB, "production": False,
             **MY}]}}}}))
    return inv


def inspection(when: datetime, hosts: list[dict]) -> dict:
    """One inspection record in the real schema (README "The inspection record")."""
    def res(check, value, target="", unit="%"):
        return {"check": check, "target": target, "status": "normal", "value": value,
                "unit": unit, "warning": None, "critical": None, "explanation": "",
                "resolution": None, "samples": []}
    out = []
    for h in hosts:
        results = [res("cpu_percent", h["cpu"]), res("load_per_core", 0.3, "load1=0.6 cores=2"),
                   res("memory_percent", h["memory"]), res("swap_percent", None)]
        for mount, used in h["disks"].items():
            results += [res("disk_percent", used, mount), res("inode_percent", 3.0, mount)]
        results.append(res("uptime", h["uptime"], unit="天"))
        out.append({"host": h["host"], "groups": ["api"], "reachable": True, "status": "normal",
                    "error": None, "hostname": h["host"], "kernel": "6.1",
                    "collected_at": when.isoformat().replace("+00:00", "Z"),
                    "duration_ms": 800, "results": results})
    stamp = when.strftime("%Y%m%dT%H%M%SZ")
    return {"schema_version": 1, "kind": "inspection", "run_id": f"{stamp}-inspection",
            "lang": "zh-CN", "status": "normal", "exit_code": 0,
            "time": {"started_utc": when.isoformat().replace("+00:00", "Z"),
                     "finished_utc": when.isoformat().replace("+00:00", "Z"),
                     "started_local": "", "finished_local": "", "timezone": "Asia/Shanghai",
                     "duration_s": 1.0},
            "operator": "测试员", "scope": {}, "content": [], "hosts": out, "summary": {},
            "events": [], "feedback": {}, "resolution": None, "ops_revision": "x",
            "transport": "fabric"}


def write_quarter(folder: Path) -> None:
    """Every 3 days of 2026Q4 up to day 60: web1's /data grows 1 %/day (20 -> 80 %, full
    in ~20 days: warning), its /var 35 -> 95 % (full in ~5 days: critical), its memory
    creeps up 0.25 points/day with 100+ days of uptime (restart); db1 is flat (no
    restart); new1 appears twice only (too few points)."""
    def put(when, hosts):
        d = folder / f"{when:%Y%m%dT%H%M%SZ}-inspection"
        d.mkdir(parents=True)
        (d / "record.json").write_text(json.dumps(inspection(when, hosts)))
    for day in range(0, 61, 3):
        when = Q4 + timedelta(days=day, hours=1)
        hosts = [{"host": "web1", "cpu": 20.0 + day % 7, "memory": 50 + 0.25 * day,
                  "disks": {"/data": 20.0 + day, "/var": 35.0 + day}, "uptime": 100.0 + day},
                 {"host": "db1", "cpu": 35.0, "memory": 70.0 + (day % 2),
                  "disks": {"/": 40.0}, "uptime": 200.0 + day}]
        if day in (30, 33):
            hosts.append({"host": "new1", "cpu": 5.0, "memory": 20.0, "disks": {"/": 10.0},
                          "uptime": 1.0})
        put(when, hosts)
    # Outside the quarter: must be ignored (it would make /data look full already).
    put(Q4 - timedelta(days=20), [{"host": "web1", "cpu": 99.0, "memory": 99.0,
                                   "disks": {"/data": 99.0, "/var": 99.0}, "uptime": 5.0}])


def run(tmp_path, **kw):
    lines: list[str] = []
    kw.setdefault("thresholds", THRESHOLDS)
    opts = perf.Options(records_dir=tmp_path / "out", inspections_dir=tmp_path / "records",
                        period="2026Q4", operator="测试员", echo=lines.append, **kw)
    out = perf.run(opts)
    out.lines = lines
    return out


def test_quarter_from_records_and_databases(tmp_path, seeded):
    write_quarter(tmp_path / "records")
    # A transaction left open in each engine, its statement carrying a name literal.
    pg = psycopg2.connect(dbname=DB, host=PG["host"], port=PG["port"], user=PG["user"])
    with pg.cursor() as cur:
        cur.execute("SELECT count(*) FROM patients WHERE name = '王某某'")
    my = pymysql.connect(database=DB, **MY)
    with my.cursor() as cur:
        cur.execute("START TRANSACTION")
        cur.execute("SELECT count(*) FROM departments WHERE name = '王某某' FOR UPDATE")
    pg_pid, my_thread = pg.get_backend_pid(), my.thread_id()
    threading.Event().wait(1.2)
    try:
        out = run(tmp_path, inventory=[str(inventory(tmp_path))])
    finally:
        pg.rollback()
        pg.close()
        my.rollback()
        my.close()
    r = out.record
    assert r["kind"] == "perf" and r["lang"] == "zh-CN" and r["period"]["label"] == "2026Q4"

    # Host trends: the record outside the quarter is not used.
    assert r["data_sources"][0]["records"] == 21
    web1 = next(h for h in r["hosts"] if h["host"] == "web1")
    assert web1["memory"]["per_week"] == pytest.approx(1.75, abs=0.01)
    assert web1["cpu"]["stats"]["max"] == 26.0
    fc = {(f["host"], f["mount"], f["kind"]): f for f in r["forecasts"]}
    data, var = fc[("web1", "/data", "disk")], fc[("web1", "/var", "disk")]
    assert data["slope_per_day"] == pytest.approx(1.0) and data["last_value"] == 80.0
    assert data["days_until_full"] == pytest.approx(20.0) and data["status"] == "warning"
    assert data["full_on"].startswith("2026-12-20")
    assert var["days_until_full"] == pytest.approx(5.0) and var["status"] == "critical"
    assert fc[("db1", "/", "disk")]["days_until_full"] is None
    assert fc[("web1", "/data", "inode")]["days_until_full"] is None
    new1 = next(h for h in r["hosts"] if h["host"] == "new1")
    assert not new1["enough"] and any(g.startswith("new1: 2 memory points") for g in r["gaps"])

    # Restart rule: web1 (uptime 160 d, memory +15 points) yes; db1 (flat) and new1 no.
    advice = {a["subject"]: a for a in r["restart_advice"]}
    assert advice["web1"]["restart"] and advice["web1"]["growth"] == pytest.approx(15.0)
    assert "160" in advice["web1"]["reasoning"] and "15" in advice["web1"]["reasoning"]
    assert (advice["db1"]["restart"], advice["db1"]["reason"]) == (False, "growth_small")
    assert (advice["new1"]["restart"], advice["new1"]["reason"]) == (False, "no_trend")

    # PostgreSQL.
    by = {}
    for f in r["findings"]:
        by.setdefault((f["scope"], f["kind"]), []).append(f)
    seq = by[("dbhost/his_pg", "seq_scan")]
    assert [f["subject"] for f in seq] == ["public.messages"]
    assert seq[0]["value"] >= 30 and seq[0]["evidence"]["rows_per_scan_percent"] >= 90
    assert "public.messages" in seq[0]["recommendation"]
    unused = {f["subject"] for f in by[("dbhost/his_pg", "unused_index")]}
    assert "public.messages_title_idx" in unused
    assert "public.appointments_patient_idx" not in unused           # used above
    assert not {u for u in unused if u.endswith(("_pkey", "_key"))}  # constraints stay
    pgss = by[("dbhost/his_pg", "pgss_missing")][0]["recommendation"]
    assert "shared_preload_libraries = 'pg_stat_statements'" in pgss
    assert "CREATE EXTENSION pg_stat_statements" in pgss and "重启" in pgss
    ev = by[("dbhost/his_pg", "pgss_missing")][0]["evidence"]
    assert (ev["preloaded"], ev["created"], ev["step"]) == (False, True, "preload")
    assert not [g for g in r["gaps"] if "top statements could not be read" in g]
    pg_db = next(d for d in r["databases"] if d["name"] == "his_pg")
    assert pg_db["statements_source"] is None and pg_db["max_connections"] > 0
    assert 0 < pg_db["cache_hit_percent"] <= 100
    long_pg = by[("dbhost/his_pg", "long_transaction")]
    assert [f["subject"] for f in long_pg] == [f"pid {pg_pid}"]
    assert long_pg[0]["evidence"]["state"] == "idle in transaction"

    # MariaDB.
    ps = by[("dbhost/his_my", "ps_off")][0]
    assert "performance_schema = ON" in ps["recommendation"]
    my_db = next(d for d in r["databases"] if d["name"] == "his_my")
    assert my_db["performance_schema"] is False and my_db["peak_connections"] >= 1
    assert my_db["cache_hit_percent"] is not None
    long_my = by[("dbhost/his_my", "long_transaction")]
    assert [f["subject"] for f in long_my] == [f"thread {my_thread}"]
    assert long_my[0]["value"] >= 0.01

    # The /var forecast within 7 days is critical: exit 2, and every file is written.
    assert out.exit_code == 2 and r["status"] == "critical"
    md = (out.record_dir / "record.md").read_text()
    assert "季度性能分析报告 2026Q4" in md and "public.messages" in md
    assert "## 瓶颈与发现（附证据）" in md and "## 调优建议" in md and "个百分点" in md
    assert "CREATE EXTENSION pg_stat_statements" in md
    html = (out.record_dir / "record.html").read_text()
    assert "<html lang=\"zh-CN\">" in html and "web1" in html
    for f in out.record_dir.iterdir():
        assert "王某某" not in f.read_text(), f"statement literal leaked into {f}"


def test_english_record_without_databases_and_too_few_points(tmp_path):
    folder = tmp_path / "records"
    write_quarter(folder)
    out = run(tmp_path, lang="en", thresholds={"min_points": 30})
    r = out.record
    assert r["databases"] == [] and "no inventory given: no database analysis" in r["gaps"]
    assert all(f["days_until_full"] is None for f in r["forecasts"])   # nobody has 30 points
    assert not any(a["restart"] for a in r["restart_advice"])
    assert out.exit_code == 0 and r["status"] == "normal"
    md = (out.record_dir / "record.md").read_text()
    assert "Quarterly performance analysis report 2026Q4" in md
    assert "too few points for a trend" in md


def test_bad_period_and_thresholds_exit_3_and_write_nothing(tmp_path):
    for kw in ({"period": "2026Q7"}, {"thresholds": {"nope": 1}}):
        opts = perf.Options(records_dir=tmp_path / "out", inspections_dir=tmp_path,
                            echo=lambda _: None, **{"period": "2026Q4", **kw})
        with pytest.raises(MhopsError) as exc:
            perf.run(opts)
        assert exc.value.exit_code == 3
    assert not (tmp_path / "out").exists()
