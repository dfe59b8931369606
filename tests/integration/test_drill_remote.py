"""`drill restore` of a backup that lives on a database host reached over SSH.

A loopback sshd host (octet 61) holds the backups: `backup.run` writes them there
through Ansible, and the drill stages the chosen one through playbooks/drill.yml
(.in-use mark, fetch with checksums compared on both ends) before restoring it into a
throwaway instance on this machine. A corrupted remote backup fails loudly, and a
production target is refused before anything is written on either machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import FAKE_ID, REPO, no_leak

from mhops import backup, dbseed, drill
from mhops.errors import MhopsError
from mhops.lab import SshLab

SERVERS = {"postgresql": {"host": "127.0.0.1", "port": 5432, "user": "postgres"},
           "mariadb": {"host": "127.0.0.1", "port": 3306, "user": "root"}}
DB = f"mhq_drill_{os.getpid()}"
NAMES = {"postgresql": "mhq_pg", "mariadb": "mhq_my"}
SECRET = "mhq-planted-Secret-7f3a"
HOST = "mhqdb1"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    root = tmp_path_factory.mktemp("drill_remote")
    # The scratch servers run as postgres/mysql: they must enter the scratch parent.
    scratch = Path(tempfile.mkdtemp(prefix="mhq_scratch_"))
    os.chmod(scratch, 0o711)
    backups = root / "remote-backups"
    # PostgreSQL trusts loopback and ignores the planted password; MariaDB's root has none.
    secret = {"postgresql": "{{ vault_mhq_password }}", "mariadb": ""}
    entries = [{"name": NAMES[e], "engine": e, **s, "password": secret[e],
                "database": DB, "production": False, "backup_dir": str(backups)}
               for e, s in SERVERS.items()]
    entries.append({"name": "mhq_his", "engine": "postgresql", **SERVERS["postgresql"],
                    "password": "{{ vault_mhq_password }}", "database": "postgres",
                    "production": True})
    try:
        for engine, server in SERVERS.items():
            dbseed.seed(engine, database=DB, size=1, drop=True, password="", **server)
            conn = dbseed.connect(engine, database=DB, password="", **server)
            with conn.cursor() as cur:  # a patient identifier that must never reach a record
                cur.execute("UPDATE departments SET name = %s WHERE code = 'D002'", (FAKE_ID,))
            conn.commit()
            conn.close()
        with SshLab(root / "lab", 1, first_octet=61, prefix="mhqdb") as lab:
            inv = lab.write_inventory(root / "hosts.yml", hostvars={HOST: {
                # The lab host is this machine: its Python has the database drivers.
                "ansible_python_interpreter": sys.executable,
                "vault_mhq_password": SECRET, "mhops_databases": entries}})
            out = backup.run(backup.RunOptions(
                inventory=[str(inv)], records_dir=root / "records", state_dir=root / "state",
                databases=list(NAMES.values()), echo=lambda line: None))
            assert out.exit_code == 0, out.record
            yield {"root": root, "inventory": inv, "backups": backups, "scratch": scratch,
                   "records": root / "records"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for engine, server in SERVERS.items():
            dbseed.drop_database(engine, database=DB, password="", **server)


def _opts(site, **kw):
    base = {"records_dir": site["records"], "inventory": [str(site["inventory"])],
            "limit": HOST, "scratch_dir": str(site["scratch"]), "operator": "演练员",
            "echo": lambda line: None}
    return drill.Options(**{**base, **kw})


def _newest(site, engine) -> Path:
    folder = site["backups"] / NAMES[engine]
    m = json.loads(sorted(folder.glob("*.manifest.json"))[-1].read_text())
    return folder / m["file"]


def _clean(site, engine) -> None:
    folder = site["backups"] / NAMES[engine]
    assert not (folder / ".in-use").exists()
    assert not list(site["scratch"].glob("mhops-drill-*"))
    assert not list(site["scratch"].glob("mhops-stage-*"))


@pytest.mark.parametrize("engine", list(SERVERS))
def test_remote_backup_is_fetched_restored_and_verified(site, engine):
    out = drill.run(_opts(site, engine=engine, name=NAMES[engine]))
    r = out.record
    assert out.exit_code == 0, r["reason"]
    assert r["outcome"] == "passed" and r["status"] == "passed" and r["headline"]
    assert r["backup"]["file"] == _newest(site, engine).name
    assert r["backup"]["path"] == str(_newest(site, engine))
    assert r["staging"]["db_host"] == HOST and r["staging"]["transfer"] == "fetched"
    assert r["staging"]["fetch_checksum_sha1"]
    assert r["staging"]["marked_in_use"] is True and r["staging"]["released"] is True
    steps = {s["step"]: s for s in r["steps"]}
    assert steps["fetch"]["status"] == "ok" and "fetched from mhqdb1" in steps["fetch"]["detail"]
    assert steps["checksum"]["status"] == "ok" and steps["restore"]["status"] == "ok"
    assert r["backup"]["sha256_actual"] == r["backup"]["sha256_manifest"]
    assert r["verification"]["canary"]["present"] is True
    assert all(t["status"] == "ok" for t in r["verification"]["tables"])
    assert r["verification"]["smoke"]["rows"] >= 1
    assert r["rto"]["status"] == "ok" and r["rpo"]["status"] == "ok"
    _clean(site, engine)
    md = (out.record_dir / "record.md").read_text()
    assert "数据库主机" in md and HOST in md
    no_leak([site["records"]], FAKE_ID, SECRET)


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x01]))


def test_corrupt_remote_backup_fails_loudly(site):
    dump = _newest(site, "postgresql")
    original = dump.read_bytes()
    _flip(dump, len(original) // 2)
    try:
        out = drill.run(_opts(site, engine="postgresql", name=NAMES["postgresql"]))
    finally:
        dump.write_bytes(original)
    r = out.record
    assert out.exit_code == 2 and r["outcome"] == "failed"
    assert "sha256 differs from the manifest" in r["reason"]
    assert r["backup"]["file"] == dump.name  # no fallback to another backup
    steps = {s["step"]: s for s in r["steps"]}
    assert steps["fetch"]["status"] == "ok" and steps["checksum"]["status"] == "failed"
    assert steps["restore"]["status"] == "skipped"
    assert r["staging"]["released"] is True
    assert "失败" in (out.record_dir / "record.md").read_text()
    _clean(site, "postgresql")


def test_truncated_remote_mariadb_dump_fails(site):
    dump = _newest(site, "mariadb")
    original = dump.read_bytes()
    dump.write_bytes(original[: len(original) * 2 // 3])
    try:
        out = drill.run(_opts(site, engine="mariadb", lang="en"))
    finally:
        dump.write_bytes(original)
    assert out.exit_code == 2
    assert "truncated" in out.record["reason"]
    _clean(site, "mariadb")


def test_production_target_refused_before_anything_is_written(site):
    before = sorted(p.name for p in site["records"].iterdir())
    with pytest.raises(MhopsError, match="refusing.*marked production"):
        drill.run(_opts(site, engine="postgresql", name=NAMES["postgresql"], target="mhq_his"))
    with pytest.raises(MhopsError, match="PGHOST/PGPORT"):
        os.environ["PGPORT"] = "5432"
        try:
            drill.run(_opts(site, engine="postgresql", name=NAMES["postgresql"]))
        finally:
            del os.environ["PGPORT"]
    assert sorted(p.name for p in site["records"].iterdir()) == before
    _clean(site, "postgresql")


def test_missing_remote_backup_is_bad_input(site):
    with pytest.raises(MhopsError, match="backup file does not exist"):
        drill.run(_opts(site, engine="postgresql", name=NAMES["postgresql"],
                        backup=str(site["backups"] / "nope-20260101T000000Z.dump")))
    _clean(site, "postgresql")


def test_invoke_drill_restore_with_limit(site):
    env = dict(os.environ, INVOKE_MHOPS_RECORDS_DIR=str(site["records"]),
               INVOKE_DRILL_SCRATCH_DIR=str(site["scratch"]), INVOKE_MHOPS_LANG="en")
    base = [sys.executable, "-m", "invoke", "drill", "restore", "-i", str(site["inventory"]),
            "--limit", HOST, "--name", NAMES["postgresql"]]
    ok = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSED" in ok.stdout and HOST in ok.stdout
    refused = subprocess.run([*base, "--target", "mhq_his"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 3 and "marked production" in refused.stderr
    _clean(site, "postgresql")


def test_check_mode_only_shows_the_plan(site):
    before = sorted(p.name for p in site["records"].iterdir())
    lines: list[str] = []
    out = drill.run(_opts(site, name=NAMES["postgresql"], check=True, echo=lines.append))
    assert out.exit_code == 0 and out.record_dir is None
    assert out.record["backup"] == str(_newest(site, "postgresql"))
    assert out.record["transfer"] == "fetched" and out.record["db_host"] == HOST
    assert any("would restore" in line for line in lines)
    assert sorted(p.name for p in site["records"].iterdir()) == before
    _clean(site, "postgresql")


def test_local_backup_through_the_playbook_too(site, tmp_path):
    # The same backups seen as this machine's own: staged in-process by default, or
    # through playbooks/drill.yml with stage_local=ansible; both pass the same way.
    inv = tmp_path / "local.yml"
    entries = yaml.safe_load(site["inventory"].read_text())
    hostvars = entries["all"]["children"]["lab"]["hosts"][HOST]
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "vault_mhq_password": SECRET,
        "mhops_databases": hostvars["mhops_databases"]}}}}))
    for how, via in (("direct", "in-process"), ("ansible", "ansible")):
        out = drill.run(_opts(site, inventory=[str(inv)], limit=None, name=NAMES["postgresql"],
                              stage_local=how))
        r = out.record
        assert out.exit_code == 0, r["reason"]
        assert r["staging"]["transfer"] == "in_place" and r["staging"]["via"] == via
        assert r["staging"]["released"] is True
    _clean(site, "postgresql")


def test_ctrl_c_while_staging_tears_down_and_records(site):
    code = (
        "import sys; from pathlib import Path; from mhops import drill\n"
        f"o = drill.Options(records_dir=Path({str(site['records'])!r}), "
        f"inventory=[{str(site['inventory'])!r}], limit={HOST!r}, name='mhq_pg', "
        f"scratch_dir={str(site['scratch'])!r}, echo=lambda line: None)\n"
        "sys.exit(drill.run(o).exit_code)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(site["scratch"].glob("mhops-stage-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    try:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
        stderr = proc.stderr.read()
        assert rc == 2, stderr
        newest = max((p for p in site["records"].iterdir() if p.name.endswith("-drill")),
                     key=lambda p: p.stat().st_mtime)
        r = json.loads((newest / "record.json").read_text())
        assert r["interrupted"] is True and "SIGINT" in r["reason"]
        assert r["teardown"]["instance_stopped"] and r["teardown"]["folder_removed"]
        assert not list(site["scratch"].glob("mhops-drill-*"))
        assert not list(site["scratch"].glob("mhops-stage-*"))
    finally:
        # Cancelled mid-stage, the .in-use line may remain on purpose (the record says
        # so); removed even when an assertion fails, so the next test starts clean.
        (site["backups"] / NAMES["postgresql"] / ".in-use").unlink(missing_ok=True)


def test_unreachable_db_host_fails_the_drill(site, tmp_path):
    data = yaml.safe_load(site["inventory"].read_text())
    with socket.socket() as s:  # nothing will listen here: our own octet, a port just freed
        s.bind(("127.0.0.61", 0))
        port = s.getsockname()[1]
    gone = dict(data["all"]["children"]["lab"]["hosts"][HOST], ansible_port=port)
    inv = tmp_path / "gone.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"mhqgone": gone}}}))
    out = drill.run(_opts(site, inventory=[str(inv)], limit="mhqgone", name=NAMES["postgresql"]))
    r = out.record
    assert out.exit_code == 2 and "mhqgone is unreachable" in r["reason"]
    assert next(s for s in r["steps"] if s["step"] == "fetch")["status"] == "failed"
    assert r["teardown"]["instance_stopped"] and r["teardown"]["folder_removed"]
    _clean(site, "postgresql")
