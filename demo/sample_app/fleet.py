"""A fleet for the sample component: this machine plus loopback SSH hosts (tests, bench).

``write_inventory(lab, root, ...)`` writes an inventory whose group ``api`` holds the
lab's hosts (and, optionally, ``localhost``), each with its own app_root under `root`,
its own address and a free port, served by gunicorn (graceful reload on HUP).
``stop_services(components)`` stops every gunicorn those settings started.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import yaml

GUNICORN = Path(sys.executable).parent / "gunicorn"


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def component(app_root: Path, address: str, port: int) -> dict:
    shared = app_root / "shared"
    pidfile = shared / "run" / "app.pid"
    start = (f"{GUNICORN} --daemon --pid {pidfile} --bind {address}:{port} "
             f"--chdir {app_root}/current --workers 2 --graceful-timeout 5 --timeout 20 "
             f"--error-logfile {shared}/logs/gunicorn.log app:application")
    return {
        "app_root": str(app_root), "address": address, "port": port,
        "health_url": f"http://{address}:{port}/health",
        "version_url": f"http://{address}:{port}/version",
        "process": "gunicorn", "pidfile": str(pidfile), "log": str(shared / "logs" / "app.log"),
        "database": str(shared / "data" / "app.db"),
        "start": start, "reload": f"kill -HUP $(cat {pidfile})",
        "stop": f"kill -TERM $(cat {pidfile})",
        "services": ["sample-api (gunicorn)"], "expected_downtime_s": 0,
    }


def write_inventory(lab, root: Path, *, local: bool = True, group: str = "api",
                    name: str = "sample", extra_hostvars: dict | None = None
                    ) -> tuple[Path, dict[str, dict]]:
    root = Path(root)
    comps: dict[str, dict] = {}
    hostvars = {}
    for h in lab.hosts:
        comps[h.name] = component(root / "hosts" / h.name / "srv" / name, h.address,
                                  free_port(h.address))
        hostvars[h.name] = {"mhops_release_components": {name: comps[h.name]},
                            **(extra_hostvars or {})}
    inv = lab.inventory(group=group, hostvars=hostvars)
    if local:
        comps["localhost"] = component(root / "hosts" / "localhost" / "srv" / name,
                                       "127.0.0.1", free_port("127.0.0.1"))
        inv["all"]["children"][group]["hosts"]["localhost"] = {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "mhops_release_components": {name: comps["localhost"]}, **(extra_hostvars or {})}
    path = root / "inventory.yml"
    path.write_text(yaml.safe_dump(inv, sort_keys=False))
    return path, comps


def stop_services(comps: dict[str, dict], timeout: float = 10.0) -> None:
    pids = []
    for c in comps.values():
        try:
            pids.append(int(Path(c["pidfile"]).read_text().strip()))
        except (OSError, ValueError):
            continue
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
