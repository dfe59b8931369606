"""How a security audit judges one host's collector output (no host needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mhops import security_audit as sa
from mhops.errors import MhopsError
from mhops.inventory import Host

DATA = Path(__file__).resolve().parents[1] / "data"


def settings(**v):
    return sa.host_settings(Host("h1", ("mhs_app",), {f"mhops_security_audit_{k}": x
                                                      for k, x in v.items()}))


def raw(**over):
    base = {"collected_at": "2026-11-28T12:00:00Z", "year": 2026, "utc_offset_s": 0,
            "auth": [{"path": "/var/log/auth.log", "lines": [], "error": None}],
            "listening": [{"port": 22, "address": "0.0.0.0"}],
            "sshd": {"source": "sshd -T", "settings": [["permitrootlogin", "no"],
                                                       ["passwordauthentication", "no"]]},
            "updates": {"manager": "apt", "simulation": "", "error": None},
            "firewall": {"tools": ["nft"], "active": True, "rules": 4, "detail": "nftables"},
            "antivirus": {"present": False, "signature_age_hours": None},
            "world_writable": {"paths": [], "errors": []}, "tls": []}
    base.update(over)
    return base


def by_check(results):
    return {(r.check, r.target): r for r in results}


def test_clean_host_is_normal_where_measured():
    results, _ = sa.judge(raw(), settings(app_dirs=["/srv/app"], login_allowlist=["10.0.0.0/8"]))
    statuses = {r.check: r.status for r in results}
    assert statuses["firewall"] == "normal" and statuses["listening_ports"] == "normal"
    assert statuses["sshd"] == "normal" and statuses["security_updates"] == "normal"
    assert statuses["antivirus"] == "unknown"  # not required for this group
    assert all(s in ("normal", "unknown") for s in statuses.values())


def test_root_login_yes_is_critical_password_auth_a_warning():
    r = raw(sshd={"source": "/etc/ssh/sshd_config", "settings": [
        ["permitrootlogin", "yes"], ["passwordauthentication", "yes"], ["protocol", "2,1"]]})
    got = by_check(sa.judge(r, settings())[0])
    assert got[("sshd", "permitrootlogin")].status == "critical"
    assert got[("sshd", "passwordauthentication")].status == "warning"
    assert got[("sshd", "protocol")].status == "warning"
    assert "sshd_config" in got[("sshd", "permitrootlogin")].resolution


def test_pending_security_updates_use_the_patch_parser():
    sim = (DATA / "apt_sim_jammy.txt").read_text()
    got = by_check(sa.judge(raw(updates={"manager": "apt", "simulation": sim, "error": None}),
                            settings(thresholds={"security_updates": {"warning": 1,
                                                                      "critical": 2}}))[0])
    r = got[("security_updates", "apt")]
    assert r.value == 2 and r.status == "critical" and r.extra["packages"] == ["libssl3",
                                                                              "openssl"]


def test_firewall_antivirus_ports_and_tls():
    r = raw(firewall={"tools": ["iptables"], "active": False, "rules": 0},
            antivirus={"present": True, "signature_age_hours": 200.0},
            listening=[{"port": 22}, {"port": 6379}, {"port": 40000}],
            tls=[{"name": "gw", "host": "127.0.0.1", "port": 443, "days_left": 20.0,
                  "not_after": "x", "protocols": {"TLSv1": False, "TLSv1.1": True,
                                                  "TLSv1.2": True, "TLSv1.3": True}}])
    got = by_check(sa.judge(r, settings(antivirus_required=True,
                                        ports_allowed=[22, "32768-60999"]))[0])
    assert got[("firewall", "iptables")].status == "critical"
    assert got[("antivirus", "")].status == "critical"  # 200 h > 168 h
    assert got[("listening_ports", "6379")].status == "warning"
    assert got[("tls_days_left", "gw 127.0.0.1:443")].status == "warning"
    assert got[("tls_protocols", "gw 127.0.0.1:443")].status == "warning"


def test_ports_default_to_the_groups_inspection_allowlist():
    st = sa.host_settings(Host("h1", (), {"mhops_inspect_ports": [443],
                                          "mhops_inspect_ports_allowed": [22, "8000-8100"]}))
    assert st.ports_allowed == ["443", "22", "8000-8100"]


@pytest.mark.parametrize("key,value", [
    ("login_allowlist", ["not-a-network"]), ("bruteforce", {"failures": 0, "window_s": 5}),
    ("thresholds", {"cpu": {"warning": 1}}), ("app_dirs", ["relative/path"]),
    ("tls_min_version", "SSLv3"), ("firewall_required", "yes"), ("nonsense", 1)])
def test_bad_settings_are_refused(key, value):
    with pytest.raises(MhopsError, match=f"mhops_security_audit_{key}"):
        settings(**{key: value})


def test_cases_for_exporters():
    rec = {"kind": "security_audit", "hosts": [{"host": "h1", "results": [
        {"check": "firewall", "target": "", "status": "critical", "value": 0,
         "explanation": "none", "resolution": "enable"}]}]}
    assert sa.cases(rec) == [{"suite": "security_audit", "host": "h1", "name": "firewall",
                              "status": "critical", "value": 0, "message": "none enable"}]
