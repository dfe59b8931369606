"""Ansible connection variables translated for Fabric the way OpenSSH reads them."""

import pytest

from mhops.errors import MhopsError
from mhops.inventory import Host, ssh_params


def _host(**v):
    return Host(name="h1", groups=(), vars=v)


def test_connection_variables(tmp_path):
    kh, gk = tmp_path / "kh", tmp_path / "global"
    kh.write_text("")
    gk.write_text("")
    p = ssh_params(_host(ansible_host="127.0.0.9", ansible_port=2200, ansible_user="ops",
                         ansible_ssh_private_key_file="/k",
                         ansible_ssh_common_args=f"-o UserKnownHostsFile={kh} "
                                                 f"-oGlobalKnownHostsFile={gk}",
                         ansible_python_interpreter="/usr/bin/python3.11"))
    assert (p.host, p.port, p.user, p.key_filename) == ("127.0.0.9", 2200, "ops", "/k")
    assert p.known_hosts == (str(kh), str(gk))
    assert p.host_key_checking and p.python == "/usr/bin/python3.11" and p.become is None


def test_defaults_and_missing_files_skipped(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = ssh_params(_host(ansible_python_interpreter="auto_silent"))
    assert p.host == "h1" and p.port == 22 and p.python == "python3"
    assert all(k != str(tmp_path / ".ssh/known_hosts") for k in p.known_hosts)
    (tmp_path / ".ssh").mkdir()
    (tmp_path / ".ssh/known_hosts").write_text("")
    assert str(tmp_path / ".ssh/known_hosts") in ssh_params(_host()).known_hosts


def test_become_sudo_and_unsupported_method():
    assert ssh_params(_host(ansible_become=True)).become == "root"
    with pytest.raises(MhopsError, match="use --transport ansible"):
        ssh_params(_host(ansible_become=True, ansible_become_method="su"))
