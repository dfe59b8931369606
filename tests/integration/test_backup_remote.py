"""`backup.run` and `backup.check` on database hosts reached over SSH (loopback sshd lab),
compressed dumps whose pipe fails on any stage, and row counts taken in the dump's
snapshot while the application keeps writing.

Real PostgreSQL and MariaDB (databases mhr_*), real Ansible, real SSH.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2
import pytest
import yaml
from conftest import FAKE_ID

from mhops import backup, dbseed
from mhops.lab import SshLab

SERVERS = {"postgresql": {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""},
           "mariadb": {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}}
DB = f"mhr_bk_{os.getpid()}"
NAMES = {"postgresql": "mhr_app_pg", "mariadb": "mhr_app_my"}
SECRET = "Mhr-Planted-S3cret"


def _entries(backup_dir: Path, database: str = DB) -> list[dict]:
    return [{"name": NAMES[e], "engine": e, **s, "database": database, "production": False,
             "backup_dir": str(backup_dir)} for e, s in SERVERS.items()]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    root = tmp_path_factory.mktemp("bkremote")
    for engine, server in SERVERS.items():
        dbseed.seed(engine, database=DB, size=1, drop=True, **server)
    try:
        with SshLab(root / "lab", 2, first_octet=62, prefix="mhrdb") as lab:
            yield {"root": root, "lab": lab, "records": root / "records", "state": root / "state"}
    finally:
        for engine, server in SERVERS.items():
            dbseed.drop_database(engine, database=DB, **server)


def _lab_inventory(site, path: Path, hostvars: dict[str, dict], extra_hosts=()) -> Path:
    # The community database modules need psycopg2/pymysql: this environment's Python.
    hv = {h: {"ansible_python_interpreter": sys.executable, **v} for h, v in hostvars.items()}
    return site["lab"].write_inventory(path, hostvars=hv, extra_hosts=list(extra_hosts))


def _local_inventory(path: Path, entries: list[dict], **hostvars) -> Path:
    path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "mhops_databases": entries, **hostvars}}}}))
    return path


def _run(site, inventory: Path, **kw):
    lines: list[str] = []
    out = backup.run(backup.RunOptions(inventory=[str(inventory)], records_dir=site["records"],
                                       state_dir=site["state"], operator="测试员",
                                       echo=lines.append, **kw))
    out.lines = lines
    return out


def _check(site, **kw):
    lines: list[str] = []
    out = backup.check(backup.CheckOptions(records_dir=site["records"], operator="测试员",
                                           echo=lines.append, **kw))
    out.lines = lines
    return out


def _items(record, name, host=None):
    t = next(t for t in record["targets"] if t["name"] == name
             and (host is None or t["host"] == host))
    return {i["check"]: i for i in t["items"]}


def _newest_manifest(folder: Path) -> dict:
    return json.loads(sorted(folder.glob("*.manifest.json"))[-1].read_text())


@pytest.fixture(scope="module")
def remote_backups(site):
    """Two zstd-compressed backups per database, taken by the role on lab host mhrdb1."""
    bdir = site["root"] / "on-mhrdb1"
    inv = _lab_inventory(site, site["root"] / "hosts.yml",
                         {"mhrdb1": {"mhops_databases": _entries(bdir)}})
    first = _run(site, inv, compress="zstd")
    second = _run(site, inv, compress="zstd")
    return {"inventory": inv, "dir": bdir, "runs": [first, second]}


def test_backup_over_ssh_is_compressed_and_counted_in_the_dump_snapshot(site, remote_backups):
    for out in remote_backups["runs"]:
        assert out.exit_code == 0, out.lines
        assert out.record["scope"]["hosts"] == ["mhrdb1"]
        assert out.record["settings"]["compress"] == "zstd"
        assert out.record["headline"]
    my = _newest_manifest(remote_backups["dir"] / NAMES["mariadb"])
    assert my["file"].endswith(".sql.zst") and my["compression"] == "zstd"
    assert my["tables_counted"] == "dump_content" and "exact" in my["tables_note"]
    assert [s["program"] for s in my["pipe"]] == ["mariadb-dump", "zstd"]
    assert all(s["rc"] == 0 for s in my["pipe"])
    text = subprocess.run(["zstd", "-dc", str(remote_backups["dir"] / NAMES["mariadb"]
                                              / my["file"])],
                          capture_output=True, check=True).stdout
    assert text.rstrip().splitlines()[-1].startswith(b"-- Dump completed")
    assert my["canary"]["token"].encode() in text
    pg = _newest_manifest(remote_backups["dir"] / NAMES["postgresql"])
    assert pg["file"].endswith(".dump") and pg["tables_counted"] == "dump_snapshot"
    assert pg["snapshot"] and pg["tables"]["public.mhops_canary"] >= 2
    entry = next(b for b in remote_backups["runs"][1].record["backups"]
                 if b["name"] == NAMES["postgresql"])
    assert entry["tables_counted"] == "dump_snapshot" and entry["tables"] == pg["tables"]


def test_check_reads_the_backups_on_the_database_host(site, remote_backups):
    out = _check(site, inventory=[str(remote_backups["inventory"])])
    assert out.exit_code == 0, out.lines
    r = out.record
    assert r["scope"]["hosts"] == ["mhrdb1"] and list(r["probes"]) == ["mhrdb1"]
    assert r["probes"]["mhrdb1"]["error"] is None
    for engine in SERVERS:
        items = _items(r, NAMES[engine], "mhrdb1")
        assert {k: v["nagios"] for k, v in items.items()} == {
            "age": "OK", "size": "OK", "checksum": "OK", "integrity": "OK"}, items
    newest = next(t for t in r["targets"] if t["name"] == NAMES["mariadb"])["newest"]
    assert newest["file"].endswith(".sql.zst") and newest["compression"] == "zstd"
    assert r["headline"] and "OK" in out.lines[-2]


def test_remote_check_finds_truncation_corruption_and_log_errors(site, remote_backups):
    # mhrdb2 holds a copy: its newest zstd dump cut short, its newest pg dump with a
    # flipped byte, and a backup job log with errors (a planted ID and secret in it).
    copy = site["root"] / "on-mhrdb2"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(remote_backups["dir"], copy)
    my = sorted((copy / NAMES["mariadb"]).glob("*.sql.zst"))[-1]
    my.write_bytes(my.read_bytes()[:-40])
    pg = sorted((copy / NAMES["postgresql"]).glob("*.dump"))[-1]
    data = bytearray(pg.read_bytes())
    data[len(data) // 2] ^= 0x01
    pg.write_bytes(bytes(data))
    log = site["root"] / "mhrdb2-backup.log"
    log.write_text("02:00:01 backup start\n"
                   f"02:00:09 mariadb-dump: error: patient {FAKE_ID} password={SECRET}\n"
                   "02:00:10 done\n")
    inv = _lab_inventory(site, site["root"] / "hosts2.yml",
                         {"mhrdb2": {"mhops_databases": _entries(copy),
                                     "mhops_backup_log": str(log)}})
    out = _check(site, inventory=[str(inv)], limit="mhrdb2")
    assert out.exit_code == 2
    my_items = _items(out.record, NAMES["mariadb"], "mhrdb2")
    assert my_items["integrity"]["nagios"] == "CRITICAL"
    assert "truncated or corrupt" in my_items["integrity"]["explanation"]
    assert my_items["checksum"]["nagios"] == "CRITICAL"   # the size differs from the manifest
    pg_items = _items(out.record, NAMES["postgresql"], "mhrdb2")
    assert pg_items["checksum"]["nagios"] == "CRITICAL"
    assert "sha256 differs" in pg_items["checksum"]["explanation"]
    lg = out.record["logs"]
    assert len(lg) == 1 and lg[0]["host"] == "mhrdb2" and lg[0]["nagios"] == "WARNING"
    assert lg[0]["target"] == f"mhrdb2:{log}" and lg[0]["value"] == 1
    for f in out.record_dir.iterdir():
        text = f.read_text()
        assert FAKE_ID not in text and SECRET not in text, f
    assert not any(FAKE_ID in line or SECRET in line for line in out.lines)


def test_unreachable_database_host_is_critical_and_others_are_still_checked(site,
                                                                           remote_backups):
    gone = site["lab"].unreachable_host("mhrgone")
    hv = {"mhrdb1": {"mhops_databases": _entries(remote_backups["dir"])},
          "mhrgone": {"mhops_databases": _entries(remote_backups["dir"])}}
    inv = _lab_inventory(site, site["root"] / "hosts3.yml", hv, extra_hosts=[gone])
    out = _check(site, inventory=[str(inv)], limit="mhrdb1,mhrgone")
    assert out.exit_code == 2
    gone_items = _items(out.record, NAMES["postgresql"], "mhrgone")
    assert list(gone_items) == ["reach"] and gone_items["reach"]["nagios"] == "CRITICAL"
    assert out.record["probes"]["mhrgone"]["unreachable"] is True
    assert _items(out.record, NAMES["postgresql"], "mhrdb1")["integrity"]["nagios"] == "OK"


def test_local_folder_of_another_tools_compressed_dumps(site, remote_backups, tmp_path):
    src = sorted((remote_backups["dir"] / NAMES["mariadb"]).glob("*.sql.zst"))[-1]
    (tmp_path / "other").mkdir()
    shutil.copy(src, tmp_path / "other" / "nightly-his.sql.zst")
    target = backup.external_target(str(tmp_path / "other"), "nightly-*.sql.zst", "mariadb")
    out = _check(site, external=[target])
    items = _items(out.record, "other")
    assert items["integrity"]["nagios"] == "OK" and items["checksum"]["status"] == "unknown"
    assert out.exit_code == 0 and out.record["scope"]["hosts"] == []


def _no_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_a_failing_stage_of_a_compressed_dump_fails_the_backup(site, tmp_path):
    bdir = tmp_path / "fail"
    killed = tmp_path / "killed-dump"
    # Writes the start of a dump to stdout, then dies by SIGKILL (OOM killer, operator).
    killed.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'mariadb-dump  Ver 10.19' "
                      "&& exit 0\nprintf -- '-- MariaDB dump\\nINSERT INTO t VALUES (1);\\n'\n"
                      "kill -9 $$\n")
    killed.chmod(0o755)
    bad_gzip = tmp_path / "bad-gzip"
    bad_gzip.write_text("#!/bin/sh\nhead -c 100 >/dev/null\necho 'gzip: No space left on "
                        "device' >&2\nexit 1\n")
    bad_gzip.chmod(0o755)
    my = SERVERS["mariadb"]
    cases = [
        ({"name": "mhr_nodb", "engine": "mariadb", **my, "database": "mhr_does_not_exist"},
         {}, "Unknown database"),
        ({"name": "mhr_killed", "engine": "mariadb", **my, "database": DB},
         {"mhops_backup_mariadb_dump": str(killed)}, "killed by signal 9"),
        ({"name": "mhr_badgz", "engine": "mariadb", **my, "database": DB},
         {"mhops_backup_gzip": str(bad_gzip)}, "No space left"),
    ]
    for entry, hostvars, why in cases:
        entry = dict(entry, backup_dir=str(bdir))
        inv = _local_inventory(tmp_path / f"{entry['name']}.yml", [entry], **hostvars)
        out = _run(site, inv, compress="gzip")
        assert out.exit_code == 2, (entry["name"], out.lines)
        b = out.record["backups"][0]
        assert b["outcome"] == "failed" and why in b["error"], (entry["name"], b["error"])
        assert _no_files(bdir) == [], entry["name"]
    chk = _check(site, inventory=[str(inv)])
    assert chk.exit_code == 2
    assert _items(chk.record, "mhr_badgz")["exists"]["nagios"] == "CRITICAL"


def _writer(stop: threading.Event, counter: list[int]) -> None:
    conn = psycopg2.connect(dbname=DB, **{k: v for k, v in SERVERS["postgresql"].items()
                                          if k != "password"})
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.is_set():
            cur.execute("INSERT INTO mhr_writes (note) VALUES ('w')")
            counter[0] += 1
    conn.close()


def test_postgresql_counts_are_exactly_the_dumps_under_concurrent_writes(site, tmp_path):
    conn = psycopg2.connect(dbname=DB, **{k: v for k, v in SERVERS["postgresql"].items()
                                          if k != "password"})
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS mhr_writes (id bigserial PRIMARY KEY, note text)")
    conn.close()
    stop, counter = threading.Event(), [0]
    t = threading.Thread(target=_writer, args=(stop, counter), daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while counter[0] < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        entry = {"name": "mhr_busy_pg", "engine": "postgresql", **SERVERS["postgresql"],
                 "database": DB, "backup_dir": str(tmp_path / "busy")}
        out = _run(site, _local_inventory(tmp_path / "busy.yml", [entry]))
    finally:
        stop.set()
        t.join(30)
    assert out.exit_code == 0, out.lines
    folder = tmp_path / "busy" / "mhr_busy_pg"
    m = _newest_manifest(folder)
    assert m["tables_counted"] == "dump_snapshot"
    data = subprocess.run(["pg_restore", "--data-only", "--table=mhr_writes", "-f", "-",
                           str(folder / m["file"])], capture_output=True, text=True,
                          check=True).stdout
    lines = data.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("COPY public.mhr_writes"))
    end = lines.index("\\.", start)
    in_dump = end - start - 1
    assert in_dump > 0 and m["tables"]["public.mhr_writes"] == in_dump
    # The writer kept going while the backup ran: a count taken outside the dump's
    # snapshot would not have matched.
    assert counter[0] > in_dump


def test_drill_restores_a_zstd_backup_and_fails_loudly_on_a_cut_one(site, remote_backups,
                                                                    tmp_path):
    from mhops import drill

    scratch_dir = Path(tempfile.mkdtemp(prefix="mhr_scratch_"))
    os.chmod(scratch_dir, 0o711)  # the mysql account must enter it
    inv = _local_inventory(tmp_path / "drill.yml", _entries(remote_backups["dir"]))

    def run(**kw):
        return drill.run(drill.Options(records_dir=site["records"], inventory=[str(inv)],
                                       engine="mariadb", name=NAMES["mariadb"],
                                       scratch_dir=str(scratch_dir), smoke_day="today",
                                       operator="演练员", echo=lambda line: None, **kw))
    try:
        good = run()
        assert good.exit_code == 0, good.record["reason"]
        assert good.record["backup"]["file"].endswith(".sql.zst")
        cut_dir = tmp_path / "cut"
        shutil.copytree(remote_backups["dir"] / NAMES["mariadb"], cut_dir)
        cut = sorted(cut_dir.glob("*.sql.zst"))[-1]
        cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
        bad = run(backup=str(cut))
        assert bad.exit_code != 0 and bad.record["outcome"] != "passed"
        assert "differs from the manifest" in bad.record["reason"]
        # Even with a manifest that matches the cut file, the restore pipe fails on the
        # cut zstd frame: it never restores half a dump quietly.
        mpath = cut.with_name(cut.name[: -len(".sql.zst")] + ".manifest.json")
        m = json.loads(mpath.read_text())
        m.update(size=cut.stat().st_size, sha256=hashlib.sha256(cut.read_bytes()).hexdigest())
        mpath.write_text(json.dumps(m))
        worse = run(backup=str(cut))
        assert worse.exit_code != 0 and worse.record["outcome"] != "passed"
        assert "zstd" in worse.record["reason"] or "decompress" in worse.record["reason"], \
            worse.record["reason"]
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


def test_mariadb_counts_are_exactly_the_dumps_under_concurrent_writes(site, tmp_path):
    import gzip

    import pymysql

    my = SERVERS["mariadb"]
    conn = pymysql.connect(database=DB, autocommit=True, **my)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS mhr_writes (id bigint AUTO_INCREMENT "
                    "PRIMARY KEY, note varchar(40)) ENGINE=InnoDB")
    stop, counter = threading.Event(), [0]

    def write():
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute("INSERT INTO mhr_writes (note) VALUES ('it''s (a), b;')")
                counter[0] += 1
    t = threading.Thread(target=write, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while counter[0] < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        entry = {"name": "mhr_busy_my", "engine": "mariadb", **my, "database": DB,
                 "backup_dir": str(tmp_path / "busy")}
        out = _run(site, _local_inventory(tmp_path / "busy.yml", [entry]), compress="gzip")
    finally:
        stop.set()
        t.join(30)
        conn.close()
    assert out.exit_code == 0, out.lines
    folder = tmp_path / "busy" / "mhr_busy_my"
    m = _newest_manifest(folder)
    assert m["tables_counted"] == "dump_content" and m["file"].endswith(".sql.gz")
    # Counted independently: mariadb-dump 10.11 writes one row per line.
    lines = gzip.decompress((folder / m["file"]).read_bytes()).decode().splitlines()
    start = lines.index("LOCK TABLES `mhr_writes` WRITE;")
    end = lines.index("UNLOCK TABLES;", start)
    in_dump = sum(ln.startswith("(") for ln in lines[start:end])
    assert in_dump > 0 and m["tables"]["mhr_writes"] == in_dump
    assert counter[0] > in_dump
