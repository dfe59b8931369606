"""The database-care chain as an operator runs it: seed, back up, check, drill — via invoke.

Each step is the real command line with its exit code; the backup written by
`backup.run` is the one `drill restore` proves restorable.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO

DB = "mhe_chain"


def _invoke(env, *args, ok=(0,)):
    out = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode in ok, f"{args}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


@pytest.fixture
def site():
    # postgres/mysql must be able to enter the drill's scratch parent: not a 0700 tmp_path.
    root = Path(tempfile.mkdtemp(prefix="mhops-e2e-"))
    os.chmod(root, 0o711)
    inv = root / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "mhops_databases": [
            {"name": "chain_pg", "engine": "postgresql", "host": "127.0.0.1", "port": 5432,
             "user": "postgres", "password": "", "database": DB, "production": False},
            {"name": "chain_my", "engine": "mariadb", "host": "127.0.0.1", "port": 3306,
             "user": "root", "password": "", "database": DB, "production": False},
        ]}}}}))
    env = dict(os.environ, INVOKE_MHOPS_RECORDS_DIR=str(root / "records"),
               INVOKE_MHOPS_STATE_DIR=str(root / "state"), INVOKE_BACKUP_DIR=str(root / "bk"),
               INVOKE_DRILL_SCRATCH_DIR=str(root), INVOKE_DEMO_DATABASE=DB)
    yield root, inv, env
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc",
                    f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)"], check=False)
    subprocess.run(["mariadb", "--no-defaults", "-h", "127.0.0.1", "-u", "root", "-e",
                    f"DROP DATABASE IF EXISTS {DB}"], check=False)
    subprocess.run(["rm", "-rf", str(root)], check=False)


def test_seed_backup_check_drill(site):
    root, inv, env = site
    _invoke(env, "demo.seed-db", "--drop")
    _invoke(env, "backup.run", "-i", str(inv))
    dumps = sorted((root / "bk").rglob("*.manifest.json"))
    assert {p.parent.name for p in dumps} == {"chain_pg", "chain_my"}
    _invoke(env, "backup.check", "-i", str(inv))
    for engine, name in (("postgresql", "chain_pg"), ("mariadb", "chain_my")):
        _invoke(env, "drill", "restore", "-i", str(inv), "--engine", engine, "--name", name)
    kinds = sorted(p.name.split("-", 1)[1] for p in (root / "records").iterdir()
                   if not p.name.startswith("."))
    assert kinds == ["backup_check", "backup_run", "drill", "drill"]
    drills = [json.loads((p / "record.json").read_text())
              for p in (root / "records").iterdir() if p.name.endswith("-drill")]
    assert all(d["exit_code"] == 0 for d in drills)
    # The demo data holds fake ID-card and mobile numbers; none may reach a record.
    for f in (root / "records").rglob("record.*"):
        text = f.read_text()
        assert not re.search(r"(?<!\d)\d{17}[\dXx](?!\d)", text), f
        assert not re.search(r"(?<!\d)1390000\d{4}(?!\d)", text), f
