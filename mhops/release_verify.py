"""Post-conditions of a release change, checked with Testinfra, and downtime polling.

Owns the gate an upgrade (and a rollback) must pass on each host before the next
batch starts: the service process is running, its port is listening, the served
version equals the wanted one and the health URL answers 200 (both within a retry
window), and no new error line appeared in its log since the change began. Each
check is one result ``{check, ok, detail, seconds}``. Also owns the control-node
poller that measures what a switch costs clients (failed health polls, longest gap).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhops.inventory import Host, testinfra_host

CHECKS = ("process", "port", "version", "health", "log")
ERROR_LINES = r"\b(ERROR|CRITICAL|FATAL)\b|Traceback"


@dataclass
class Target:
    host: Host
    cfg: dict[str, Any]
    version: str
    log_offset: int


def _service_probe(cfg: dict[str, Any], samples: int) -> str:
    """One shell round trip: the pid file's process, `samples` version answers, health,
    and what listens on the service's port (ss)."""
    q = shlex.quote
    return (
        f"pid=$(cat {q(cfg['pidfile'])} 2>/dev/null); "
        'if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then '
        'echo "P ok $pid $(tr \'\\0\' \' \' < /proc/$pid/cmdline | cut -c1-160)"; '
        'else echo "P fail $pid"; fi; '
        f"for i in $(seq {samples}); do "
        f"echo \"V $(curl -s -m 3 -w ' %{{http_code}}' {q(cfg['version_url'])} | tr -d '\\n')\"; "
        "sleep 0.1; done; "
        f"echo \"H $(curl -s -m 3 -w ' %{{http_code}}' {q(cfg['health_url'])} "
        "| tr -d '\\n' | tail -c 300)\"; "
        f"echo \"L $(ss -Hltn 'sport = :{int(cfg['port'])}' 2>/dev/null "
        "| awk '{print $4}' | tr '\\n' ' ')\"")


def _served_version(body: str) -> str | None:
    try:
        return str(json.loads(body).get("version"))
    except (ValueError, AttributeError):
        return None


def _split_answer(line: str) -> tuple[str, str]:
    """'V <body> <code>' -> (code, body)."""
    body, _, code = line[2:].rpartition(" ")
    return code.strip(), body


def _retry(deadline: float, probe, interval: float = 0.25, need: int = 1):
    """Call probe() -> (ok, detail) until it is ok `need` times running or time is up."""
    streak, detail = 0, ""
    while True:
        try:
            ok, detail = probe()
        except Exception as exc:  # a dropped SSH master or a vanished control folder
            ok, detail = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
            _control_dir()
        streak = streak + 1 if ok else 0
        if streak >= need:
            return True, detail
        if time.monotonic() >= deadline:
            return False, detail
        time.sleep(interval)


def _control_dir() -> None:
    # Another run may remove ~/.ansible/cp; ssh cannot recreate it for its master socket.
    Path("~/.ansible/cp").expanduser().mkdir(parents=True, exist_ok=True, mode=0o700)


def check_host(th, t: Target, window_s: float) -> list[dict[str, Any]]:
    cfg = t.cfg
    deadline = time.monotonic() + window_s
    results = []

    def record(check: str, ok: bool, detail: str, started: float) -> None:
        results.append({"check": check, "ok": bool(ok), "detail": detail,
                        "seconds": round(time.monotonic() - started, 2)})

    # Process, port, served version (several answers in a row: just after a graceful
    # reload an old worker may still answer) and health: one round trip per retry.
    s = time.monotonic()
    cmd = _service_probe(cfg, 3)
    last: dict[str, tuple[bool, str]] = {}

    def service():
        out = th.run(cmd).stdout.splitlines()
        p = next((ln for ln in out if ln.startswith("P ")), "P fail no answer")
        parts = p.split(" ", 3)
        want = cfg.get("process", "")
        proc_ok = parts[1] == "ok" and want in (parts[3] if len(parts) > 3 else "")
        last["process"] = (proc_ok, f"pid {parts[2] if len(parts) > 2 else '?'}: "
                                    f"{parts[3][:120] if len(parts) > 3 else 'not running'}")
        answers = [_split_answer(ln) for ln in out if ln.startswith("V ")]
        got = [_served_version(b) if c == "200" else None for c, b in answers]
        last["version"] = (bool(got) and all(g == t.version for g in got),
                           f"{cfg['version_url']} -> {', '.join(map(str, got)) or 'no answer'}"
                           f" (want {t.version})")
        code, body = _split_answer(next((ln for ln in out if ln.startswith("H ")), "H  "))
        last["health"] = (code == "200", f"{cfg['health_url']} -> {code or 'no answer'} "
                                         f"{body[:120]}")
        addr = cfg.get("address", "127.0.0.1")
        listen = next((ln[2:].split() for ln in out if ln.startswith("L ")), [])
        wanted = {f"{addr}:{cfg['port']}", f"0.0.0.0:{cfg['port']}", f"*:{cfg['port']}",
                  f"[::]:{cfg['port']}"}
        last["port"] = (bool(wanted & set(listen)),
                        f"tcp {addr}:{cfg['port']} "
                        f"{'listening' if wanted & set(listen) else 'not listening'}"
                        f" ({' '.join(listen) or 'nothing on that port'})")
        return all(v[0] for v in last.values()), ""
    ok, why = _retry(deadline, service)
    took = round(time.monotonic() - s, 2)
    for check in ("process", "port", "version", "health"):
        good, detail = last.get(check, (False, why or "no answer"))
        results.append({"check": check, "ok": good, "detail": detail, "seconds": took})

    s = time.monotonic()
    log = cfg.get("log")
    if log:
        pattern = cfg.get("error_pattern") or ERROR_LINES
        # One command: the count on the first line, then the last matching lines.
        cmd = (f"tail -c +{int(t.log_offset) + 1} {shlex.quote(log)} 2>/dev/null | "
               f"grep -E {shlex.quote(pattern)} > /tmp/.mhops-gate.$$; "
               f"wc -l < /tmp/.mhops-gate.$$; tail -n 3 /tmp/.mhops-gate.$$; "
               f"rm -f /tmp/.mhops-gate.$$")

        def log_lines():
            out = th.run(cmd)
            head, *lines = out.stdout.splitlines() or ["?"]
            if not head.strip().isdigit():
                raise RuntimeError(f"could not read {log}: {out.stderr.strip()[:200]}")
            n = int(head.strip())
            return n == 0, f"{n} new error line(s) in {log}" + (
                ": " + " | ".join(lines) if lines else "")
        # Not a window: the lines are there or not; retried only for a broken connection.
        for attempt in range(3):
            try:
                ok, detail = log_lines()
                break
            except Exception as exc:
                ok, detail = False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                _control_dir()
                time.sleep(0.5 * (attempt + 1))
        record("log", ok, detail, s)
    else:
        record("log", True, "no log configured", s)
    return results


_WARM = threading.Lock()


def _testinfra_hosts(hosts: list[Host], sources, touch: bool = False) -> dict[str, Any]:
    # Testinfra runs ansible-inventory from PATH: the one beside this Python.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
    _control_dir()
    # Testinfra resolves ansible:// hosts through one cached inventory (ansible-inventory
    # runs once): resolve under a lock, never from several threads at once.
    with _WARM:
        out = {h.name: testinfra_host(h, list(sources)) for h in hosts}
        for th in out.values() if touch else ():
            th.run("true")  # the inventory is read (and SSH connected) on first use
        return out


def warm(hosts: list[Host], sources) -> threading.Thread:
    """Resolve the Testinfra hosts in the background while the first batch deploys."""
    def run():
        try:
            _testinfra_hosts(hosts, sources, touch=True)
        except Exception:  # the gate itself will report what is wrong
            pass
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def gate(targets: list[Target], sources: list[str] | tuple[str, ...],
         window_s: float) -> dict[str, list[dict[str, Any]]]:
    """Run every check on every target host in parallel; {host: results}."""
    hosts = _testinfra_hosts([t.host for t in targets], sources)
    out: dict[str, list[dict[str, Any]]] = {}

    def one(t: Target):
        try:
            return t.host.name, check_host(hosts[t.host.name], t, window_s)
        except Exception as exc:  # one host's broken connection fails that host only
            return t.host.name, [{"check": "process", "ok": False, "seconds": 0,
                                  "detail": f"verification failed: {type(exc).__name__}: "
                                            f"{' '.join(str(exc).split())[:300]}"}]
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        for name, res in pool.map(one, targets):
            out[name] = res
    return out


def passed(results: list[dict[str, Any]]) -> bool:
    return bool(results) and all(r["ok"] for r in results)


@dataclass
class Poller:
    """Polls health URLs from the control node every `interval` s while a change runs."""

    urls: dict[str, str]
    interval: float = 0.1
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _poll(self, host: str, url: str) -> None:
        st = self.stats[host] = {"polls": 0, "failed": 0, "longest_gap_s": 0.0}
        down_since = None
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    ok = resp.status == 200
                    resp.read()
            except (urllib.error.URLError, OSError, ValueError):
                ok = False
            st["polls"] += 1
            if ok:
                if down_since is not None:
                    st["longest_gap_s"] = max(st["longest_gap_s"], t0 - down_since)
                    down_since = None
            else:
                st["failed"] += 1
                down_since = down_since if down_since is not None else t0
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - t0)))
        if down_since is not None:
            st["longest_gap_s"] = max(st["longest_gap_s"], time.monotonic() - down_since)
        st["longest_gap_s"] = round(st["longest_gap_s"], 3)

    def __enter__(self) -> Poller:
        for host, url in self.urls.items():
            if url and re.match(r"^https?://", url):
                th = threading.Thread(target=self._poll, args=(host, url), daemon=True)
                th.start()
                self._threads.append(th)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=5)
