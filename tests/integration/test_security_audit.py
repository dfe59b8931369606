"""`invoke security.audit` over a loopback SSH host and localhost, for real.

The auth log is a file the test writes: failed logins from documentation-range
addresses (192.0.2.x, 198.51.100.x, 203.0.113.x; no traffic is sent anywhere), a
planted fake ID number and a planted password. A world-writable file sits in an
application folder, and two TLS servers with a self-signed certificate listen on
loopback: one modern, one that still accepts TLS 1.0.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from mhops import security_audit
from mhops.lab import SshLab
from tests.conftest import FAKE_ID, no_leak

SECRET = "S3cretPassw0rd-mhs"


def _syslog(t: datetime) -> str:
    return f"{t:%b} {t.day:2d} {t:%H:%M:%S}"


def auth_lines(start: datetime, burst: int = 12) -> list[str]:
    lines = []
    for i in range(burst):  # one attempt every 2 s from one address: a burst
        t = start + timedelta(seconds=2 * i)
        lines.append(f"{_syslog(t)} gw sshd[{100 + i}]: Failed password for root from "
                     f"192.0.2.44 port {40000 + i} ssh2")
    t = start + timedelta(minutes=5)
    lines += [
        f"{_syslog(t)} gw sshd[200]: Invalid user {FAKE_ID} from 198.51.100.7 port 5",
        f"{_syslog(t)} gw sshd[200]: Failed password for invalid user {FAKE_ID} from "
        "198.51.100.7 port 5 ssh2",
        f"{_syslog(t)} gw sshd[201]: Accepted password for deploy from 203.0.113.9 port 6 ssh2",
        f"{_syslog(t)} gw sshd[202]: Accepted publickey for ops from 127.0.0.1 port 7 ssh2",
        f"{_syslog(t)} gw sudo:    alice : 3 incorrect password attempts ; TTY=pts/0 ; "
        f"PWD=/srv ; USER=root ; COMMAND=/usr/bin/mysql -p{SECRET} --note {FAKE_ID}",
        f"{_syslog(t)} gw CRON[9]: pam_unix(cron:session): session opened for user root",
    ]
    return lines


class TlsServer:
    """A loopback TLS endpoint with a self-signed certificate, served from a thread."""

    def __init__(self, cert: Path, key: Path, oldest: ssl.TLSVersion):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.minimum_version = oldest
        if oldest < ssl.TLSVersion.TLSv1_2:
            self.ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def site(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(key), "-out", str(cert), "-days", "5", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    modern = TlsServer(cert, key, ssl.TLSVersion.TLSv1_2)
    old = TlsServer(cert, key, ssl.TLSVersion.TLSv1)
    app = tmp_path / "srv" / "app"
    (app / "uploads").mkdir(parents=True)
    (app / "config.ini").write_text("ok\n")
    loose = app / "uploads" / "loose.txt"
    loose.write_text("x\n")
    loose.chmod(0o666)
    sticky = app / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # a sticky shared folder is writable by design
    auth = tmp_path / "log" / "auth.log"
    auth.parent.mkdir()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    auth.write_text("\n".join(auth_lines(start)) + "\n")
    settings = {
        "mhops_security_audit_auth_logs": [str(auth)],
        "mhops_security_audit_app_dirs": [str(app)],
        "mhops_security_audit_login_allowlist": ["127.0.0.0/8"],
        "mhops_security_audit_tls": [
            {"name": "gw", "host": "127.0.0.1", "port": modern.port},
            {"name": "legacy", "host": "127.0.0.1", "port": old.port}],
        "mhops_security_audit_firewall_required": False,
        "mhops_security_audit_ports_allowed": ["1-65535"],
    }
    yield {"root": tmp_path, "auth": auth, "settings": settings, "start": start,
           "loose": loose}
    modern.close()
    old.close()


def _run(site, inventory: Path, **kw):
    lines: list[str] = []
    out = security_audit.run(security_audit.Options(
        inventory=[str(inventory)], records_dir=site["root"] / "records",
        state_dir=site["root"] / "state", echo=lines.append, operator="测试员", **kw))
    out.lines = lines
    return out


def result(rec: dict, check: str, target: str | None = None) -> dict:
    host = rec["hosts"][0]
    found = [r for r in host["results"] if r["check"] == check
             and (target is None or r["target"].startswith(target))]
    assert found, f"no {check} result"
    return found[0]


def test_audit_over_ssh_flags_injected_logins_and_counts_only_new_lines(site, tmp_path):
    with SshLab(tmp_path / "lab", 1, first_octet=64, prefix="mhs") as lab:
        h = lab.hosts[0]
        inv = lab.write_inventory(tmp_path / "hosts.yml",
                                  hostvars={h.name: site["settings"]}, group="mhs_gateway")
        first = _run(site, inv, lang="en")
        rec = json.loads((first.record_dir / "record.json").read_text())
        assert rec["kind"] == "security_audit" and rec["headline"].startswith("Security audit")
        failed = result(rec, "failed_logins")
        assert failed["value"] == 13 and failed["status"] == "warning"
        burst = result(rec, "bruteforce")
        assert burst["status"] == "warning" and burst["value"] == 1
        assert rec["hosts"][0]["logins"]["bursts"][0]["source"] == "192.0.2.44"
        assert rec["hosts"][0]["logins"]["bursts"][0]["failures"] == 12
        outside = result(rec, "logins_outside_allowlist")
        assert outside["status"] == "critical" and "203.0.113.9" in outside["explanation"]
        assert result(rec, "successful_logins")["value"] == 2
        assert result(rec, "sudo_failures")["value"] == 3
        ww = result(rec, "world_writable")
        assert ww["value"] == 1 and ww["status"] == "warning"
        assert any(str(site["loose"]) in s for s in ww["samples"])
        assert result(rec, "tls_days_left", "gw")["status"] == "critical"  # 5 days left
        assert result(rec, "tls_protocols", "gw")["status"] == "normal"
        legacy = result(rec, "tls_protocols", "legacy")
        assert legacy["status"] == "warning" and "TLSv1" in legacy["explanation"]
        assert result(rec, "sshd", "permitrootlogin")["status"] in ("normal", "critical")
        assert rec["exit_code"] == first.exit_code == 2
        for key in ("schema_version", "run_id", "lang", "status", "exit_code", "time",
                    "operator", "headline"):
            assert key in rec

        # Only lines added after the first audit count in the second.
        t = datetime.now(UTC)
        with site["auth"].open("a") as fh:
            for i in range(2):
                fh.write(f"{_syslog(t)} gw sshd[9{i}]: Failed password for admin from "
                         f"198.51.100.23 port {50000 + i} ssh2\n")
        second = _run(site, inv, lang="en")
        rec2 = second.record
        assert result(rec2, "failed_logins")["value"] == 2
        assert result(rec2, "bruteforce")["value"] == 0
        assert result(rec2, "logins_outside_allowlist")["status"] == "normal"
        third = _run(site, inv, transport="ansible")  # nothing new, via ansible-runner
        assert result(third.record, "failed_logins")["value"] == 0
    no_leak([site["root"] / "records"], FAKE_ID, SECRET)
    assert not any(FAKE_ID in line or SECRET in line
                   for line in first.lines + second.lines + third.lines)


def test_rotation_is_followed_and_cursors_are_separate_from_inspections(site):
    inv = site["root"] / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        **site["settings"]}}}}))
    _run(site, inv)
    auth = site["auth"]
    t = datetime.now(UTC)
    with auth.open("a") as fh:  # written just before logrotate renames the file
        fh.write(f"{_syslog(t)} gw sshd[1]: Failed password for root from 192.0.2.5 "
                 "port 1 ssh2\n")
    os.replace(auth, auth.with_name("auth.log.1"))
    auth.write_text(f"{_syslog(t)} gw sshd[2]: Failed password for root from 192.0.2.6 "
                    "port 2 ssh2\n")
    out = _run(site, inv, lang="en")
    assert result(out.record, "failed_logins")["value"] == 2
    assert (site["root"] / "state" / "security_audit" / "cursors" / "localhost.json").exists()
    assert not (site["root"] / "state" / "cursors").exists()


def test_unreachable_host_is_critical_and_others_still_audited(site, tmp_path):
    with SshLab(tmp_path / "lab", 1, first_octet=64, prefix="mhs") as lab:
        h, gone = lab.hosts[0], lab.unreachable_host("mhs_gone")
        inv = lab.write_inventory(tmp_path / "hosts.yml", extra_hosts=[gone],
                                  hostvars={h.name: site["settings"]}, group="mhs_gateway")
        out = _run(site, inv, connect_timeout=3)
    hosts = {e["host"]: e for e in out.record["hosts"]}
    assert not hosts[gone.name]["reachable"] and hosts[gone.name]["status"] == "critical"
    assert hosts[h.name]["reachable"] and hosts[h.name]["results"]
    assert out.exit_code == 2
    assert (out.record_dir / "record.html").stat().st_size > 0
    assert not (site["root"] / "state" / "security_audit" / "cursors" / "mhs_gone.json").exists()


def test_bad_setting_is_refused_with_file_and_line(site):
    from mhops.errors import MhopsError

    inv = site["root"] / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "mhops_security_audit_login_allowlist": ["10.0.0.0/33"]}}}}))
    with pytest.raises(MhopsError, match="login_allowlist") as err:
        _run(site, inv)
    assert "hosts.yml" in str(err.value)
    assert not (site["root"] / "records").exists()
