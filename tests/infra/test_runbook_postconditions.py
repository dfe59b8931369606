"""Testinfra: what a runbook run leaves behind (tls-expiry on localhost as the sample).

The renewed certificate valid for the configured time, the record files present and
private, no half-written run folders, the per-host lock released.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys

import pytest
import testinfra
import yaml

from mhops import runbook


def _cert(path, days: int) -> str:
    return (f"openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=mhk-rb-infra.test "
            f"-keyout {path}.key -out {path} -days {days} 2>/dev/null")


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    root = tmp_path_factory.mktemp("rbpost")
    cert = root / "gw.pem"
    subprocess.run(_cert(cert, 2), shell=True, check=True)
    inv = root / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
        "mhops_runbooks": {"tls-expiry": {"cert_files": [str(cert)],
                                          "renew": _cert(cert, 365)}}}}}}))
    out = runbook.run(runbook.Options(
        name="tls-expiry", host="localhost", inventory=[str(inv)], yes=True,
        records_dir=root / "records", state_dir=root / "state", echo=lambda s: None))
    assert out.record["outcome"] == "resolved"
    return root, cert, out


@pytest.fixture(scope="module")
def control():
    return testinfra.get_host("local://")


@pytest.mark.parametrize("days", [30, 300])
def test_certificate_valid_beyond(done, control, days):
    _, cert, _ = done
    assert control.run(f"openssl x509 -checkend {days * 86400} -noout -in {cert}").rc == 0


@pytest.mark.parametrize("name", ["record.json", "record.md", "record.html"])
def test_record_file_is_present_and_private(done, control, name):
    _, _, out = done
    f = control.file(str(out.record_dir / name))
    assert f.is_file and f.size > 0 and f.mode == 0o600


def test_run_folder_is_private(done, control):
    _, _, out = done
    assert control.file(str(out.record_dir)).mode & 0o077 == 0


def test_no_half_written_run_folders(done):
    root, _, _ = done
    assert [p for p in os.listdir(root / "records") if p.startswith(".")] == []


def test_host_lock_released(done):
    root, _, _ = done
    with open(root / "state" / "runbook-localhost.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held
