"""`backup.run` and `backup.check` on real PostgreSQL and MariaDB servers.

Backups of seeded databases, their manifests against the live row counts, the canary
in the dump, then corruption (a flipped byte, a cut footer), age against the RPO,
retention with a drill's `.in-use` marker, check mode, and a failing dump.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from mhops import backup, dbseed

SERVERS = {"postgresql": {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""},
           "mariadb": {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}}
DB = f"mhb_bk_{os.getpid()}"
NAMES = {"postgresql": "mhb_app_pg", "mariadb": "mhb_app_my"}


def _inventory(path: Path, backup_dir: Path, entries=None, **hostvars) -> Path:
    dbs = entries if entries is not None else [
        {"name": NAMES[e], "engine": e, **s, "database": DB, "production": False,
         "backup_dir": str(backup_dir)} for e, s in SERVERS.items()]
    path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        "mhops_databases": dbs, **hostvars}}}}))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("backup")
    try:
        for engine, server in SERVERS.items():
            dbseed.seed(engine, database=DB, size=1, drop=True, **server)
        inv = _inventory(root / "hosts.yml", root / "backups")
        yield {"root": root, "inventory": inv, "backups": root / "backups",
               "records": root / "records", "state": root / "state"}
    finally:
        for engine, server in SERVERS.items():
            dbseed.drop_database(engine, database=DB, **server)


def _run(site, inventory=None, **kw):
    lines: list[str] = []
    opts = backup.RunOptions(inventory=[str(inventory or site["inventory"])],
                             records_dir=site["records"], state_dir=site["state"],
                             operator="测试员", echo=lines.append, **kw)
    out = backup.run(opts)
    out.lines = lines
    return out


def _check(site, **kw):
    lines: list[str] = []
    kw.setdefault("inventory", [str(site["inventory"])])
    out = backup.check(backup.CheckOptions(records_dir=site["records"], echo=lines.append,
                                           operator="测试员", **kw))
    out.lines = lines
    return out


def _items(record, name):
    target = next(t for t in record["targets"] if t["name"] == name)
    return {i["check"]: i for i in target["items"]}


def _live_counts(engine):
    conn = dbseed.connect(engine, database=DB, **SERVERS[engine])
    try:
        with conn.cursor() as cur:
            if engine == "postgresql":
                cur.execute("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
            else:
                cur.execute("SELECT table_name FROM information_schema.tables "
                            "WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE'")
            out = {}
            for (t,) in cur.fetchall():
                cur.execute(f"SELECT COUNT(*) FROM {t}")
                out[f"public.{t}" if engine == "postgresql" else t] = cur.fetchone()[0]
            return out
    finally:
        conn.close()


@pytest.fixture(scope="module")
def first(site):
    """Two backups per database (history for the size rule); the second's outcome."""
    _run(site)
    return _run(site)


def _newest(site, engine):
    folder = site["backups"] / NAMES[engine]
    manifests = sorted(folder.glob("*.manifest.json"))
    m = json.loads(manifests[-1].read_text())
    return folder / m["file"], m


@pytest.mark.parametrize("engine", list(SERVERS))
def test_backup_files_manifest_counts_and_canary(site, first, engine):
    assert first.exit_code == 0, first.lines
    dump, m = _newest(site, engine)
    assert dump.exists() and dump.stat().st_mode & 0o077 == 0
    assert m["schema_version"] == 1 and m["engine"] == engine and m["database"] == DB
    assert m["format"] == ("custom" if engine == "postgresql" else "sql")
    assert m["size"] == dump.stat().st_size and len(m["sha256"]) == 64
    assert m["started_at"].endswith("Z") and m["finished_at"] >= m["started_at"]
    assert m["server_version"] and m["tool"].startswith(
        "pg_dump 15" if engine == "postgresql" else "mariadb-dump")
    assert m["tables"] == _live_counts(engine)
    assert not list(dump.parent.glob(".*partial"))
    token = m["canary"]["token"]
    if engine == "postgresql":
        data = subprocess.run(["pg_restore", "--data-only", "--table=mhops_canary", "-f", "-",
                               str(dump)], capture_output=True, text=True, check=True).stdout
    else:
        data = dump.read_text()
        assert data.rstrip().splitlines()[-1].startswith("-- Dump completed")
    assert token in data
    entry = next(b for b in first.record["backups"] if b["name"] == NAMES[engine])
    assert entry["outcome"] == "ok" and entry["file"] == dump.name
    assert entry["tables"] == m["tables"] and entry["size"] == m["size"]
    assert (first.record_dir / "record.md").read_text().count(NAMES[engine]) >= 2


def test_check_is_ok_on_good_backups_in_both_languages(site, first):
    out = _check(site)
    assert out.exit_code == 0, out.lines
    for engine in SERVERS:
        items = _items(out.record, NAMES[engine])
        assert {k: v["nagios"] for k, v in items.items()} == {
            "age": "OK", "size": "OK", "checksum": "OK", "integrity": "OK"}
    assert "OK" in out.lines[-2]
    en = _check(site, lang="en")
    assert "Backup check record" in (en.record_dir / "record.md").read_text()
    assert "备份检查记录" in (out.record_dir / "record.html").read_text()


def _copy(site, tmp_path, engine):
    folder = tmp_path / NAMES[engine]
    shutil.copytree(site["backups"] / NAMES[engine], folder)
    return backup.CheckTarget(NAMES[engine], folder, f"{NAMES[engine]}-*", engine, True)


def test_flipped_byte_is_critical_checksum(site, first, tmp_path):
    target = _copy(site, tmp_path, "postgresql")
    dump = sorted(target.folder.glob("*.dump"))[-1]
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    out = _check(site, inventory=[], external=[target])
    assert out.exit_code == 2
    assert _items(out.record, target.name)["checksum"]["nagios"] == "CRITICAL"
    assert any(e["check"] == "checksum" for e in out.record["events"])


def test_mariadb_dump_without_footer_is_critical(site, first, tmp_path):
    target = _copy(site, tmp_path, "mariadb")
    dump = sorted(target.folder.glob("*.sql"))[-1]
    text = dump.read_bytes()
    dump.write_bytes(text[: text.rindex(b"-- Dump completed")])
    out = _check(site, inventory=[], external=[target])
    items = _items(out.record, target.name)
    assert out.exit_code == 2
    assert items["integrity"]["nagios"] == "CRITICAL"
    assert "footer" in items["integrity"]["explanation"]
    # The same file from another tool (no manifest): checksum is not applicable, the cut
    # footer is still critical.
    ext = tmp_path / "other-tool"
    ext.mkdir()
    shutil.copy(dump, ext / "nightly-app.sql")
    out = _check(site, inventory=[], external=[backup.external_target(str(ext), "nightly-*.sql",
                                                                      "mariadb")])
    items = _items(out.record, "other-tool")
    assert items["checksum"]["status"] == "unknown" and "not applicable" in \
        items["checksum"]["explanation"]
    assert items["integrity"]["nagios"] == "CRITICAL" and out.exit_code == 2


def test_old_backup_is_warning_then_critical(site, first):
    warn = _check(site, rpo_hours={"warning": 0.0001, "critical": 1})
    assert warn.exit_code == 1
    assert _items(warn.record, NAMES["mariadb"])["age"]["nagios"] == "WARNING"
    crit = _check(site, now=datetime.now(UTC) + timedelta(hours=60))
    assert crit.exit_code == 2
    assert _items(crit.record, NAMES["postgresql"])["age"]["nagios"] == "CRITICAL"


def test_backup_log_errors_are_counted(site, first, tmp_path):
    log = tmp_path / "backup.log"
    log.write_text("2026-11-28 02:00:01 start\n2026-11-28 02:00:09 pg_dump: error: "
                   "connection to server failed\n2026-11-28 02:00:10 done\n")
    out = _check(site, log=str(log))
    assert out.record["log"]["value"] == 1 and out.record["log"]["nagios"] == "WARNING"
    assert out.exit_code == 1


def _fake_old_backups(folder: Path, name: str, source: Path, stamps: list[str]) -> None:
    """Older good backups: copies of a real one under older names with matching manifests."""
    m = json.loads(source.with_name(source.name.rsplit(".", 1)[0]
                                    + ".manifest.json").read_text())
    for stamp in stamps:
        f = folder / f"{name}-{stamp}.sql"
        shutil.copy(source, f)
        f.with_name(f"{name}-{stamp}.manifest.json").write_text(json.dumps(
            dict(m, file=f.name, finished_at=f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T00:00:00Z")))


def test_retention_keeps_newest_good_and_in_use_and_check_changes_nothing(site, first,
                                                                         tmp_path):
    name = NAMES["mariadb"]
    bdir = tmp_path / "ret"
    folder = bdir / name
    folder.mkdir(parents=True)
    source, _ = _newest(site, "mariadb")
    stamps = ["20260101T000000Z", "20260102T000000Z", "20260103T000000Z", "20260104T000000Z"]
    _fake_old_backups(folder, name, source, stamps)
    (folder / f"{name}-20251231T000000Z.sql").write_text("-- no manifest: incomplete\n")
    (folder / ".in-use").write_text(f"{name}-20260101T000000Z.sql\n")
    inv = _inventory(tmp_path / "hosts.yml", bdir, entries=[
        {"name": name, "engine": "mariadb", **SERVERS["mariadb"], "database": DB,
         "backup_dir": str(bdir)}])
    before = sorted(p.name for p in folder.iterdir())
    canaries = _live_counts("mariadb")["mhops_canary"]

    plan = _run(site, inventory=inv, keep=2, check=True)
    assert plan.exit_code == 0 and plan.record["check_mode"] is True
    entry = plan.record["backups"][0]
    assert entry["outcome"] == "planned"
    assert entry["retention"]["deleted"] == [f"{name}-20260102T000000Z.sql",
                                             f"{name}-20260103T000000Z.sql"]
    assert sorted(p.name for p in folder.iterdir()) == before
    assert _live_counts("mariadb")["mhops_canary"] == canaries
    assert any(line.startswith("PLAN") for line in plan.lines)

    done = _run(site, inventory=inv, keep=2)
    assert done.exit_code == 0
    entry = done.record["backups"][0]
    assert entry["retention"]["deleted"] == [f"{name}-20260102T000000Z.sql",
                                             f"{name}-20260103T000000Z.sql"]
    left = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    assert left == [f"{name}-20251231T000000Z.sql", f"{name}-20260101T000000Z.sql",
                    f"{name}-20260104T000000Z.sql", entry["file"]]
    assert not (folder / f"{name}-20260102T000000Z.manifest.json").exists()

    # keep=1: only the newest good backup stays, plus the one a drill is using.
    once = _run(site, inventory=inv, keep=1)
    newest = once.record["backups"][0]["file"]
    left = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    assert left == [f"{name}-20251231T000000Z.sql", f"{name}-20260101T000000Z.sql", newest]


def test_failing_dump_leaves_no_file_and_exits_2(site, first, tmp_path):
    bdir = tmp_path / "fail"
    fake = tmp_path / "broken-dump"
    # Writes part of a dump, then dies like a dump that lost its connection.
    fake.write_text("#!/bin/sh\nfor a; do case $a in --result-file=*) "
                    "printf -- '-- partial\\n' > \"${a#--result-file=}\";; esac; done\n"
                    "echo 'mariadb-dump: Lost connection to server' >&2\nexit 2\n")
    fake.chmod(0o755)
    inv = _inventory(tmp_path / "hosts.yml", bdir, entries=[
        {"name": "mhb_broken", "engine": "mariadb", **SERVERS["mariadb"], "database": DB,
         "backup_dir": str(bdir)},
        {"name": "mhb_missing", "engine": "postgresql", **SERVERS["postgresql"],
         "database": "mhb_does_not_exist", "backup_dir": str(bdir)}],
        mhops_backup_mariadb_dump=str(fake))
    out = _run(site, inventory=inv)
    assert out.exit_code == 2
    by = {b["name"]: b for b in out.record["backups"]}
    assert by["mhb_broken"]["outcome"] == "failed"
    assert "Lost connection" in by["mhb_broken"]["error"]
    assert by["mhb_missing"]["outcome"] == "failed"
    assert [p for p in bdir.rglob("*") if p.is_file()] == []
    assert {e["name"] for e in out.record["events"]} == {"mhb_broken", "mhb_missing"}
    # backup.check on the empty folder: no backup at all is critical.
    chk = _check(site, inventory=[str(inv)], databases=["mhb_broken"])
    assert chk.exit_code == 2
    assert _items(chk.record, "mhb_broken")["exists"]["nagios"] == "CRITICAL"
