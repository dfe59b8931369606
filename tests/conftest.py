"""Shared fixtures: loopback SSH hosts and a workspace (inventory, logs, records, state)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("ANSIBLE_CONFIG", str(REPO / "ansible.cfg"))
# Testinfra's ansible backend runs ansible-inventory from PATH: use this environment's.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]])

def load_collector(name: str = "mhops_collect"):
    """The collector imported from library/ as a plain module (it runs on remote hosts)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "library" / "mhops_collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Clearly fake identifiers: the area code and sequence are made up for tests only.
FAKE_ID = "11010119900307123X"
FAKE_MOBILE = "13912345678"


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    from mhops.lab import SshLab

    with SshLab(tmp_path_factory.mktemp("lab"), 3, first_octet=60) as running:
        yield running


@dataclass
class Workspace:
    root: Path
    inventory: Path
    records: Path
    state: Path
    logs: dict[str, Path]

    def log(self, host: str) -> Path:
        return self.logs[host]

    def write(self, host: str, *lines: str) -> None:
        with self.logs[host].open("a") as fh:
            for line in lines:
                fh.write(line + "\n")

    def rotate(self, host: str) -> None:
        """logrotate's default: rename to .1 and start a new file."""
        log = self.logs[host]
        os.replace(log, log.with_name(log.name + ".1"))
        log.touch()

    def runs(self) -> list[Path]:
        return sorted(p for p in self.records.iterdir() if not p.name.startswith("."))


def make_workspace(root: Path, lab, *, extra_hosts=(), hostvars=None) -> Workspace:
    logs = {}
    hv = {}
    for h in lab.hosts:
        log = root / "logs" / h.name / "app.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        logs[h.name] = log
        hv[h.name] = {"mhops_inspect_logs": [{"path": str(log),
                                              "patterns": {"error": "ERROR",
                                                           "timeout": "timed out"}}]}
    for name, extra in (hostvars or {}).items():
        hv.setdefault(name, {}).update(extra)
    inv = root / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    lab.write_inventory(inv / "hosts.yml", extra_hosts=list(extra_hosts), hostvars=hv)
    # Loopback hosts share this machine's ports; only the checks under test may alert.
    (inv / "group_vars" / "all.yml").write_text(yaml.safe_dump({
        "mhops_inspect_system_logs": "none",
        "mhops_inspect_ports_allowed": ["1-65535"],
        "mhops_inspect_thresholds": {"cpu_percent": {"warning": 101, "critical": 101},
                                     "load_per_core": {"warning": 100, "critical": 100},
                                     "memory_percent": {"warning": 99, "critical": 100},
                                     "disk_percent": {"warning": 99, "critical": 100},
                                     "inode_percent": {"warning": 99, "critical": 100}},
    }))
    records, state = root / "records", root / "state"
    return Workspace(root, inv, records, state, logs)


@pytest.fixture
def ws(tmp_path, lab):
    return make_workspace(tmp_path, lab)


@pytest.fixture
def run_inspect(ws):
    from mhops import inspect

    def run(transport="fabric", workspace=None, **kw):
        w = workspace or ws
        lines: list[str] = []
        opts = inspect.Options(inventory=[str(w.inventory)], records_dir=w.records,
                               state_dir=w.state, transport=transport, echo=lines.append,
                               operator="测试员", **kw)
        outcome = inspect.run(opts)
        outcome.lines = lines
        return outcome
    return run


def results(record: dict, host: str, check: str) -> list[dict]:
    entry = next(h for h in record["hosts"] if h["host"] == host)
    return [r for r in entry["results"] if r["check"] == check]


def log_count(record: dict, host: str, pattern: str = "error") -> int:
    for r in results(record, host, "log_matches"):
        if r["target"].endswith(f"[{pattern}]"):
            return r["value"]
    raise AssertionError(f"no log_matches result for {host} [{pattern}]")


def no_leak(paths, *needles: str) -> None:
    for p in paths:
        for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]):
            text = f.read_text(errors="replace")
            for n in needles:
                assert n not in text, f"{n!r} leaked into {f}"


@pytest.fixture
def clean_cp():
    """Start without Ansible's kept SSH masters: a reused master skips the host key check."""
    shutil.rmtree(Path.home() / ".ansible" / "cp", ignore_errors=True)
    yield
    shutil.rmtree(Path.home() / ".ansible" / "cp", ignore_errors=True)
