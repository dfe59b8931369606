"""`invoke patch` for real: a check on localhost, and an apply of a dummy package.

The dummy package ``mhs-dummy`` (v1, v2) is built with dpkg-deb and served from a
``file:`` apt repository under a temp folder (``tests/debrepo.py``): the apply upgrades
exactly that package and nothing else on this machine, and the tests purge it afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from mhops import patch
from mhops.lab import SshLab
from tests import debrepo
from tests.conftest import FAKE_ID, no_leak

PKG = debrepo.PKG
FRONTEND = "/var/lib/dpkg/lock-frontend"
LOCAL = {"ansible_connection": "local",
         "ansible_python_interpreter": "{{ ansible_playbook_python }}"}


def _dpkg_l() -> str:
    return subprocess.run(["dpkg", "-l"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def repo(tmp_path):
    """v2 in a local security-labelled repository, v1 ready to install; purged after."""
    built = debrepo.build(tmp_path / "apt")
    debrepo.purge()
    yield built
    debrepo.purge()


def _inventory(path: Path, hosts: dict) -> Path:
    path.write_text(yaml.safe_dump({"all": {"children": {"mhs_app": {"hosts": hosts}}}}))
    return path


def _run(tmp_path: Path, inventory: Path, **kw) -> patch.Options:
    lines: list[str] = []
    opts = patch.Options(inventory=[str(inventory)], records_dir=tmp_path / "records",
                         state_dir=tmp_path / "state", echo=lines.append,
                         operator=f"测试员 {FAKE_ID}", **kw)
    out = patch.run(opts)
    out.lines = lines
    return out


def _lists() -> list[tuple[str, float]]:
    lists = Path("/var/lib/apt/lists")
    return sorted((p.name, p.stat().st_mtime) for p in lists.iterdir() if p.is_file())


def test_check_on_localhost_lists_updates_and_changes_nothing(tmp_path):
    inv = _inventory(tmp_path / "hosts.yml", {"localhost": LOCAL})
    before, lists = _dpkg_l(), _lists()
    sim = subprocess.run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"],
                         capture_output=True, text=True, check=True).stdout
    out = _run(tmp_path, inv, check=True, lang="en")
    assert _dpkg_l() == before and _lists() == lists
    rec = json.loads((out.record_dir / "record.json").read_text())
    assert rec["kind"] == "patch" and rec["check_mode"] and rec["outcome"] == "checked"
    assert out.exit_code == 0 and rec["headline"].startswith("Patch check")
    host = rec["hosts"][0]
    assert host["manager"] == "apt"
    assert host["pending"]["total"] == sim.count("\nInst ")
    assert all(p["after"] is None for p in host["packages"])
    assert host["pending"]["security"] == sum(p["security"] for p in host["packages"])
    for key in ("schema_version", "run_id", "lang", "status", "exit_code", "time", "operator"):
        assert key in rec
    assert any("->" in line for line in out.lines) or host["pending"]["total"] == 0
    no_leak([out.record_dir], FAKE_ID)


def test_invoke_patch_check_cli(tmp_path):
    """The task itself: options, invoke.yaml fallbacks and the exit code."""
    import sys

    inv = _inventory(tmp_path / "hosts.yml", {"localhost": LOCAL})
    env = dict(os.environ, INVOKE_MHOPS_RECORDS_DIR=str(tmp_path / "records"),
               INVOKE_MHOPS_STATE_DIR=str(tmp_path / "state"))
    before = _dpkg_l()
    res = subprocess.run([str(Path(sys.executable).parent / "invoke"), "patch", "--check",
                          "-i", str(inv), "--lang", "en", "--serial", "2"],
                         cwd=Path(patch.__file__).parents[1], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "nothing was changed" in res.stdout and _dpkg_l() == before
    rec = json.loads(next((tmp_path / "records").glob("*-patch/record.json")).read_text())
    assert rec["settings"]["serial"] == 2 and rec["check_mode"]


def test_apply_upgrades_dummy_package_on_loopback_host(tmp_path, repo):
    debrepo.install(repo["v1"])
    with SshLab(tmp_path / "lab", 1, first_octet=64, prefix="mhs") as lab:
        h = lab.hosts[0]
        inv = lab.write_inventory(tmp_path / "hosts.yml", hostvars={h.name: {
            **repo["vars"], "mhops_inspect_ports": [h.port],
            "mhops_inspect_processes": [{"name": "sshd", "match": "sshd"}]}}, group="mhs_app")
        dry = _run(tmp_path, inv, check=True)
        assert debrepo.installed() == "1.0"
        assert [p["name"] for p in dry.record["hosts"][0]["packages"]] == [PKG]
        out = _run(tmp_path, inv, yes=True, serial=1)
    assert debrepo.installed() == "2.0"
    rec = json.loads((out.record_dir / "record.json").read_text())
    host = rec["hosts"][0]
    assert host["outcome"] == "patched" and rec["outcome"] == "patched"
    assert host["packages"] == [{"name": PKG, "before": "1.0", "candidate": "2.0",
                                 "after": "2.0", "security": True,
                                 "origins": ["mhs-Security:mhs-security"],
                                 "action": "upgrade", "upgraded": True}]
    assert host["security_flagged"] == [PKG]
    assert {(v["check"], v["ok"]) for v in host["verification"]} == {("port", True),
                                                                      ("process", True)}
    # v2's postinst asked for a reboot, which was not allowed: a warning, not done.
    assert host["reboot"] == {"required": True, "packages": [PKG], "allowed": False,
                              "done": False}
    assert rec["status"] == "warning" and out.exit_code == 1
    assert rec["batches"] == [[h.name]]
    no_leak([out.record_dir], FAKE_ID)


def test_failed_verification_stops_later_batches(tmp_path, repo):
    debrepo.install(repo["v1"])
    with SshLab(tmp_path / "lab", 2, first_octet=64, prefix="mhs") as lab:
        first, second = lab.hosts
        gone = lab.unreachable_host("mhs_gone")
        closed = lab.unreachable_host("mhs_closed").port  # free a moment ago: not listening
        inv = lab.write_inventory(tmp_path / "hosts.yml", extra_hosts=[gone], hostvars={
            first.name: {**repo["vars"], "mhops_inspect_ports": [closed]},
            second.name: {**repo["vars"], "mhops_inspect_ports": [second.port]},
            gone.name: repo["vars"]}, group="mhs_app")
        out = _run(tmp_path, inv, yes=True, serial=1, lang="en")
    hosts = {h["host"]: h for h in out.record["hosts"]}
    assert hosts[first.name]["outcome"] == "unverified"
    assert hosts[first.name]["verification"] == [
        {"check": "port", "target": str(closed), "ok": False}]
    assert hosts[first.name]["packages"][0]["after"] == "2.0"
    assert hosts[second.name]["outcome"] == "not_attempted"
    assert hosts[second.name]["status"] == "warning"
    assert hosts[gone.name]["outcome"] == "failed" and hosts[gone.name]["error"]
    assert out.record["batches"] == [[first.name]]
    assert out.exit_code == 2 and out.record["outcome"] == "failed"
    assert any(c["status"] == "critical" and c["name"].startswith("verify port")
               for c in patch.cases(out.record))


def test_held_dpkg_lock_is_named_and_nothing_changes(tmp_path, repo):
    debrepo.install(repo["v1"])
    inv = _inventory(tmp_path / "hosts.yml", {"localhost": {**LOCAL, **repo["vars"]}})
    fd = os.open(FRONTEND, os.O_RDWR | os.O_CREAT, 0o640)
    deadline = time.monotonic() + 60
    while True:  # another apt run may hold it for a moment: wait, then hold it ourselves
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            assert time.monotonic() < deadline, "dpkg lock-frontend busy for a minute"
            time.sleep(0.5)
    try:
        t0 = time.monotonic()
        out = _run(tmp_path, inv, yes=True, lock_timeout=2, lang="en")
        waited = time.monotonic() - t0
    finally:
        os.close(fd)
    assert debrepo.installed() == "1.0"
    host = out.record["hosts"][0]
    assert out.exit_code == 2 and host["outcome"] == "failed"
    assert FRONTEND in host["error"] and f"pid {os.getpid()}" in host["error"]
    assert waited < 60
    assert FRONTEND in (out.record_dir / "record.md").read_text()


def test_interrupted_transaction_is_refused_then_repaired(tmp_path, repo):
    # dpkg --unpack without --configure is what a run killed half-way leaves behind.
    subprocess.run(["dpkg", "--unpack", str(repo["v1"])], check=True, capture_output=True)
    assert subprocess.run(["dpkg", "--audit"], capture_output=True, text=True).stdout.strip()
    inv = _inventory(tmp_path / "hosts.yml", {"localhost": {**LOCAL, **repo["vars"]}})
    refused = _run(tmp_path, inv, yes=True, lang="en")
    host = refused.record["hosts"][0]
    assert refused.exit_code == 2 and "interrupted" in host["error"]
    assert "--repair" in host["error"] and host["interrupted_transaction"]
    assert subprocess.run(["dpkg", "--audit"], capture_output=True, text=True).stdout.strip()
    repaired = _run(tmp_path, inv, yes=True, repair=True, lang="en")
    host = repaired.record["hosts"][0]
    assert host["outcome"] == "patched", host["error"]
    assert debrepo.installed() == "2.0"
    assert not subprocess.run(["dpkg", "--audit"], capture_output=True, text=True).stdout.strip()


def test_unconfirmed_plan_changes_nothing(tmp_path, repo):
    from mhops.errors import MhopsError

    debrepo.install(repo["v1"])
    inv = _inventory(tmp_path / "hosts.yml", {"localhost": {**LOCAL, **repo["vars"]}})
    with pytest.raises(MhopsError, match="not confirmed"):
        _run(tmp_path, inv, confirm=lambda question: False)
    assert debrepo.installed() == "1.0"
    assert not (tmp_path / "records").exists() or not any((tmp_path / "records").iterdir())
