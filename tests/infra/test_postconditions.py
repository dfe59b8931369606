"""Testinfra: what an inspection leaves on the control node.

Record files present and private, cursor files updated to the end of each log, no
half-written run folders, the lock released.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

import pytest
import testinfra
from conftest import make_workspace


@pytest.fixture(scope="module")
def done(tmp_path_factory, lab):
    from mhops import inspect

    ws = make_workspace(tmp_path_factory.mktemp("post"), lab)
    for name in ws.logs:
        ws.write(name, "ERROR something broke", "INFO fine")
    started = time.time()
    out = inspect.run(inspect.Options(inventory=[str(ws.inventory)], records_dir=ws.records,
                                      state_dir=ws.state, echo=lambda s: None))
    return ws, out, started


@pytest.fixture(scope="module")
def control():
    return testinfra.get_host("local://")


@pytest.mark.parametrize("name", ["record.json", "record.md", "record.html"])
def test_record_file_is_present_and_private(done, control, name):
    _, out, _ = done
    f = control.file(str(out.record_dir / name))
    assert f.is_file and f.size > 0
    assert f.mode == 0o600
    assert f.user == control.user().name


@pytest.mark.parametrize("which", ["run", "records"])
def test_folders_are_not_world_readable(done, control, which):
    ws, out, _ = done
    path = out.record_dir if which == "run" else ws.records
    d = control.file(str(path))
    assert d.is_directory and d.mode & 0o077 == 0


@pytest.mark.parametrize("host", ["lab1", "lab2", "lab3"])
def test_cursor_file_updated_to_end_of_log(done, control, host):
    ws, _, started = done
    f = control.file(str(ws.state / "cursors" / f"{host}.json"))
    assert f.is_file and f.mode == 0o600
    assert f.mtime.timestamp() >= started - 1
    cursor = json.loads(f.content_string)[str(ws.log(host))]
    assert cursor["offset"] == ws.log(host).stat().st_size
    assert cursor["ino"] == ws.log(host).stat().st_ino


def test_no_half_written_run_folders(done, control):
    ws, _, _ = done
    assert [p for p in os.listdir(ws.records) if p.startswith(".")] == []


def test_lock_released(done):
    ws, _, _ = done
    with open(ws.state / "inspect.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises if still held


@pytest.fixture(scope="module")
def remote(done):
    """Testinfra hosts resolved by mhops.inventory: the same resolution Ansible and Fabric use."""
    from mhops.inventory import select, testinfra_host

    ws, _, _ = done
    sel = select([str(ws.inventory)])
    return ws, {h.name: (h, testinfra_host(h, sel.sources)) for h in sel.hosts}


@pytest.mark.parametrize("name", ["lab1", "lab2", "lab3"])
def test_inspected_log_is_where_the_cursor_says_over_ssh(remote, name):
    ws, hosts = remote
    host, ti = hosts[name]
    assert not host.local and ti.backend.NAME == "ansible"  # over SSH via ansible.cfg
    f = ti.file(str(ws.log(name)))
    assert f.exists and f.size == ws.log(name).stat().st_size
    assert ti.socket(f"tcp://{host.vars['ansible_host']}:{host.vars['ansible_port']}"
                     ).is_listening
