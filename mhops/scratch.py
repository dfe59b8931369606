"""Throwaway database instances for restore drills.

Owns one isolated PostgreSQL cluster or MariaDB server at a time: a private temp
folder (data directory, unix socket, log), a free loopback TCP port, the server
process in its own session (a Ctrl-C at the terminal reaches the drill, which then
stops the server itself, in order), the SQL clients pointed explicitly at that
socket with every PG*/MYSQL* variable removed from their environment, and the
teardown: stop the server, remove the folder. Nothing here knows about backups or
production; the drill decides whether a placement is safe before calling ``start``.

Access: PostgreSQL trusts only its unix socket (in a 0700 folder) and rejects every
TCP login; MariaDB's root account authenticates by unix socket for the OS user
running the drill. The TCP port exists so the instance can be checked the way the
platform's servers are ("listening on its port"), never to let anyone read the data.
"""

from __future__ import annotations

import getpass
import gzip
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mhops.errors import MhopsError

PREFIX = "mhops-drill-"
PG_BIN = Path(os.environ.get("MHOPS_PG_BIN", "/usr/lib/postgresql/15/bin"))
_CLIENT_ENV_DROP = ("PG", "MYSQL", "MARIADB")
_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 20.0


class ScratchError(Exception):
    """A scratch instance could not be created, started or used (the drill fails)."""


def clean_env() -> dict[str, str]:
    """This process's environment without any variable that could point a client elsewhere."""
    return {k: v for k, v in os.environ.items()
            if not k.upper().startswith(_CLIENT_ENV_DROP)}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The account the server must run as: its own when we are root (servers refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError as exc:
        raise ScratchError(f"running as root needs the {name!r} OS user for the scratch "
                           "server; create it or run the drill as an unprivileged user") from exc


def _untraversable(folder: Path, account: pwd.struct_passwd) -> Path | None:
    """The first folder on the way to `folder` that `account` may not pass through."""
    groups = {account.pw_gid, *os.getgrouplist(account.pw_name, account.pw_gid)}
    for d in [folder, *folder.parents]:
        st = d.stat()
        if st.st_uid == account.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid in groups:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return d
    return None


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


@dataclass
class Instance:
    """One scratch server; use as a context manager so teardown always runs."""

    engine: str
    parent: Path | None = None
    host: str = "127.0.0.1"
    port: int = 0
    root: Path | None = None
    proc: subprocess.Popen | None = None
    version: str = ""
    steps: dict[str, float] = field(default_factory=dict)
    # Extra server options (e.g. a preloaded library for a test); none for drills.
    extra_args: tuple[str, ...] = ()

    # ------------------------------------------------------------ paths

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def socket_path(self) -> Path:
        """PostgreSQL: the socket folder; MariaDB: the socket file."""
        return self.root if self.engine == "postgresql" else self.root / "mysqld.sock"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    # ------------------------------------------------------------ lifecycle

    def create(self) -> None:
        """Make the private folder (0700, owned by the server's account)."""
        if self.parent is not None:
            self.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{self.engine[:2]}-",
                                          dir=self.parent))
        (self.root / "owner").write_text(f"{os.getpid()}\n")
        account = _service_user("postgres" if self.engine == "postgresql" else "mysql")
        if account:
            os.chown(self.root, account.pw_uid, account.pw_gid)
            blocked = _untraversable(self.root.parent, account)
            if blocked:
                raise ScratchError(f"the {account.pw_name} account cannot enter {blocked}: "
                                   "choose a scratch folder it can reach (drill.scratch_dir)")
        os.chmod(self.root, 0o700)

    def init(self) -> None:
        if self.engine == "postgresql":
            self._run([str(PG_BIN / "initdb"), "-D", str(self.datadir), "-U", "postgres",
                       "--auth-local=trust", "--auth-host=reject", "-E", "UTF8",
                       "--locale=C.UTF-8", "--no-sync", "--no-instructions"],
                      as_server=True, what="initdb")
        else:
            argv = ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}",
                    "--auth-root-authentication-method=socket",
                    f"--auth-root-socket-user={getpass.getuser()}", "--skip-test-db",
                    "--skip-name-resolve"]
            if os.geteuid() == 0:
                argv.append("--user=mysql")
            self._run(argv, what="mariadb-install-db")

    def start(self) -> None:
        if not self.port:
            self.port = free_port(self.host)
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the child, closed below
        account = _service_user("postgres" if self.engine == "postgresql" else "mysql")
        if account:  # mariadbd reopens its error log after switching to its account
            os.chown(self.log, account.pw_uid, account.pw_gid)
        try:
            if self.engine == "postgresql":
                argv = [str(PG_BIN / "postgres"), "-D", str(self.datadir), "-p", str(self.port),
                        "-c", f"listen_addresses={self.host}",
                        "-c", f"unix_socket_directories={self.root}",
                        "-c", "unix_socket_permissions=0700",
                        # Thrown away afterwards: durability only costs restore time.
                        "-c", "fsync=off", "-c", "full_page_writes=off",
                        "-c", "synchronous_commit=off", "-c", "archive_mode=off",
                        "-c", "wal_level=minimal", "-c", "max_wal_senders=0",
                        "-c", "max_wal_size=8GB", "-c", "checkpoint_timeout=1h",
                        "-c", "autovacuum=off", "-c", "maintenance_work_mem=256MB",
                        "-c", "shared_buffers=128MB", "-c", "logging_collector=off",
                        "-c", "log_min_messages=warning"]
                kw = ({"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
                      if account else {})
            else:
                argv = ["mariadbd", "--no-defaults", f"--datadir={self.datadir}",
                        f"--port={self.port}", f"--bind-address={self.host}",
                        f"--socket={self.socket_path}", f"--pid-file={self.root}/mariadbd.pid",
                        f"--log-error={self.log}", f"--tmpdir={self.root}",
                        "--skip-log-bin", "--skip-name-resolve",
                        "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                        "--innodb-buffer-pool-size=256M", "--max-allowed-packet=256M"]
                if os.geteuid() == 0:
                    argv.append("--user=mysql")
                kw = {}
            argv += list(self.extra_args)
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, env=clean_env(), cwd=self.root,
                                         start_new_session=True, **kw)
        finally:
            out.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise ScratchError(f"the scratch {self.engine} server exited with "
                                   f"{self.proc.returncode} while starting:\n{_tail(self.log)}")
            probe = self.client(["SELECT version()"], check=False, timeout=10)
            if probe.returncode == 0:
                full = probe.stdout.strip().splitlines()[-1] if probe.stdout else ""
                self.version = " ".join(full.split()[:2]) if self.engine == "postgresql" \
                    else full
                return
            if time.monotonic() > deadline:
                raise ScratchError(f"the scratch {self.engine} server did not accept "
                                   f"connections within {_START_TIMEOUT:.0f} s:\n"
                                   f"{_tail(self.log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (fast: the data is thrown away) and remove the folder."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                # PostgreSQL: SIGQUIT is the immediate shutdown; MariaDB: SIGTERM.
                sig = signal.SIGQUIT if self.engine == "postgresql" else signal.SIGTERM
                try:
                    os.kill(self.proc.pid, sig)
                    self.proc.wait(timeout=_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=_STOP_TIMEOUT)
                except ProcessLookupError:
                    pass
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Instance:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------ clients

    def _run(self, argv: list[str], *, as_server: bool = False, what: str,
             timeout: float = 120) -> subprocess.CompletedProcess:
        account = _service_user("postgres") if as_server else None
        kw = ({"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
              if account else {})
        try:
            res = subprocess.run(argv, capture_output=True, text=True, env=clean_env(),
                                 timeout=timeout, cwd=self.root, **kw)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ScratchError(f"{what}: {exc}") from exc
        if res.returncode:
            raise ScratchError(f"{what} failed ({res.returncode}): "
                               f"{(res.stderr or res.stdout).strip()[-800:]}")
        return res

    def client_argv(self, database: str | None = None) -> list[str]:
        if self.engine == "postgresql":
            return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                    "-h", str(self.socket_path), "-p", str(self.port), "-U", "postgres",
                    "-d", database or "postgres"]
        argv = ["mariadb", "--no-defaults", f"--socket={self.socket_path}", "-u", "root",
                "--batch", "--skip-column-names", "--quick"]
        return argv + ([f"--database={database}"] if database else [])

    def client(self, statements: list[str], database: str | None = None, *,
               check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run SQL statements through the engine's own client; stop at the first error."""
        argv = self.client_argv(database)
        for s in statements:
            argv += ["-c", s] if self.engine == "postgresql" else ["-e", s]
        res = subprocess.run(argv, capture_output=True, text=True, env=clean_env(),
                             timeout=timeout)
        if check and res.returncode:
            raise ScratchError(f"SQL on the scratch instance failed: {res.stderr.strip()[-800:]}")
        return res

    def stream(self, query: str, database: str,
               env: dict[str, str] | None = None) -> Iterator[bytes]:
        """Rows of `query` as the client prints them, in blocks (for checksums)."""
        argv = self.client_argv(database)
        argv += (["-c", f"COPY ({query}) TO STDOUT"] if self.engine == "postgresql"
                 else ["-e", query])
        yield from stream_rows(argv, dict(clean_env(), **(env or {})))

    def create_database(self, name: str) -> None:
        if self.engine == "postgresql":
            self.client([f"CREATE DATABASE {quote_ident(name, self.engine)} TEMPLATE template0 "
                         "ENCODING 'UTF8'"])
        else:
            self.client([f"CREATE DATABASE {quote_ident(name, self.engine)} "
                         "CHARACTER SET utf8mb4"])

    def restore(self, dump: Path, fmt: str, database: str, jobs: int = 2) -> None:
        """pg_restore / the mariadb client, both stopping at the first error."""
        if self.engine == "postgresql":
            if fmt != "custom":
                raise ScratchError(f"a PostgreSQL drill restores pg_dump -Fc files, not {fmt!r}")
            # Roles and grants are cluster-wide (pg_dumpall -g), not in a database dump.
            argv = ["pg_restore", "--exit-on-error", f"--jobs={jobs}", "--no-owner",
                    "--no-privileges", "-h", str(self.socket_path), "-p", str(self.port),
                    "-U", "postgres", "-d", database, str(dump)]
            res = subprocess.run(argv, capture_output=True, text=True, env=clean_env())
            if res.returncode:
                raise ScratchError(f"pg_restore failed ({res.returncode}): "
                                   f"{res.stderr.strip()[-800:]}")
            return
        argv = self.client_argv(database)
        argv.remove("--quick")
        if fmt == "sql.gz":
            err = _feed_gzip(argv, dump)
        elif fmt == "sql.zst":
            err = _feed_zstd(argv, dump)
        else:
            with open(dump, "rb") as fh:
                res = subprocess.run(argv, stdin=fh, capture_output=True, env=clean_env())
            err = (res.returncode, res.stderr.decode(errors="replace"))
        if err[0]:
            raise ScratchError(f"the mariadb client stopped at the first error ({err[0]}): "
                               f"{err[1].strip()[-800:]}")


def _feed_gzip(argv: list[str], dump: Path) -> tuple[int, str]:
    """Decompress in this process into the client: a broken archive fails the restore."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=clean_env())
    failure = ""
    try:
        with gzip.open(dump, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                proc.stdin.write(block)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        failure = f"decompressing {dump.name}: {exc}"
    except BrokenPipeError:
        pass
    finally:
        with _quiet():
            proc.stdin.close()
    if failure:
        proc.kill()
    stderr = proc.stderr.read().decode(errors="replace")
    rc = proc.wait()
    return (rc or (1 if failure else 0), failure or stderr)


def _feed_zstd(argv: list[str], dump: Path) -> tuple[int, str]:
    """zstd -dc into the client; both must exit 0 (a cut frame fails the restore)."""
    unzip = subprocess.Popen(["zstd", "-q", "-d", "-c", str(dump)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=clean_env())
    client = subprocess.Popen(argv, stdin=unzip.stdout, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=clean_env())
    unzip.stdout.close()
    client_err = client.stderr.read().decode(errors="replace")
    unzip_err = unzip.stderr.read().decode(errors="replace")
    unzip_rc, client_rc = unzip.wait(), client.wait()
    if unzip_rc:
        if client_rc == 0:
            client_rc = 1
        return client_rc, f"decompressing {dump.name}: zstd exit {unzip_rc}: {unzip_err}"
    return client_rc, client_err


class _quiet:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, OSError)


def stream_rows(argv: list[str], env: dict[str, str]) -> Iterator[bytes]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        yield from iter(lambda: proc.stdout.read(1 << 16), b"")
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        rc = proc.wait()
    if rc:
        raise ScratchError(f"{argv[0]} failed ({rc}): {err.strip()[-500:]}")


def quote_ident(name: str, engine: str) -> str:
    if engine == "postgresql":
        return '"' + name.replace('"', '""') + '"'
    return "`" + name.replace("`", "``") + "`"


def quote_literal(value: str, engine: str) -> str:
    if engine == "mariadb":
        value = value.replace("\\", "\\\\")
    return "'" + value.replace("'", "''") + "'"


def sweep_stale(parent: Path | None = None) -> list[Path]:
    """Remove scratch folders left by a drill that was killed outright (SIGKILL, power).

    A folder is stale when the drill process named in its ``owner`` file is gone; its
    server (if still running) is stopped first through the pid file it wrote.
    """
    parent = Path(parent or tempfile.gettempdir())
    removed = []
    for d in parent.glob(f"{PREFIX}*"):
        try:
            owner = int((d / "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        for pidfile in (d / "data" / "postmaster.pid", d / "mariadbd.pid"):
            with _quiet():
                pid = int(pidfile.read_text().split()[0])
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def require_tools(engine: str) -> None:
    need = ([str(PG_BIN / "initdb"), str(PG_BIN / "postgres"), "pg_restore", "psql"]
            if engine == "postgresql" else ["mariadb-install-db", "mariadbd", "mariadb"])
    missing = [t for t in need if not shutil.which(t)]
    if missing:
        raise MhopsError(f"the {engine} drill needs {', '.join(missing)} on this machine "
                         "(set MHOPS_PG_BIN for another PostgreSQL server folder)")
