"""Authentication log lines to login events, sources and bursts (a pure leaf).

Owns reading sshd, sudo and su lines of ``/var/log/auth.log`` / ``/var/log/secure``
(classic syslog time stamps without a year, and RFC 3339 ones): failed and accepted
logins with their source address, invalid users, sudo and su failures; counting them
by source; finding brute-force bursts (N failures from one source within M seconds);
and successful logins from sources outside an allowlist of networks.

A name given for an unknown account is often a password typed into the wrong field,
so invalid user names are never kept. Imports nothing of the project.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

FAILED, ACCEPTED, SUDO_FAILED, SU_FAILED = "failed", "accepted", "sudo_failed", "su_failed"
INVALID_USER = "(invalid user)"

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_SYSLOG_TIME = re.compile(r"^(?P<mon>[A-Z][a-z]{2})\s+(?P<day>\d{1,2})\s+"
                          r"(?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)\s")
_ISO_TIME = re.compile(r"^(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?"
                       r"(?:Z|[+-]\d\d:?\d\d)?)\s")
_PROGRAM = re.compile(r"\s(?P<prog>sshd|sudo|su)(?:\[\d+\])?:\s(?P<msg>.*)$")
_FAILED = re.compile(r"^Failed (?P<method>\S+) for (?P<invalid>invalid user )?"
                     r"(?P<user>.*?) from (?P<src>\S+) port \d+")
_ACCEPTED = re.compile(r"^Accepted (?P<method>\S+) for (?P<user>\S+) from (?P<src>\S+) port \d+")
_SUDO = re.compile(r"^\s*(?P<user>\S+) : (?:(?P<n>\d+) incorrect password attempts?"
                   r"|(?P<why>user NOT in sudoers|user NOT authorized on host|"
                   r"command not allowed|a password is required))")
_SU = re.compile(r"^FAILED SU \(to (?P<target>[^)]+)\) (?P<user>\S+)")


@dataclass(frozen=True)
class AuthEvent:
    kind: str
    when: datetime | None
    user: str | None
    source: str | None = None
    method: str | None = None
    count: int = 1


def line_time(line: str, year: int, offset: timedelta = timedelta(0),
              now: datetime | None = None) -> datetime | None:
    """A line's time in UTC; syslog stamps carry no year or zone (`year`, `offset` given)."""
    m = _ISO_TIME.match(line)
    if m:
        text = m["iso"].replace("Z", "+00:00")
        if re.search(r"[+-]\d{4}$", text):
            text = text[:-2] + ":" + text[-2:]
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone(offset))).astimezone(UTC)
    m = _SYSLOG_TIME.match(line)
    if not m or m["mon"] not in _MONTHS:
        return None
    try:
        dt = datetime(year, _MONTHS[m["mon"]], int(m["day"]), int(m["h"]), int(m["m"]),
                      int(m["s"]), tzinfo=timezone(offset))
    except ValueError:
        return None
    # A December line read in January belongs to the previous year.
    if now is not None and dt - now > timedelta(days=31):
        dt = dt.replace(year=year - 1)
    return dt.astimezone(UTC)


def parse_line(line: str, year: int, offset: timedelta = timedelta(0),
               now: datetime | None = None) -> AuthEvent | None:
    m = _PROGRAM.search(line)
    if not m:
        return None
    prog, msg = m["prog"], m["msg"].strip()
    when = line_time(line, year, offset, now)
    if prog == "sshd":
        if f := _FAILED.match(msg):
            user = INVALID_USER if f["invalid"] else f["user"]
            return AuthEvent(FAILED, when, user, f["src"], f["method"])
        if a := _ACCEPTED.match(msg):
            return AuthEvent(ACCEPTED, when, a["user"], a["src"], a["method"])
        # "Invalid user X from ..." precedes the "Failed ... for invalid user" counted above.
        return None
    if prog == "sudo":
        if s := _SUDO.match(msg):
            return AuthEvent(SUDO_FAILED, when, s["user"], None,
                             "password" if s["n"] else s["why"], int(s["n"] or 1))
        return None
    if su := _SU.match(msg):
        return AuthEvent(SU_FAILED, when, su["user"], None, f"to {su['target']}")
    return None


def parse(lines: list[str], year: int, offset: timedelta = timedelta(0),
          now: datetime | None = None) -> list[AuthEvent]:
    return [e for e in (parse_line(ln, year, offset, now) for ln in lines) if e]


def by_source(events: list[AuthEvent]) -> list[dict]:
    """Failed and accepted logins per source, most failures first."""
    rows: dict[str, dict] = {}
    for e in events:
        if e.kind not in (FAILED, ACCEPTED) or not e.source:
            continue
        row = rows.setdefault(e.source, {"source": e.source, "failed": 0, "accepted": 0,
                                         "users": set()})
        row["failed" if e.kind == FAILED else "accepted"] += 1
        row["users"].add(e.user or "")
    out = [dict(r, users=sorted(u for u in r["users"] if u)) for r in rows.values()]
    return sorted(out, key=lambda r: (-r["failed"], -r["accepted"], r["source"]))


def bursts(events: list[AuthEvent], threshold: int, window_s: float) -> list[dict]:
    """Sources with at least `threshold` failed logins within any `window_s` seconds."""
    times: dict[str, list[datetime]] = defaultdict(list)
    for e in events:
        if e.kind == FAILED and e.source and e.when is not None:
            times[e.source].append(e.when)
    found = []
    for source, stamps in times.items():
        stamps.sort()
        window: deque[datetime] = deque()
        best = 0
        first = last = None
        for t in stamps:
            window.append(t)
            while (t - window[0]).total_seconds() > window_s:
                window.popleft()
            if len(window) > best:
                best, first, last = len(window), window[0], t
        if threshold > 0 and best >= threshold:
            found.append({"source": source, "failures": best,
                          "first": first.isoformat().replace("+00:00", "Z"),
                          "last": last.isoformat().replace("+00:00", "Z"),
                          "seconds": (last - first).total_seconds()})
    return sorted(found, key=lambda b: (-b["failures"], b["source"]))


def networks(allowlist: list[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The allowlist as networks; ValueError names a bad entry."""
    out = []
    for item in allowlist:
        try:
            out.append(ipaddress.ip_network(str(item), strict=False))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an address or network: {exc}") from None
    return out


def allowed(source: str, nets) -> bool:
    try:
        addr = ipaddress.ip_address(source.split("%")[0])
    except ValueError:
        return False  # a host name: cannot be shown to be inside the allowlist
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def outside(events: list[AuthEvent], nets) -> list[dict]:
    """Successful logins whose source is not in the allowlist, per source."""
    count: Counter[tuple[str, str]] = Counter()
    for e in events:
        if e.kind == ACCEPTED and e.source and not allowed(e.source, nets):
            count[(e.source, e.user or "")] += 1
    return [{"source": s, "user": u, "logins": n} for (s, u), n in sorted(count.items())]


def sudo_failures(events: list[AuthEvent]) -> list[dict]:
    count: Counter[tuple[str, str, str]] = Counter()
    for e in events:
        if e.kind in (SUDO_FAILED, SU_FAILED):
            count[(e.kind, e.user or "", e.method or "")] += e.count
    return [{"kind": k, "user": u, "reason": r, "count": n}
            for (k, u, r), n in sorted(count.items())]
