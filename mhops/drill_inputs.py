"""What a restore drill starts from, read before anything is written.

Owns the inventory's ``mhops_databases`` entries (with the host holding each and whether
that host is this machine), choosing the database (``--engine``/``--name``/``--limit``)
and so the database host, this machine's own names (for the guards), asking a reachable
production server on this machine for its data and socket folders (read-only), and
judging a backup's manifest.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from mhops import scratch
from mhops.drill_files import manifest_name
from mhops.drill_guards import Endpoint, is_loopback
from mhops.errors import MhopsError

ENGINES = ("postgresql", "mariadb")


def entries(opts: Any, limit: str | None) -> tuple[list[dict[str, Any]], Any]:
    """Every mhops_databases entry of the selected hosts, with `_host` and `_local` added."""
    from mhops.inventory import select

    sel = select(opts.inventory, limit, opts.vault_password_file)
    out = []
    for h in sel.hosts:
        dbs = h.vars.get("mhops_databases") or []
        path, line = h.where("mhops_databases")
        if not isinstance(dbs, list):
            raise MhopsError(f"host {h.name}: mhops_databases must be a list", path=path,
                             line=line)
        for i, e in enumerate(dbs):
            if not isinstance(e, dict) or e.get("engine") not in ENGINES or not e.get("name"):
                raise MhopsError(f"host {h.name}: mhops_databases[{i}] needs a name and an "
                                 f"engine ({' or '.join(ENGINES)})", path=path, line=line)
            out.append(dict(e, _host=h.name, _local=h.local))
    return out, sel


def choose_entry(entries: list[dict[str, Any]], opts: Any) -> dict[str, Any] | None:
    pool = [e for e in entries if (not opts.engine or e["engine"] == opts.engine)
            and (not opts.name or e["name"] == opts.name)]
    if len(pool) == 1:
        return pool[0]
    if opts.backup not in ("", "latest") and not pool:
        return None  # a backup file given by path needs no inventory entry
    if not pool:
        what = " ".join(filter(None, [opts.engine, opts.name])) or "any"
        raise MhopsError(f"no mhops_databases entry matches {what} in "
                         f"{', '.join(opts.inventory) or 'no inventory'}"
                         + (f" --limit {opts.limit}" if opts.limit else ""))
    if opts.backup not in ("", "latest"):
        return None
    raise MhopsError("several databases match: choose one with --name ("
                     + ", ".join(sorted(e["name"] for e in pool)) + ")")


def db_host(entry: dict[str, Any] | None, selection: Any) -> tuple[str, bool]:
    """The host holding the backup, and whether it is this machine (no fetch needed)."""
    if entry:
        return entry["_host"], bool(entry["_local"])
    if selection is not None and selection.limit and len(selection.hosts) == 1:
        h = selection.hosts[0]
        return h.name, h.local
    return "localhost", True  # a path without an inventory entry: on this machine


def read_manifest(path: str | None, problem: str, filename: str
                   ) -> tuple[dict[str, Any] | None, str]:
    mname = manifest_name(filename)
    if problem or not path:
        return None, problem or f"no manifest {mname}: the backup is incomplete"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"manifest {mname} is unreadable or corrupt: {exc}"
    if not isinstance(data, dict):
        return None, f"manifest {mname} does not hold an object"
    missing = [k for k in ("engine", "database", "sha256", "size", "tables", "canary")
               if k not in data]
    if missing:
        return data, f"manifest {mname} lacks {', '.join(missing)}"
    if data.get("file") not in (None, filename):
        return data, f"manifest {mname} names another file ({data.get('file')})"
    if not isinstance(data["tables"], dict) or not all(
            isinstance(v, int) for v in data["tables"].values()):
        return data, f"manifest {mname}: tables must map table names to row counts"
    return data, ""


def local_aliases() -> frozenset[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for n in list(names):
        try:
            for info in socket.getaddrinfo(n, None):
                names.add(str(info[4][0]).lower())
        except OSError:
            pass
    return frozenset(filter(None, names))


def discover(prod: Endpoint, entry: dict[str, Any]) -> Endpoint:
    """Ask a reachable production server on this machine for its data and socket folders.

    Best effort and read-only (SHOW / SELECT @@); what cannot be learned stays unknown and
    the host+port rule still applies.
    """
    if not is_loopback(prod.host) or prod.data_dir and prod.socket:
        return prod
    try:
        if prod.engine == "postgresql":
            env = dict(scratch.clean_env(), PGPASSWORD=str(entry.get("password") or ""),
                       PGCONNECT_TIMEOUT="3")
            res = subprocess.run(
                ["psql", "-X", "-A", "-t", "-h", prod.host, "-p", str(prod.port), "-U",
                 str(entry.get("user") or "postgres"), "-d", str(entry.get("database")),
                 "-c", "SELECT current_setting('data_directory') || chr(9) || "
                       "current_setting('unix_socket_directories')"],
                capture_output=True, text=True, env=env, timeout=8)
        else:
            env = dict(scratch.clean_env(), MYSQL_PWD=str(entry.get("password") or ""))
            res = subprocess.run(
                ["mariadb", "--no-defaults", "-h", prod.host, "-P", str(prod.port), "-u",
                 str(entry.get("user") or "root"), "--connect-timeout=3", "-N", "-B", "-e",
                 "SELECT @@datadir, @@socket"], capture_output=True, text=True, env=env,
                timeout=8)
    except (OSError, subprocess.TimeoutExpired):
        return prod
    if res.returncode or "\t" not in res.stdout:
        return prod
    data_dir, sock = res.stdout.strip().split("\t", 1)
    sock = sock.split(",")[0].strip()
    return Endpoint(prod.engine, prod.host, prod.port, socket=prod.socket or sock or None,
                    data_dir=prod.data_dir or data_dir.rstrip("/") or None, name=prod.name,
                    production=True)
