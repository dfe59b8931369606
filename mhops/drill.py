"""Restore drills: ``invoke drill restore`` from choosing the backup to the DR drill record.

Owns the drill: resolve the database and backup (``latest`` = the newest stamp in the
file name whose manifest exists, never mtime), refuse any target that is or could be
production before anything is written, mark the backup in ``<dir>/.in-use`` so
retention keeps it, check it against its manifest, restore it into a throwaway
instance (``mhops.scratch``), verify (instance up and listening via Testinfra; every
manifest table with its row count, the canary row, ordered-row md5 of sample tables,
an application smoke query), measure RTO and RPO against their targets, tear
everything down whatever happens (failure, Ctrl-C, SIGTERM), and write the drill
record (kind ``drill``, 灾难恢复演练记录).

Exit codes: 0 passed, 1 passed but RTO or RPO over target, 2 failed (corrupt or
truncated backup, missing table, wrong count, restore error, interrupted),
3 the run itself failed (bad input, a refused target): nothing was written.

The guards and the other rules needing no I/O are the pure functions at the top.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from mhops import records, scratch, state
from mhops.errors import MhopsError
from mhops.redact import Redactor

KIND = "drill"
SCHEMA_VERSION = 1
ENGINES = ("postgresql", "mariadb")
DEFAULT_PORTS = {"postgresql": 5432, "mariadb": 3306}
FORMATS = {"dump": "custom", "sql": "sql", "sql.gz": "sql.gz", "sql.zst": "sql.zst"}
_FILE = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>dump|sql|sql\.gz|sql\.zst)$")
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
PASSED, WARNING, FAILED = "passed", "warning", "failed"
OK, BAD, UNKNOWN, SKIPPED = "ok", "failed", "unknown", "skipped"
EXIT = {PASSED: 0, WARNING: 1, FAILED: 2}
DEFAULT_SMOKE_SQL = ("SELECT count(*) FROM appointments a JOIN departments d "
                     "ON d.id = a.department_id WHERE d.code = {department} "
                     "AND a.visit_date = {day}")


# ---------------------------------------------------------------- pure rules: guards

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


# ---------------------------------------------------------------- pure rules: backups

def parse_name(filename: str) -> tuple[str, str, str] | None:
    """(logical name, UTC stamp, extension) of a backup file name, or None."""
    m = _FILE.match(filename)
    return (m["name"], m["stamp"], m["ext"]) if m else None


def manifest_name(filename: str) -> str:
    name, stamp, _ = parse_name(filename) or (None, None, None)
    if name is None:
        return filename + ".manifest.json"
    return f"{name}-{stamp}.manifest.json"


def pick_latest(filenames: list[str], name: str) -> str | None:
    """The backup of `name` with the newest stamp in its file name whose manifest is listed.

    A backup without a manifest is still being written (the manifest comes last).
    """
    present = set(filenames)
    best = None
    for f in filenames:
        parsed = parse_name(f)
        if not parsed or parsed[0] != name or manifest_name(f) not in present:
            continue
        if best is None or parsed[1] > best[0]:
            best = (parsed[1], f)
    return best[1] if best else None


def compare_counts(expected: dict[str, int], actual: dict[str, int | None],
                   tolerance: float = 0.0) -> list[dict[str, Any]]:
    """One result per manifest table: missing, count differing beyond `tolerance`, or ok."""
    out = []
    for table, want in expected.items():
        got = actual.get(table)
        if got is None:
            out.append({"table": table, "expected": want, "actual": None, "status": BAD,
                        "reason": "missing from the restored database"})
            continue
        allowed = int(abs(want) * tolerance)
        ok = abs(got - want) <= allowed
        out.append({"table": table, "expected": want, "actual": got,
                    "status": OK if ok else BAD,
                    "reason": "" if ok else f"{got} rows restored, manifest says {want}"})
    return out


def sample_tables(counts: dict[str, int], configured: list[str], canary_table: str,
                  n: int = 2) -> list[str]:
    """Tables to checksum: the configured ones, else the `n` smallest non-empty ones.

    Small tables are usually reference data (departments, doctors): cheap to hash and
    rarely written, so the live source is a fair reference for them.
    """
    if configured:
        return list(configured)
    canary = canary_table.split(".")[-1]
    candidates = sorted((c, t) for t, c in counts.items()
                        if c > 0 and t.split(".")[-1] != canary)
    return [t for _, t in candidates[:n]]


def against_target(value: float | None, target: float | None) -> str:
    if value is None:
        return UNKNOWN
    if target is None or target <= 0:
        return UNKNOWN
    return OK if value <= target else WARNING


def outcome_of(checks: list[str], rto: str, rpo: str) -> str:
    if any(c == BAD for c in checks):
        return FAILED
    return WARNING if WARNING in (rto, rpo) else PASSED


# ---------------------------------------------------------------- options and outcome

@dataclass
class Options:
    records_dir: Path
    inventory: list[str] = field(default_factory=list)
    engine: str | None = None
    name: str | None = None
    backup: str = "latest"
    target: str | None = None
    backup_dir: str = ""
    scratch_dir: str = ""
    rto_target_minutes: float = 60.0
    rpo_target_hours: float = 24.0
    row_tolerance: float = 0.0
    sample_tables: list[str] = field(default_factory=list)
    smoke_sql: dict[str, str] = field(default_factory=dict)
    smoke_department: str = "D001"
    smoke_day: str = ""
    smoke_min_rows: int = 1
    compare_source: bool = True
    jobs: int = 2
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    vault_password_file: str | None = None
    echo: Callable[[str], None] = print


class Interrupted(BaseException):
    """SIGTERM/SIGHUP during a drill: unwind like Ctrl-C so teardown runs."""


# ---------------------------------------------------------------- inputs

def _entries(opts: Options) -> tuple[list[dict[str, Any]], frozenset[str]]:
    if not opts.inventory:
        return [], frozenset()
    from mhops.inventory import select

    sel = select(opts.inventory, None, opts.vault_password_file)
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
            out.append(dict(e, _host=h.name))
    return out, sel.secrets


def _choose_entry(entries: list[dict[str, Any]], opts: Options) -> dict[str, Any] | None:
    pool = [e for e in entries if (not opts.engine or e["engine"] == opts.engine)
            and (not opts.name or e["name"] == opts.name)]
    if len(pool) == 1:
        return pool[0]
    if opts.backup not in ("", "latest") and not pool:
        return None  # a backup file given by path needs no inventory entry
    if not pool:
        what = " ".join(filter(None, [opts.engine, opts.name])) or "any"
        raise MhopsError(f"no mhops_databases entry matches {what} in "
                         f"{', '.join(opts.inventory) or 'no inventory'}")
    if opts.backup not in ("", "latest"):
        return None
    raise MhopsError("several databases match: choose one with --name ("
                     + ", ".join(sorted(e["name"] for e in pool)) + ")")


def _resolve_backup(opts: Options, entry: dict[str, Any] | None) -> Path:
    if opts.backup and opts.backup != "latest":
        p = Path(opts.backup).expanduser()
        if not p.is_file():
            raise MhopsError("backup file does not exist", path=str(p))
        return p.resolve()
    base = (entry or {}).get("backup_dir") or opts.backup_dir
    if not base:
        raise MhopsError("no backup folder: set backup_dir on the database entry or "
                         "drill.backup_dir in invoke.yaml")
    folder = Path(base) / entry["name"]
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise MhopsError(f"cannot list the backup folder: {exc.strerror}",
                         path=str(folder)) from exc
    latest = pick_latest(names, entry["name"])
    if latest is None:
        raise MhopsError(f"no complete backup of {entry['name']} (file with its manifest)",
                         path=str(folder))
    return folder / latest


def _read_manifest(path: Path) -> tuple[dict[str, Any] | None, str]:
    mpath = path.with_name(manifest_name(path.name))
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"no manifest {mpath.name}: the backup is incomplete"
    except (OSError, ValueError) as exc:
        return None, f"manifest {mpath.name} is unreadable or corrupt: {exc}"
    if not isinstance(data, dict):
        return None, f"manifest {mpath.name} does not hold an object"
    missing = [k for k in ("engine", "database", "sha256", "size", "tables", "canary")
               if k not in data]
    if missing:
        return data, f"manifest {mpath.name} lacks {', '.join(missing)}"
    if data.get("file") not in (None, path.name):
        return data, f"manifest {mpath.name} names another file ({data.get('file')})"
    if not isinstance(data["tables"], dict) or not all(
            isinstance(v, int) for v in data["tables"].values()):
        return data, f"manifest {mpath.name}: tables must map table names to row counts"
    return data, ""


def _local_aliases() -> frozenset[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    for n in list(names):
        try:
            for info in socket.getaddrinfo(n, None):
                names.add(str(info[4][0]).lower())
        except OSError:
            pass
    return frozenset(filter(None, names))


def _discover(prod: Endpoint, entry: dict[str, Any]) -> Endpoint:
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


# ---------------------------------------------------------------- .in-use marks

@contextmanager
def in_use(folder: Path, basename: str) -> Iterator[Path]:
    """List `basename` in ``<folder>/.in-use`` for the duration, then remove that one line."""
    path = folder / ".in-use"
    _edit_in_use(path, lambda lines: [*lines, basename])
    try:
        yield path
    finally:
        def drop(lines: list[str]) -> list[str]:
            if basename in lines:
                lines.remove(basename)  # only ours: another drill may use the same backup
            return lines
        _edit_in_use(path, drop)


def _edit_in_use(path: Path, change: Callable[[list[str]], list[str]]) -> None:
    lock = path.with_name(".in-use.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise MhopsError(f"cannot mark the backup in use: {exc.strerror}", path=str(lock)) \
            from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            lines = [ln.rstrip("\n") for ln in path.read_text().splitlines() if ln.strip()]
        except FileNotFoundError:
            lines = []
        lines = change(lines)
        if lines:
            state.atomic_write(path, ("\n".join(lines) + "\n").encode(), mode=0o644)
        else:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- steps

class Steps:
    """Times of each step for the record, and a line per step for the operator."""

    def __init__(self, echo: Callable[[str], None], words: dict[str, str]):
        self.items: list[dict[str, Any]] = []
        self.echo, self.words = echo, words

    @contextmanager
    def __call__(self, step: str) -> Iterator[dict[str, Any]]:
        item = {"step": step, "started_utc": records.iso(records.utc_now()),
                "duration_s": None, "status": OK, "detail": ""}
        self.items.append(item)
        t0 = time.monotonic()
        try:
            yield item
        except BaseException as exc:
            item["status"] = BAD
            item["detail"] = item["detail"] or _reason(exc)
            raise
        finally:
            item["duration_s"] = round(time.monotonic() - t0, 3)
            self.echo(f"{self.words.get(item['step'], item['step']):<20} "
                      f"{item['status']:<8} {item['duration_s']:7.2f}s  {item['detail']}")

    def skip(self, step: str, why: str) -> None:
        self.items.append({"step": step, "started_utc": None, "duration_s": None,
                           "status": SKIPPED, "detail": why})


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    return str(exc) or type(exc).__name__


class DrillFailed(Exception):
    """A check failed: the drill stops here and records why."""


# ---------------------------------------------------------------- the drill

def run(opts: Options) -> records.Outcome:
    t0 = time.monotonic()
    started = records.utc_now()
    words = records.labels(opts.lang)[KIND]
    if opts.engine and opts.engine not in ENGINES:
        raise MhopsError(f"unknown engine {opts.engine!r}; valid: {', '.join(ENGINES)}")
    entries, secrets = _entries(opts)
    entry = _choose_entry(entries, opts)
    backup = _resolve_backup(opts, entry)
    manifest, manifest_problem = _read_manifest(backup)
    parsed = parse_name(backup.name)
    engine = ((manifest or {}).get("engine") or (entry or {}).get("engine") or opts.engine
              or ("postgresql" if backup.name.endswith(".dump") else None))
    if engine not in ENGINES:
        raise MhopsError("cannot tell the engine of this backup: give --engine",
                         path=str(backup))
    if opts.engine and engine != opts.engine:
        raise MhopsError(f"the backup is a {engine} backup, not {opts.engine}", path=str(backup))
    if entry is None and manifest:
        entry = next((e for e in entries if e["name"] == manifest.get("name")
                      and e["engine"] == engine), None)
    scratch.require_tools(engine)

    # Guards: everything above only read; nothing is written before this passes.
    spec = parse_target(opts.target, entries)
    parent = spec.parent or opts.scratch_dir or None
    port = spec.port or scratch.free_port("127.0.0.1")
    target = Endpoint(engine, spec.host, port, data_dir=parent, name=spec.entry or "",
                      production=spec.production)
    prod = [_discover(p, next(e for e in entries if e["name"] == p.name))
            for p in production_endpoints(entries)]
    reasons = refusals(target, prod, os.environ, _local_aliases())
    if reasons:
        raise MhopsError("refusing the drill target: " + "; ".join(reasons))
    if spec.port and scratch.port_in_use(spec.host, spec.port):
        raise MhopsError(f"--target port {spec.port} is in use: a drill restores only into a "
                         "scratch instance it starts itself, never into a running server")

    redactor = Redactor(secrets=secrets)
    steps = Steps(opts.echo, words.get("steps", {}))
    opts.echo(f"{words['title']}: {backup}")
    ctx = _Context(opts, engine, backup, manifest, manifest_problem, entry, parsed, target,
                   steps, t0, started)
    with _signals_as_interrupts():
        if parent:
            scratch.sweep_stale(Path(parent))
        else:
            scratch.sweep_stale()
        with in_use(backup.parent, backup.name):
            ctx.drill()
        record = build_record(ctx)
        run_dir = records.write_run(opts.records_dir, KIND, record, redactor)
    opts.echo(f"{words['outcomes'][record['outcome']]} ({words['exit_code']} "
              f"{record['exit_code']}): {record['reason'] or ''}".rstrip(": "))
    opts.echo(str(run_dir))
    return records.Outcome(exit_code=record["exit_code"], record_dir=run_dir, record=record)


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the drill like Ctrl-C, so the finally blocks tear down."""
    def raise_interrupt(signum, frame):
        raise Interrupted(f"interrupted ({signal.Signals(signum).name})")

    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, raise_interrupt)
    except ValueError:  # not the main thread: the caller owns signal handling
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def _shielded() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM must not cut the teardown short: note it, carry on."""
    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, lambda *_: None)
    except ValueError:
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@dataclass
class _Context:
    opts: Options
    engine: str
    backup: Path
    manifest: dict[str, Any] | None
    manifest_problem: str
    entry: dict[str, Any] | None
    parsed: tuple[str, str, str] | None
    target: Endpoint
    steps: Steps
    t0: float
    started: datetime
    instance: scratch.Instance | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    interrupted: bool = False
    verified_at: float | None = None
    teardown: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None

    @property
    def database(self) -> str:
        return str((self.manifest or {}).get("database") or "drill")

    def drill(self) -> None:
        fmt = FORMATS.get(self.parsed[2] if self.parsed else "")
        if self.manifest and self.manifest.get("format"):
            fmt = self.manifest["format"]
        inst = scratch.Instance(self.engine, parent=Path(self.target.data_dir)
                                if self.target.data_dir else None,
                                host=self.target.host, port=self.target.port or 0)
        self.instance = inst
        try:
            if self.manifest_problem:
                with self.steps("manifest") as s:
                    s["detail"] = self.manifest_problem
                    raise DrillFailed(self.manifest_problem)
            with ThreadPoolExecutor(max_workers=1) as pool:
                # The checksum runs while the instance starts; nothing is restored before
                # it has matched the manifest.
                digest = pool.submit(_sha256, self.backup)
                with self.steps("initdb"):
                    inst.create()
                    inst.init()
                with self.steps("start") as s:
                    inst.start()
                    s["detail"] = f"{inst.host}:{inst.port} {inst.version}"
                with self.steps("checksum") as s:
                    self.sha256, size = digest.result()
                    s["detail"] = self._check_file(size)
            with self.steps("listening") as s:
                s["detail"] = self._testinfra()
            with self.steps("restore") as s:
                inst.create_database(self.database)
                inst.restore(self.backup, fmt, self.database, jobs=self.opts.jobs)
                s["detail"] = f"{fmt} → {self.database}"
            self._verify()
            self.verified_at = time.monotonic()
        except (DrillFailed, scratch.ScratchError) as exc:
            self.reason = str(exc)
        except (KeyboardInterrupt, Interrupted) as exc:
            self.interrupted = True
            self.reason = _reason(exc)
        finally:
            for step in ("initdb", "start", "checksum", "listening", "restore", "tables",
                         "canary", "checksums", "smoke"):
                if not any(i["step"] == step for i in self.steps.items):
                    self.steps.skip(step, "not reached")
            with _shielded(), self.steps("teardown") as s:
                inst.stop()
                left = [p for p in (inst.root,) if p is not None and p.exists()]
                alive = inst.proc is not None and inst.proc.poll() is None
                self.teardown = {"instance_stopped": not alive, "folder_removed": not left,
                                 "folder": str(inst.root) if inst.root else None}
                s["detail"] = "ok" if not alive and not left else "LEFT BEHIND"

    def _check_file(self, size: int) -> str:
        want_sha, want_size = self.manifest.get("sha256"), self.manifest.get("size")
        if want_size is not None and size != want_size:
            raise DrillFailed(f"size {size} differs from the manifest's {want_size}: the "
                              "backup file is truncated or was changed")
        if self.sha256 != want_sha:
            raise DrillFailed("sha256 differs from the manifest: the backup file is corrupt "
                              "or was changed")
        return f"sha256 {self.sha256[:16]}… size {size}"

    def _testinfra(self) -> str:
        import testinfra

        inst = self.instance
        host = testinfra.get_host("local://")
        procs = host.process.filter(pid=inst.pid)
        tcp = host.socket(f"tcp://{inst.host}:{inst.port}").is_listening
        unix = host.socket(f"unix://{inst.root}/.s.PGSQL.{inst.port}"
                           if self.engine == "postgresql"
                           else f"unix://{inst.socket_path}").is_listening
        self.verification["instance"] = {
            "process": procs[0].comm if procs else None, "pid": inst.pid,
            "tcp": f"{inst.host}:{inst.port}", "tcp_listening": tcp, "socket_listening": unix,
            "version": inst.version}
        if not (procs and tcp and unix):
            raise DrillFailed(f"the scratch instance is not up: process {bool(procs)}, "
                              f"tcp {inst.host}:{inst.port} listening {tcp}, socket {unix}")
        return f"pid {inst.pid} {procs[0].comm}, tcp {inst.host}:{inst.port}, socket"

    # ------------------------------------------------------------ verification

    def _verify(self) -> None:
        failures = []
        for step, check in (("tables", self._verify_tables), ("canary", self._verify_canary),
                            ("checksums", self._verify_checksums),
                            ("smoke", self._verify_smoke)):
            try:
                with self.steps(step) as s:
                    s["detail"] = check()
            except DrillFailed as exc:
                failures.append(str(exc))
            except scratch.ScratchError as exc:
                failures.append(f"{step}: {exc}")
        if failures:
            raise DrillFailed("; ".join(failures))

    def _present(self) -> dict[str, str]:
        """Tables in the restored database: manifest-style name → quoted SQL name."""
        inst = self.instance
        if self.engine == "postgresql":
            out = inst.client([
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%'"], self.database).stdout
            found = {}
            for full in filter(None, out.splitlines()):
                schema, _, table = full.partition(".")
                q = f"{scratch.quote_ident(schema, 'postgresql')}." \
                    f"{scratch.quote_ident(table, 'postgresql')}"
                found[full] = q
                if schema == "public":
                    found.setdefault(table, q)
            return found
        out = inst.client(["SELECT table_name FROM information_schema.tables WHERE "
                           "table_schema = DATABASE() AND table_type = 'BASE TABLE'"],
                          self.database).stdout
        found = {}
        for t in filter(None, out.splitlines()):
            q = scratch.quote_ident(t, "mariadb")
            found[t] = q
            found[f"{self.database}.{t}"] = q
        return found

    def _verify_tables(self) -> str:
        expected = dict(self.manifest["tables"])
        present = self._present()
        names = [t for t in expected if t in present]
        actual: dict[str, int | None] = {}
        if names:
            parts = [f"SELECT {i}, count(*) FROM {present[t]}" for i, t in enumerate(names)]
            out = self.instance.client([" UNION ALL ".join(parts)], self.database).stdout
            for line in filter(None, out.splitlines()):
                i, n = re.split(r"[|\t]", line)
                actual[names[int(i)]] = int(n)
        results = compare_counts(expected, actual, self.opts.row_tolerance)
        self.verification["tables"] = results
        bad = [r for r in results if r["status"] == BAD]
        if bad:
            raise DrillFailed("tables: " + "; ".join(f"{r['table']} {r['reason']}"
                                                     for r in bad))
        return f"{len(results)}/{len(results)} tables, row counts match"

    def _verify_canary(self) -> str:
        canary = self.manifest.get("canary") or {}
        token, table = str(canary.get("token") or ""), str(canary.get("table") or "")
        # Keyed "id", not "token": it is a random row marker, not a credential to redact.
        result = {"table": table, "id": token, "present": False, "status": BAD}
        self.verification["canary"] = result
        if not _TOKEN.match(token) or not re.fullmatch(r"[A-Za-z0-9_.]+", table):
            raise DrillFailed("canary: the manifest holds no valid canary table and token")
        q = ".".join(scratch.quote_ident(p, self.engine) for p in table.split("."))
        res = self.instance.client([f"SELECT count(*) FROM {q} WHERE token = '{token}'"],
                                   self.database, check=False)
        if res.returncode:
            raise DrillFailed(f"canary: table {table} is not readable: "
                              f"{res.stderr.strip()[-300:]}")
        result["present"] = res.stdout.strip() == "1"
        result["status"] = OK if result["present"] else BAD
        if not result["present"]:
            raise DrillFailed(f"canary: row {token} is missing from {table}")
        return f"{table} {token[:8]}… present"

    def _order_by(self, quoted: str) -> str:
        inst = self.instance
        if self.engine == "postgresql":
            out = inst.client([
                "SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY "
                "array_position(i.indkey::int2[], a.attnum)) FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                f"WHERE i.indrelid = '{quoted.replace(chr(39), chr(39) * 2)}'::regclass "
                "AND i.indisprimary"], self.database).stdout.strip()
            return out or "t::text"
        name = quoted.strip("`").replace("``", "`")
        out = inst.client([
            "SELECT GROUP_CONCAT(CONCAT('`', REPLACE(column_name, '`', '``'), '`') ORDER BY "
            "ordinal_position) FROM information_schema.key_column_usage WHERE "
            "table_schema = DATABASE() AND constraint_name = 'PRIMARY' AND table_name = "
            f"{scratch.quote_literal(name, 'mariadb')}"], self.database).stdout.strip()
        if out and out != "NULL":
            return out
        cols = inst.client([
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() "
            f"AND table_name = {scratch.quote_literal(name, 'mariadb')}"],
            self.database).stdout.strip()
        return ", ".join(str(i) for i in range(1, int(cols or 1) + 1))

    def _verify_checksums(self) -> str:
        canary_table = str((self.manifest.get("canary") or {}).get("table") or "mhops_canary")
        tables = sample_tables(self.manifest["tables"], self.opts.sample_tables, canary_table)
        present = self._present()
        stored = self.manifest.get("checksums") or {}
        results = []
        self.verification["checksums"] = results
        for t in tables:
            if t not in present:
                results.append({"table": t, "md5": None, "reference": None,
                                "reference_md5": None, "status": BAD,
                                "reason": "sample table missing"})
                continue
            query = self._checksum_query(present[t])
            md5 = _md5(self.instance.stream(query, self.database, _STABLE_OUTPUT[self.engine]))
            r = {"table": t, "md5": md5, "reference": None, "reference_md5": None,
                 "status": UNKNOWN, "reason": ""}
            want = stored.get(t)
            if isinstance(want, dict):
                want = want.get("md5")
            if want:
                r.update(reference="manifest", reference_md5=want,
                         status=OK if want == md5 else BAD,
                         reason="" if want == md5 else "differs from the manifest's checksum")
            elif self.opts.compare_source and self.entry:
                r.update(self._against_source(t, present[t], query, md5))
            else:
                r["reason"] = "no reference: source not configured and no checksum in manifest"
            results.append(r)
        bad = [r for r in results if r["status"] == BAD]
        if bad:
            raise DrillFailed("checksums: " + "; ".join(f"{r['table']} {r['reason']}"
                                                        for r in bad))
        return ", ".join(f"{r['table']} {r['status']} ({r['reference'] or '-'})"
                         for r in results) or "no sample table"

    def _checksum_query(self, quoted: str) -> str:
        if self.engine == "postgresql":
            return f"SELECT * FROM {quoted} t ORDER BY {self._order_by(quoted)}"
        return f"SELECT * FROM {quoted} ORDER BY {self._order_by(quoted)}"

    def _against_source(self, table: str, quoted: str, query: str, md5: str) -> dict[str, Any]:
        e = self.entry
        want_rows = self.manifest["tables"].get(table)
        try:
            count_sql = f"SELECT count(*) FROM {quoted}"
            rows = int(b"".join(scratch.stream_rows(
                self._source_argv(count_sql), self._source_env())).decode().strip())
            if rows != want_rows:
                return {"reference": "source", "status": UNKNOWN,
                        "reason": f"not comparable: the source now has {rows} rows, the "
                                  f"backup {want_rows} (written since the backup)"}
            ref = _md5(scratch.stream_rows(self._source_argv(query), self._source_env()))
        except (scratch.ScratchError, ValueError, OSError) as exc:
            return {"reference": None, "status": UNKNOWN,
                    "reason": f"source {e.get('host')}:{e.get('port')} not reachable: "
                              f"{str(exc)[:200]}"}
        same = ref == md5
        return {"reference": "source", "reference_md5": ref, "status": OK if same else BAD,
                "reason": "" if same else "differs from the same query on the source (the "
                          "table may have been updated since the backup: list static tables "
                          "in drill.sample_tables)"}

    def _source_argv(self, query: str) -> list[str]:
        e = self.entry
        if self.engine == "postgresql":
            return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                    "-h", str(e.get("host") or "127.0.0.1"), "-p", str(e.get("port") or 5432),
                    "-U", str(e.get("user") or "postgres"), "-d", str(e["database"]),
                    "-c", (f"COPY ({query}) TO STDOUT" if query.startswith("SELECT *")
                           else query)]
        return ["mariadb", "--no-defaults", "-h", str(e.get("host") or "127.0.0.1"),
                "-P", str(e.get("port") or 3306), "-u", str(e.get("user") or "root"),
                "--connect-timeout=5", "--batch", "--skip-column-names", "--quick",
                f"--database={e['database']}",
                "-e", "SET SESSION TRANSACTION READ ONLY; SET time_zone = '+00:00'; " + query]

    def _source_env(self) -> dict[str, str]:
        pw = str(self.entry.get("password") or "")
        env = dict(scratch.clean_env(), **_STABLE_OUTPUT[self.engine])
        if self.engine == "postgresql":
            env.update(PGPASSWORD=pw, PGCONNECT_TIMEOUT="5",
                       PGOPTIONS="-c default_transaction_read_only=on")
        else:
            env["MYSQL_PWD"] = pw
        return env

    def _verify_smoke(self) -> str:
        day = self.opts.smoke_day or ""
        if day == "today":
            day = datetime.now(UTC).astimezone(_tz(self.opts.timezone)).date().isoformat()
        elif not day:
            when = records.parse_time((self.manifest or {}).get("started_at")) or datetime.now(UTC)
            day = when.astimezone(_tz(self.opts.timezone)).date().isoformat()
        try:
            date.fromisoformat(day)
        except ValueError as exc:
            raise DrillFailed(f"smoke: --smoke-day {day!r} is not a date") from exc
        template = self.opts.smoke_sql.get(self.engine) or DEFAULT_SMOKE_SQL
        sql = template.format(
            department=scratch.quote_literal(self.opts.smoke_department, self.engine),
            day=scratch.quote_literal(day, self.engine))
        result = {"query": sql, "department": self.opts.smoke_department, "day": day,
                  "rows": None, "min_rows": self.opts.smoke_min_rows, "status": BAD}
        self.verification["smoke"] = result
        res = self.instance.client([sql], self.database, check=False)
        if res.returncode:
            raise DrillFailed(f"smoke query failed: {res.stderr.strip()[-300:]}")
        first = (res.stdout.strip().splitlines() or [""])[0]
        try:
            result["rows"] = int(re.split(r"[|\t]", first)[0])
        except ValueError as exc:
            raise DrillFailed(f"smoke query returned {first[:80]!r}, not a count") from exc
        if result["rows"] < self.opts.smoke_min_rows:
            raise DrillFailed(f"smoke query: {result['rows']} appointments for "
                              f"{self.opts.smoke_department} on {day}, expected at least "
                              f"{self.opts.smoke_min_rows}")
        result["status"] = OK
        return f"{self.opts.smoke_department} {day}: {result['rows']}"


# Both sides of a checksum print values the same way whatever the servers' settings.
_STABLE_OUTPUT = {
    "postgresql": {"PGTZ": "UTC", "PGDATESTYLE": "ISO, MDY", "PGCLIENTENCODING": "UTF8"},
    "mariadb": {},
}


def _md5(blocks) -> str:
    h = hashlib.md5(usedforsecurity=False)
    for b in blocks:
        h.update(b)
    return h.hexdigest()


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


def _tz(name: str):
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(name)
    except Exception:  # no tz database: the machine's zone
        return None


# ---------------------------------------------------------------- the record

def build_record(ctx: _Context) -> dict[str, Any]:
    opts, m = ctx.opts, ctx.manifest or {}
    finished = records.utc_now()
    rto_s = round(ctx.verified_at - ctx.t0, 3) if ctx.verified_at else None
    snapshot = records.parse_time(m.get("started_at")) or records.parse_time(
        (m.get("canary") or {}).get("written_at"))
    if snapshot is None and ctx.parsed:
        snapshot = datetime.strptime(ctx.parsed[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    rpo_s = round((ctx.started - snapshot).total_seconds(), 1) if snapshot else None
    rto = {"seconds": rto_s, "target_seconds": opts.rto_target_minutes * 60,
           "status": against_target(rto_s, opts.rto_target_minutes * 60)}
    rpo = {"seconds": rpo_s, "target_seconds": opts.rpo_target_hours * 3600,
           "status": against_target(rpo_s, opts.rpo_target_hours * 3600),
           "backup_taken_at": records.iso(snapshot) if snapshot else None}
    v = ctx.verification
    checks = [s["status"] for s in ctx.steps.items if s["step"] != "teardown"]
    if not ctx.verified_at:
        checks.append(BAD)
    outcome = outcome_of(checks, rto["status"], rpo["status"])
    reason = ctx.reason
    if outcome == WARNING:
        reason = "; ".join(f"{k.upper()} over target" for k, x in (("rto", rto), ("rpo", rpo))
                           if x["status"] == WARNING)
    if not (ctx.teardown.get("instance_stopped") and ctx.teardown.get("folder_removed")):
        outcome = FAILED
        reason = "; ".join(filter(None, [reason, "teardown incomplete"]))
    return {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "run_id": records.run_id(KIND, ctx.started), "lang": opts.lang,
        "time": {"started_utc": records.iso(ctx.started), "finished_utc": records.iso(finished),
                 "started_local": records.local_iso(ctx.started, opts.timezone),
                 "finished_local": records.local_iso(finished, opts.timezone),
                 "timezone": opts.timezone,
                 "duration_s": round(time.monotonic() - ctx.t0, 3)},
        "operator": opts.operator or os.environ.get("MHOPS_OPERATOR") or _login(),
        "backup": {"path": str(ctx.backup), "file": ctx.backup.name,
                   "name": m.get("name") or (ctx.parsed[0] if ctx.parsed else None),
                   "engine": ctx.engine, "database": m.get("database"),
                   "format": m.get("format"), "size": m.get("size"),
                   "sha256_manifest": m.get("sha256"), "sha256_actual": ctx.sha256,
                   "started_at": m.get("started_at"), "finished_at": m.get("finished_at"),
                   "server_version": m.get("server_version"), "tool": m.get("tool"),
                   "host": m.get("host"), "chosen": "latest" if opts.backup in ("", "latest")
                   else "path"},
        "target": {"kind": "scratch", "engine": ctx.engine, "host": ctx.target.host,
                   "port": ctx.target.port, "folder_parent": ctx.target.data_dir,
                   "version": ctx.instance.version if ctx.instance else None,
                   "jobs": opts.jobs if ctx.engine == "postgresql" else 1},
        "steps": ctx.steps.items,
        "verification": {"instance": v.get("instance"), "tables": v.get("tables", []),
                         "canary": v.get("canary"), "checksums": v.get("checksums", []),
                         "smoke": v.get("smoke")},
        "rto": rto, "rpo": rpo, "teardown": ctx.teardown,
        "outcome": outcome, "reason": reason, "interrupted": ctx.interrupted,
        "exit_code": EXIT[outcome], "ops_revision": records.ops_revision(),
    }


def _login() -> str:
    import getpass
    return getpass.getuser()
