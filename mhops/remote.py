"""Fabric transport: run one command with stdin on many hosts in parallel.

Owns opening Fabric connections from the inventory's connection variables (host
key checking on: known_hosts from the inventory's ``UserKnownHostsFile`` and
``~/.ssh/known_hosts``, unknown keys rejected), connect and command timeouts,
local execution for ``ansible_connection: local``, and reporting each host's
outcome as soon as it is known. One round trip per host.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from mhops.inventory import Host, ssh_params

OK, FAILED, UNREACHABLE = "ok", "failed", "unreachable"


@dataclass
class RemoteOutcome:
    host: str
    status: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    error: str = ""
    seconds: float = 0.0


def _python(host: Host) -> str:
    if host.local:
        interp = host.vars.get("ansible_python_interpreter")
        return str(interp) if interp and not str(interp).startswith("auto") else sys.executable
    return ssh_params(host).python


def _run_one(host: Host, command: str, stdin: str, connect_timeout: int,
             command_timeout: int) -> RemoteOutcome:
    start = time.monotonic()
    out = RemoteOutcome(host=host.name, status=FAILED)
    try:
        if host.local:
            res = subprocess.run(command, shell=True, input=stdin.encode(), capture_output=True,
                                 timeout=command_timeout)
            code, stdout, stderr = res.returncode, res.stdout, res.stderr
        else:
            got = _ssh(host, command, stdin, connect_timeout, command_timeout)
            if isinstance(got, RemoteOutcome):
                got.seconds = time.monotonic() - start
                return got
            code, stdout, stderr = got
        out.stdout = stdout.decode("utf-8", "replace")
        out.stderr = stderr.decode("utf-8", "replace")
        out.exit_code = code
        out.status = OK if code == 0 else FAILED
        if code != 0:
            tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
            out.error = f"exit {code}: " + " | ".join(tail)
    except (subprocess.TimeoutExpired, TimeoutError):
        out.error = f"timed out after {command_timeout} s"
    except Exception as exc:  # one host's failure must not stop the others
        out.error = f"{type(exc).__name__}: {exc}"
    out.seconds = time.monotonic() - start
    return out


def connection(host: Host, connect_timeout: int = 10):
    """A Fabric Connection to `host` as Ansible would reach it (not yet opened)."""
    import paramiko
    from fabric import Connection

    p = ssh_params(host)
    kwargs = {"look_for_keys": p.key_filename is None, "allow_agent": p.key_filename is None,
              "banner_timeout": connect_timeout, "auth_timeout": connect_timeout}
    if p.key_filename:
        kwargs["key_filename"] = p.key_filename
    conn = Connection(p.host, user=p.user, port=p.port, connect_timeout=connect_timeout,
                      connect_kwargs=kwargs)
    # Fabric trusts unknown host keys by default; Ansible here runs with checking on.
    conn.client.set_missing_host_key_policy(
        paramiko.RejectPolicy() if p.host_key_checking else paramiko.WarningPolicy())
    for path in p.known_hosts:
        conn.client.load_host_keys(path)
    return conn


def _ssh(host: Host, command: str, stdin: str, connect_timeout: int, command_timeout: int):
    import paramiko

    p = ssh_params(host)
    conn = connection(host, connect_timeout)
    try:
        try:
            conn.open()
        except (TimeoutError, OSError, paramiko.SSHException) as exc:
            return RemoteOutcome(host=host.name, status=UNREACHABLE,
                                 error=f"{type(exc).__name__}: {exc}")
        if p.become:
            command = f"sudo -n -u {p.become} {command}"
        # Invoke's in_stream feeds stdin a byte at a time with a sleep per byte; a
        # collector of tens of kB would take minutes, so write the channel directly.
        chan = conn.client.get_transport().open_session(timeout=connect_timeout)
        chan.settimeout(command_timeout)
        deadline = time.monotonic() + command_timeout
        chan.exec_command(command)
        chan.sendall(stdin.encode())
        chan.shutdown_write()
        stdout, stderr = bytearray(), bytearray()
        while not (chan.exit_status_ready() and not chan.recv_ready()
                   and not chan.recv_stderr_ready()):
            if time.monotonic() > deadline:
                raise TimeoutError
            if chan.recv_ready():
                stdout += chan.recv(65536)
            elif chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
            else:
                chan.status_event.wait(0.01)
        return chan.recv_exit_status(), bytes(stdout), bytes(stderr)
    finally:
        conn.close()


def run_many(hosts: list[Host], command_for: Callable[[Host], tuple[str, str, float]], *,
             forks: int = 50, connect_timeout: int = 10,
             on_done: Callable[[RemoteOutcome], None] | None = None
             ) -> dict[str, RemoteOutcome]:
    """Run ``command_for(host) -> (command, stdin, timeout)`` on every host, in parallel."""
    results: dict[str, RemoteOutcome] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        futures = {}
        for h in hosts:
            command, stdin, timeout = command_for(h)
            futures[pool.submit(_run_one, h, command, stdin, connect_timeout, timeout)] = h
        for fut in as_completed(futures):
            res = fut.result()
            results[res.host] = res
            if on_done:
                on_done(res)
    return results


def python_command(host: Host) -> str:
    """The command that runs a Python program given on stdin on `host`."""
    return f"{_python(host)} -"
