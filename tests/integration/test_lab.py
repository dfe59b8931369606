"""Integration tests for mhops.lab: real sshd processes on loopback, no mocks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mhops.lab import LabHost, SshLab

# The ansible of the environment running the tests, not a path from one machine.
VENV_BIN = Path(sys.executable).parent
ANSIBLE = VENV_BIN / "ansible"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory):
    with SshLab(tmp_path_factory.mktemp("lab"), 3) as running:
        yield running


def ssh(lab: SshLab, host: LabHost, *command: str, known_hosts: Path | None = None, **kw):
    # -F none and an empty global file keep this machine's ssh config out of the verdict.
    argv = [
        "ssh", "-F", "none",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts or lab.known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "IdentitiesOnly=yes",
        "-o", "ConnectTimeout=5",
        "-i", str(lab.client_key),
        "-p", str(host.port),
        f"root@{host.address}",
        *command,
    ]  # fmt: skip
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=30, **kw)


def refuses(host: LabHost) -> bool:
    try:
        socket.create_connection((host.address, host.port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_hosts_and_known_hosts(lab: SshLab):
    assert [h.name for h in lab.hosts] == ["lab1", "lab2", "lab3"]
    assert [h.address for h in lab.hosts] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert all(h.port > 1024 for h in lab.hosts)
    lines = lab.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [f"[{h.address}]:{h.port}" for h in lab.hosts]
    assert {tuple(line.split()[1:3]) for line in lines} == {
        tuple((lab.workdir / "host_key.pub").read_text().split()[:2])
    }


def test_ssh_with_known_hosts_succeeds(lab: SshLab):
    for host in lab.hosts:
        result = ssh(lab, host, "hostname")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == socket.gethostname()


def test_ssh_with_empty_known_hosts_fails(lab: SshLab, tmp_path: Path):
    empty = tmp_path / "known_hosts"
    empty.touch()
    result = ssh(lab, lab.hosts[0], "hostname", known_hosts=empty)
    assert result.returncode == 255
    assert "Host key verification failed" in result.stderr
    assert empty.read_text() == ""


def test_inventory_shape(lab: SshLab, tmp_path: Path):
    gone = lab.unreachable_host()
    inv = lab.inventory(extra_hosts=[gone], hostvars={"lab2": {"role": "db"}}, group="ward")
    hosts = inv["all"]["children"]["ward"]["hosts"]
    assert list(hosts) == ["lab1", "lab2", "lab3", "gone"]
    assert hosts["lab1"] == {
        "ansible_host": "127.0.0.2",
        "ansible_port": lab.hosts[0].port,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab.client_key),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={lab.known_hosts} "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
        "ansible_python_interpreter": "/usr/bin/python3",
    }
    assert hosts["lab2"]["role"] == "db"
    assert (hosts["gone"]["ansible_host"], hosts["gone"]["ansible_port"]) == (
        gone.address,
        gone.port,
    )
    written = lab.write_inventory(tmp_path / "inv.yml", hostvars={"lab2": {"role": "db"}})
    assert yaml.safe_load(written.read_text()) == lab.inventory(hostvars={"lab2": {"role": "db"}})


def test_ansible_ping_all(lab: SshLab, tmp_path: Path):
    inventory = lab.write_inventory(tmp_path / "inventory.yml")
    (tmp_path / "ansible.cfg").touch()
    env = {
        **os.environ,
        # An empty config keeps any project or user ansible.cfg from changing the verdict.
        "ANSIBLE_CONFIG": str(tmp_path / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp_path / "ansible-home"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(tmp_path / "cp"),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_NOCOLOR": "1",
    }
    result = subprocess.run(
        [str(ANSIBLE), "all", "-i", str(inventory), "-m", "ansible.builtin.ping", "-o"],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for host in lab.hosts:
        assert f"{host.name} | SUCCESS" in result.stdout, result.stdout


def test_unreachable_host_refuses(lab: SshLab):
    gone = lab.unreachable_host()
    assert gone.name == "gone"
    assert gone.port > 1024
    assert gone.address not in {h.address for h in lab.hosts}
    assert refuses(gone)


def _gone_or_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_stop_kills_sshd_and_sessions(tmp_path: Path):
    # A lab of its own: stopping the shared module lab would break the other tests.
    lab = SshLab(tmp_path / "lab", 2, first_octet=40, prefix="stop").start()
    host = lab.hosts[0]
    session = subprocess.Popen(
        ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "IdentitiesOnly=yes",
         "-i", str(lab.client_key), "-p", str(host.port), f"root@{host.address}",
         "echo $$; exec sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        remote_pid = int(session.stdout.readline())
        assert not _gone_or_zombie(remote_pid)
        sshd_pids = [p.pid for p in lab._procs.values()]

        lab.stop()

        assert all(refuses(h) for h in lab.hosts)
        assert session.wait(timeout=5) != 0
        deadline = time.monotonic() + 5
        while not all(map(_gone_or_zombie, [remote_pid, *sshd_pids])):
            assert time.monotonic() < deadline, "sshd or its session outlived stop()"
            time.sleep(0.05)
        lab.stop()
    finally:
        session.kill()
        session.wait()
        lab.stop()
