"""Loopback SSH lab: N real ``sshd`` hosts on this machine for tests and benchmarks.

Owns: generating the lab's host and client keys, one sshd config per host, starting
one ``/usr/sbin/sshd`` per host on its own loopback address (127.0.0.X) and free port,
the matching ``known_hosts`` file (host key checking stays ON), an Ansible inventory
pointing at the hosts, and killing every sshd it started (plus their children).

Does not own: installing openssh-server (the CI script does), any non-loopback address.

Usage::

    with SshLab(tmp_path, 3) as lab:
        lab.write_inventory(tmp_path / "inventory.yml")
        ...
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

SSHD = Path("/usr/sbin/sshd")
# sshd refuses to start without its privilege separation directory; Debian creates it
# from the service unit / init script, neither of which runs in a container.
PRIVSEP_DIR = Path("/run/sshd")
STARTUP_TIMEOUT = 10.0
# An sshd that exits with "Address already in use" lost the race between our probe bind
# and its own bind to another process; it gets a fresh port instead of failing the lab.
PORT_RETRIES = 3


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    port: int


def _require_tools() -> str:
    missing = []
    if not (SSHD.is_file() and os.access(SSHD, os.X_OK)):
        missing.append(f"{SSHD} (package openssh-server)")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        missing.append("ssh-keygen (package openssh-client)")
    if missing:
        raise RuntimeError("SshLab cannot start, missing: " + "; ".join(missing))
    return keygen


def _free_port(address: str) -> int:
    # Binding to the host's own address (not 0.0.0.0) lets several labs share a port
    # number on different addresses, and the kernel never hands out ports <= 1024 here.
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        if port > 1024:
            return port
    raise RuntimeError(f"could not find a free port above 1024 on {address}")


def _ssh_banner(address: str, port: int, timeout: float) -> bytes | None:
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            if data.startswith(b"SSH-"):
                # Answering with our own identification makes sshd treat the close as an
                # ordinary preauth disconnect instead of logging a kex error at ERROR level.
                s.sendall(b"SSH-2.0-mhops_lab_probe\r\n")
    except OSError:
        return None
    return data if data.startswith(b"SSH-") else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


def _children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        # comm (field 2) may contain spaces and parentheses; ppid follows the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _kill_tree(roots: Iterable[int]) -> None:
    # Per-connection sshd children call setsid(), so killing a process group misses them,
    # and once a listener dies its children are reparented away from it. Freezing the
    # whole tree first keeps the parent links intact and stops anyone forking meanwhile.
    frozen: set[int] = set()
    pending = list(roots)
    while pending:
        for pid in pending:
            _signal(pid, signal.SIGSTOP)
        frozen.update(pending)
        tree = _children_by_parent()
        pending = [c for p in frozen for c in tree.get(p, ()) if c not in frozen]
    for pid in frozen:
        _signal(pid, signal.SIGKILL)


class SshLab:
    """``count`` sshd hosts named ``{prefix}1..`` on 127.0.0.{first_octet}.. (see module doc)."""

    def __init__(
        self,
        workdir: Path,
        count: int,
        *,
        first_octet: int = 2,
        prefix: str = "lab",
        user: str = "root",
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if first_octet < 1 or first_octet + count - 1 > 254:
            raise ValueError(
                f"addresses 127.0.0.{first_octet}..127.0.0.{first_octet + count - 1} "
                "must lie within 127.0.0.1..127.0.0.254"
            )
        self.workdir = Path(workdir).resolve()
        # The path lands unquoted in sshd_config (where % is a token) and in
        # ansible_ssh_common_args (which Ansible shlex-splits).
        if any(c.isspace() or c in "%#\"'\\" for c in str(self.workdir)):
            raise ValueError(f"workdir must not contain spaces, quotes, % or #: {self.workdir}")
        self.count = count
        self.first_octet = first_octet
        self.prefix = prefix
        self.user = user
        self.hosts: list[LabHost] = []
        self.known_hosts = self.workdir / "known_hosts"
        self.client_key = self.workdir / "client_key"
        self.host_key = self.workdir / "host_key"
        self._procs: dict[str, subprocess.Popen] = {}
        self._ports: dict[str, int] = {}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Self:
        if self._procs:
            raise RuntimeError("SshLab is already running; stop() it first")
        keygen = _require_tools()
        self.workdir.mkdir(parents=True, exist_ok=True)
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        for key in (self.host_key, self.client_key):
            for stale in (key, key.with_suffix(".pub")):
                stale.unlink(missing_ok=True)
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", f"mhops-{key.name}", "-f", key],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
        host_pub = self.host_key.with_suffix(".pub").read_text().split()
        # Registered before the first sshd spawns so a failure half-way still cleans up.
        atexit.register(self.stop)
        planned = [
            LabHost(f"{self.prefix}{i + 1}", f"127.0.0.{self.first_octet + i}", 0)
            for i in range(self.count)
        ]
        try:
            for host in planned:
                self._spawn(host)
            deadline = time.monotonic() + STARTUP_TIMEOUT
            self.hosts = [self._await_banner(host, deadline) for host in planned]
        except BaseException:
            self.stop()
            raise
        self.known_hosts.write_text(
            "".join(f"[{h.address}]:{h.port} {host_pub[0]} {host_pub[1]}\n" for h in self.hosts)
        )
        return self

    def _paths(self, host: LabHost) -> tuple[Path, Path, Path]:
        d = self.workdir / host.name
        return d / "sshd_config", d / "sshd.log", d / "sshd.pid"

    def _spawn(self, host: LabHost) -> None:
        port = self._ports[host.name] = _free_port(host.address)
        conf, log, pid = self._paths(host)
        conf.parent.mkdir(exist_ok=True)
        conf.write_text(
            f"ListenAddress {host.address}:{port}\n"
            f"HostKey {self.host_key}\n"
            f"AuthorizedKeysFile {self.client_key.with_suffix('.pub')}\n"
            f"PidFile {pid}\n"
            "PubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The lab lives in tmp dirs whose ownership/modes StrictModes would reject.
            "StrictModes no\n"
            "MaxStartups 200\n"
            "MaxSessions 100\n"
            "LogLevel ERROR\n"
            "PrintMotd no\n"
            "PrintLastLog no\n"
            "X11Forwarding no\n"
            # Ansible falls back to sftp for file transfer when pipelining is not possible.
            "Subsystem sftp internal-sftp\n"
        )
        log.unlink(missing_ok=True)
        # -D keeps sshd in the foreground so we hold its real pid; its own session keeps
        # terminal signals meant for the test runner away from it, leaving stop() in charge.
        self._procs[host.name] = subprocess.Popen(
            [str(SSHD), "-D", "-f", str(conf), "-E", str(log)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _await_banner(self, host: LabHost, deadline: float) -> LabHost:
        retries = PORT_RETRIES
        while True:
            port = self._ports[host.name]
            proc = self._procs[host.name]
            log = self._paths(host)[1]
            if proc.poll() is not None:
                if retries and "Address already in use" in _tail(log):
                    retries -= 1
                    self._spawn(host)
                    continue
                raise RuntimeError(
                    f"sshd for {host.name} ({host.address}:{port}) exited with code "
                    f"{proc.returncode}; last lines of {log}:\n{_tail(log)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"sshd for {host.name} ({host.address}:{port}) sent no SSH banner within "
                    f"{STARTUP_TIMEOUT:.0f}s; last lines of {log}:\n{_tail(log)}"
                )
            if _ssh_banner(host.address, port, min(1.0, remaining)):
                return LabHost(host.name, host.address, port)
            time.sleep(0.02)

    def unreachable_host(self, name: str = "gone") -> LabHost:
        # Just past the lab's range, so it cannot be mistaken for a lab host; the port was
        # free a moment ago and nothing of ours will ever listen on it.
        octet = self.first_octet + self.count
        address = f"127.0.0.{octet}" if octet <= 254 else "127.0.0.1"
        return LabHost(name, address, _free_port(address))

    def inventory(
        self,
        *,
        extra_hosts: Sequence[LabHost] = (),
        hostvars: dict[str, dict] | None = None,
        group: str = "lab",
    ) -> dict:
        if not self.hosts:
            raise RuntimeError("SshLab.inventory() needs start() first (ports are not known)")
        hostvars = hostvars or {}
        common_args = (
            f"-o UserKnownHostsFile={self.known_hosts} "
            "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
        )
        hosts = {
            h.name: {
                "ansible_host": h.address,
                "ansible_port": h.port,
                "ansible_user": self.user,
                "ansible_ssh_private_key_file": str(self.client_key),
                "ansible_ssh_common_args": common_args,
                "ansible_python_interpreter": "/usr/bin/python3",
                **hostvars.get(h.name, {}),
            }
            for h in [*self.hosts, *extra_hosts]
        }
        return {"all": {"children": {group: {"hosts": hosts}}}}

    def write_inventory(self, path: Path, **kw) -> Path:
        # PyYAML is imported here so the rest of the lab stays usable without it.
        import yaml

        path = Path(path)
        path.write_text(yaml.safe_dump(self.inventory(**kw), sort_keys=False))
        return path

    def stop(self) -> None:
        procs, self._procs = self._procs, {}
        _kill_tree(p.pid for p in procs.values() if p.poll() is None)
        for proc in procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        atexit.unregister(self.stop)
