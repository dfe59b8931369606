"""Production guards of restore drills: pure rules, no I/O.

Owns deciding whether a drill target is or could be production: the same host and
port (every loopback spelling and this machine's own names count as one host), the
same socket or data directory as a configured production database, a target marked
production in the inventory, or PGHOST/PGPORT/MYSQL_* in the environment pointing at
production; and parsing ``--target``. The drill calls ``refusals`` before it writes
anything, anywhere (not even the ``.in-use`` mark on the database host).
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mhops.errors import MhopsError

DEFAULT_PORTS = {"postgresql": 5432, "mariadb": 3306}

_LOCAL_NAMES = {"", "localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def is_loopback(host: str | None) -> bool:
    h = (host or "").strip().strip("[]").lower()
    if h in _LOCAL_NAMES or h.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def same_host(a: str | None, b: str | None, local_aliases: frozenset[str] = frozenset()) -> bool:
    """Whether two host strings name the same machine.

    Every loopback form (localhost, 127.0.0.0/8, ::1, a socket path) and every alias of
    this machine (its names and addresses, passed in) is the same host; a wildcard bind
    address (0.0.0.0, ::) is reachable on all of them.
    """
    def norm(h: str | None) -> str:
        h = (h or "").strip().strip("[]").lower().rstrip(".")
        if is_loopback(h) or h in {"0.0.0.0", "::"} or h in local_aliases:
            return "<this machine>"
        return h
    return norm(a) == norm(b)


def _inside(path: str | None, folder: str | None) -> bool:
    """`path` is `folder` or below it (both made absolute and normalised, not resolved)."""
    if not path or not folder:
        return False
    p, f = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return p == f or p.startswith(f.rstrip("/") + "/")


@dataclass(frozen=True)
class Endpoint:
    """Where a database server is (or would be): what the guards compare."""

    engine: str
    host: str = "127.0.0.1"
    port: int | None = None
    socket: str | None = None       # PostgreSQL: socket folder; MariaDB: socket file
    data_dir: str | None = None
    name: str = ""
    production: bool = False

    @property
    def label(self) -> str:
        where = f"{self.host}:{self.port}"
        return f"{self.name} ({self.engine} {where})" if self.name else f"{self.engine} {where}"


def production_endpoints(entries: list[dict[str, Any]]) -> list[Endpoint]:
    """The `mhops_databases` entries marked production, as endpoints."""
    out = []
    for e in entries:
        if e.get("production") is True:
            engine = str(e.get("engine", ""))
            out.append(Endpoint(
                engine=engine, host=str(e.get("host") or "127.0.0.1"),
                port=int(e.get("port") or DEFAULT_PORTS.get(engine, 0)),
                socket=e.get("socket") or None, data_dir=e.get("data_dir") or None,
                name=str(e.get("name", "")), production=True))
    return out


def env_endpoints(env: Mapping[str, str]) -> list[tuple[str, Endpoint]]:
    """Servers the client environment points at (libpq and MariaDB client variables)."""
    out = []
    if env.get("PGHOST") or env.get("PGPORT"):
        host = env.get("PGHOST") or "localhost"
        sock = host if host.startswith("/") else None
        port = _int(env.get("PGPORT")) or 5432
        out.append(("PGHOST/PGPORT", Endpoint("postgresql", host, port, socket=sock)))
    if env.get("MYSQL_HOST") or env.get("MYSQL_TCP_PORT") or env.get("MYSQL_UNIX_PORT"):
        host = env.get("MYSQL_HOST") or "localhost"
        port = _int(env.get("MYSQL_TCP_PORT")) or 3306
        out.append(("MYSQL_HOST/MYSQL_TCP_PORT/MYSQL_UNIX_PORT",
                    Endpoint("mariadb", host, port, socket=env.get("MYSQL_UNIX_PORT") or None)))
    return out


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _points_at(a: Endpoint, prod: Endpoint, aliases: frozenset[str]) -> str | None:
    """Why endpoint `a` is (or could be) the production endpoint `prod`, or None."""
    if a.port and prod.port and a.port == prod.port and same_host(a.host, prod.host, aliases):
        return f"same host and port as {prod.label}"
    if a.socket and prod.socket and (
            _inside(a.socket, prod.socket) or _inside(prod.socket, a.socket)):
        return f"same socket as {prod.label} ({prod.socket})"
    if a.data_dir and prod.data_dir and _inside(a.data_dir, prod.data_dir):
        return f"data directory {a.data_dir} is {prod.label}'s data directory {prod.data_dir}"
    if a.data_dir and prod.socket and _inside(a.data_dir, prod.socket):
        return f"scratch folder {a.data_dir} is {prod.label}'s socket folder {prod.socket}"
    return None


def refusals(target: Endpoint, production: list[Endpoint], env: Mapping[str, str],
             local_aliases: frozenset[str] = frozenset()) -> list[str]:
    """Every reason the drill must not touch `target`; empty means it may go ahead.

    Checked before anything is written. `target.data_dir` is the folder the scratch
    instance's private folder will be created in; `target.production` is the
    inventory's mark when the target was named by an inventory entry.
    """
    reasons = []
    if target.production:
        reasons.append(f"target {target.label} is marked production in the inventory")
    if not is_loopback(target.host):
        reasons.append(f"target host {target.host!r} is not a loopback address: the scratch "
                       "instance is started on this machine and listens on loopback only")
    for prod in production:
        why = _points_at(target, prod, local_aliases)
        if why:
            reasons.append(f"target {target.label}: {why}")
    for variables, ep in env_endpoints(env):
        for prod in production:
            if _points_at(ep, prod, local_aliases):
                reasons.append(f"{variables} in the environment point at production "
                               f"{prod.label}; unset them before a drill")
    return list(dict.fromkeys(reasons))


@dataclass(frozen=True)
class TargetSpec:
    host: str = "127.0.0.1"
    port: int | None = None
    parent: str | None = None
    entry: str | None = None
    production: bool = False


def parse_target(spec: str | None, entries: list[dict[str, Any]]) -> TargetSpec:
    """`scratch` (default), `HOST:PORT`, `host=..,port=..,dir=..`, or an inventory entry name.

    The target is always a scratch instance this drill starts itself; the forms choose
    where it listens and where its folder goes. Naming an inventory entry takes that
    entry's host and port (refused when it is production).
    """
    spec = (spec or "scratch").strip()
    if spec == "scratch":
        return TargetSpec()
    named = [e for e in entries if str(e.get("name")) == spec]
    if named:
        e = named[0]
        return TargetSpec(host=str(e.get("host") or "127.0.0.1"),
                          port=_int(e.get("port")) or DEFAULT_PORTS.get(str(e.get("engine"))),
                          entry=spec, production=e.get("production") is True)
    if "=" in spec:
        kv: dict[str, str] = {}
        for part in spec.split(","):
            k, sep, v = part.partition("=")
            if not sep or k.strip() not in ("host", "port", "dir"):
                raise MhopsError(f"--target {spec!r}: expected host=, port= or dir= items")
            kv[k.strip()] = v.strip()
        port = _int(kv["port"]) if "port" in kv else None
        if "port" in kv and not port:
            raise MhopsError(f"--target {spec!r}: port must be a number")
        return TargetSpec(host=kv.get("host") or "127.0.0.1", port=port,
                          parent=kv.get("dir") or None)
    m = re.fullmatch(r"\[?(?P<host>[^\]]*?)\]?:(?P<port>\d+)", spec)
    if m:
        return TargetSpec(host=m["host"] or "127.0.0.1", port=int(m["port"]))
    raise MhopsError(f"--target {spec!r} is neither scratch, HOST:PORT, key=value items "
                     "nor the name of an mhops_databases entry")
