"""Testinfra: what `invoke patch` leaves behind after upgrading the dummy package.

One patch run over a loopback SSH host (``tests/debrepo.py``: only ``mhs-dummy`` can be
upgraded), then one case per post-condition on that host and on the control node.
"""

from __future__ import annotations

import fcntl
import os

import pytest
import testinfra

from mhops import inventory, patch
from mhops.lab import SshLab
from tests import debrepo


@pytest.fixture(scope="module")
def patched(tmp_path_factory):
    root = tmp_path_factory.mktemp("patchpost")
    built = debrepo.build(root / "apt")
    debrepo.purge()
    debrepo.install(built["v1"])
    try:
        with SshLab(root / "lab", 1, first_octet=64, prefix="mhs") as lab:
            h = lab.hosts[0]
            inv = lab.write_inventory(root / "hosts.yml", hostvars={h.name: {
                **built["vars"], "mhops_inspect_ports": [h.port]}}, group="mhs_app")
            out = patch.run(patch.Options(inventory=[str(inv)], records_dir=root / "records",
                                          state_dir=root / "state", yes=True,
                                          echo=lambda s: None))
            host = inventory.select([str(inv)]).hosts[0]
            yield {"out": out, "remote": inventory.testinfra_host(host, [str(inv)]), "root": root}
    finally:
        debrepo.purge()


@pytest.fixture(scope="module")
def control():
    return testinfra.get_host("local://")


def test_package_upgraded_to_the_planned_version(patched):
    pkg = patched["remote"].package(debrepo.PKG)
    assert pkg.is_installed and pkg.version == "2.0"


def test_new_files_in_place(patched):
    f = patched["remote"].file(f"/usr/share/{debrepo.PKG}/VERSION")
    assert f.is_file and f.content_string.strip() == "2.0"


def test_no_interrupted_transaction_left(patched):
    assert patched["remote"].check_output("dpkg --audit") == ""


def test_dpkg_lock_released(patched):
    fd = os.open("/var/lib/dpkg/lock-frontend", os.O_RDWR)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if a patch run still held it
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["record.json", "record.md", "record.html"])
def test_record_file_is_present_and_private(patched, control, name):
    f = control.file(str(patched["out"].record_dir / name))
    assert f.is_file and f.size > 0 and f.mode == 0o600


def test_run_lock_released(patched):
    with open(patched["root"] / "state" / "patch.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_reboot_flag_reported_not_acted_on(patched):
    host = patched["out"].record["hosts"][0]
    assert host["reboot"]["required"] and not host["reboot"]["done"]
