"""Auth log parsing, sources, bursts and the allowlist, on sample lines and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mhops import authlog as a

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
LINES = [
    "Nov 28 10:00:01 gw sshd[101]: Invalid user 11010119900307123X from 192.0.2.10 port 4022",
    "Nov 28 10:00:01 gw sshd[101]: Failed password for invalid user 11010119900307123X "
    "from 192.0.2.10 port 4022 ssh2",
    "Nov 28 10:00:02 gw sshd[102]: Failed password for root from 192.0.2.10 port 4023 ssh2",
    "Nov 28 10:00:03 gw sshd[103]: Failed publickey for deploy from 198.51.100.7 port 5 ssh2",
    "Nov 28 10:00:04 gw sshd[104]: Accepted publickey for deploy from 203.0.113.9 port 6 ssh2",
    "2026-11-28T10:00:05.123456+08:00 gw sshd[105]: Accepted password for ops from "
    "127.0.0.1 port 7 ssh2",
    "Nov 28 10:00:06 gw sudo:    alice : 3 incorrect password attempts ; TTY=pts/0 ; "
    "PWD=/home/alice ; USER=root ; COMMAND=/usr/bin/mysql -pS3cretPassw0rd",
    "Nov 28 10:00:07 gw sudo:      bob : user NOT in sudoers ; TTY=pts/1 ; PWD=/ ; "
    "USER=root ; COMMAND=/bin/sh",
    "Nov 28 10:00:08 gw su[9]: FAILED SU (to root) carol on pts/2",
    "Nov 28 10:00:09 gw sshd[106]: pam_unix(sshd:auth): authentication failure; rhost=192.0.2.10",
    "Nov 28 10:00:10 gw CRON[7]: pam_unix(cron:session): session opened for user root",
]


def test_sample_lines():
    ev = a.parse(LINES, 2026, now=NOW)
    kinds = [e.kind for e in ev]
    assert kinds == [a.FAILED, a.FAILED, a.FAILED, a.ACCEPTED, a.ACCEPTED, a.SUDO_FAILED,
                     a.SUDO_FAILED, a.SU_FAILED]
    assert ev[0].user == a.INVALID_USER  # a name typed for an unknown account is not kept
    assert ev[0].when == datetime(2026, 11, 28, 10, 0, 1, tzinfo=UTC)
    assert ev[4].when == datetime(2026, 11, 28, 2, 0, 5, 123456, tzinfo=UTC)
    assert all("S3cret" not in str(e) and "1101011990" not in str(e) for e in ev)
    rows = {r["source"]: r for r in a.by_source(ev)}
    assert rows["192.0.2.10"]["failed"] == 2 and rows["203.0.113.9"]["accepted"] == 1
    nets = a.networks(["127.0.0.0/8", "10.0.0.0/8"])
    assert a.outside(ev, nets) == [{"source": "203.0.113.9", "user": "deploy", "logins": 1}]
    assert a.sudo_failures(ev) == [
        {"kind": a.SU_FAILED, "user": "carol", "reason": "to root", "count": 1},
        {"kind": a.SUDO_FAILED, "user": "alice", "reason": "password", "count": 3},
        {"kind": a.SUDO_FAILED, "user": "bob", "reason": "user NOT in sudoers", "count": 1}]


def test_december_lines_read_in_january_are_last_year():
    jan = datetime(2027, 1, 2, tzinfo=UTC)
    e = a.parse_line("Dec 31 23:59:59 h sshd[1]: Failed password for root from 192.0.2.1 "
                     "port 1 ssh2", 2027, now=jan)
    assert e.when.year == 2026


def test_allowlist_edge_cases():
    nets = a.networks(["192.0.2.0/24", "2001:db8::/32"])
    assert a.allowed("192.0.2.200", nets) and a.allowed("::ffff:192.0.2.1", nets)
    assert a.allowed("2001:db8::1", nets) and not a.allowed("198.51.100.1", nets)
    assert not a.allowed("host.example", nets)


_ip = st.builds(lambda n, b: f"{n}.{b}", st.sampled_from(["192.0.2", "198.51.100",
                                                          "203.0.113"]),
                st.integers(0, 255))


@given(st.lists(st.tuples(_ip, st.integers(0, 3600)), max_size=60),
       st.integers(1, 20), st.integers(1, 600))
def test_bursts_match_a_brute_force_count(fails, threshold, window):
    base = datetime(2026, 11, 28, tzinfo=UTC)
    ev = [a.AuthEvent(a.FAILED, base + timedelta(seconds=t), "root", ip) for ip, t in fails]
    found = {b["source"]: b["failures"] for b in a.bursts(ev, threshold, window)}
    for ip in {ip for ip, _ in fails}:
        times = sorted(t for i, t in fails if i == ip)
        best = max(sum(1 for u in times if t <= u <= t + window) for t in times)
        assert (ip in found) == (best >= threshold)
        if ip in found:
            assert found[ip] == best


@given(st.lists(st.tuples(st.sampled_from(["Failed password for", "Accepted publickey for",
                                           "Failed password for invalid user"]),
                          st.from_regex(r"[a-z_][a-z0-9_-]{0,15}", fullmatch=True), _ip),
                max_size=30))
def test_generated_sshd_lines_parse_back(rows):
    lines = [f"Nov 28 10:00:{i % 60:02d} h sshd[{i}]: {what} {user} from {ip} port 22 ssh2"
             for i, (what, user, ip) in enumerate(rows)]
    ev = a.parse(lines, 2026, now=NOW)
    assert len(ev) == len(rows)
    for e, (what, user, ip) in zip(ev, rows, strict=True):
        assert e.source == ip
        assert e.kind == (a.ACCEPTED if what.startswith("Accepted") else a.FAILED)
        assert e.user == (a.INVALID_USER if "invalid user" in what else user)


@given(st.text(max_size=300))
def test_noise_never_raises(text):
    a.parse(text.splitlines(), 2026, now=NOW)
