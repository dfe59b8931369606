"""Invoke tasks: thin wrappers that read options, fall back to invoke.yaml, call mhops.

Exit codes of `invoke inspect`: 0 all normal, 1 warnings, 2 critical or a host
unreachable, 3 the run itself failed (bad input, internal error, lock held).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from invoke import Collection, Exit, task

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))


def _path(value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else ROOT / p


def _fail(exc: Exception) -> Exit:
    return Exit(f"error: {exc}", code=getattr(exc, "exit_code", 3))


@task(
    iterable=["inventory", "notify"],
    help={
        "inventory": "inventory file or folder (repeatable); default inspect.inventory",
        "limit": "Ansible host pattern to select hosts; matching nothing is an error",
        "transport": "fabric (one SSH round trip per host) or ansible (ansible-runner)",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
        "notify": "异常反馈: who was told (repeatable)",
        "note": "异常反馈 note",
        "resolution": "解决方案 entered by the operator",
        "keep_artifacts": "keep the (redacted) ansible-runner artifacts beside the records",
    },
)
def inspect(c, inventory=None, limit=None, transport=None, lang=None, operator=None,
            notify=None, note="", resolution="", keep_artifacts=False):
    """Inspect hosts (CPU, memory, disk, services, ports, health, TLS, logs) and write a record."""
    from mhops import inspect as inspection
    from mhops.errors import MhopsError

    cfg, m = c.config.inspect, c.config.mhops
    opts = inspection.Options(
        inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
        limit=limit,
        transport=transport or cfg.transport,
        lang=lang or m.lang,
        operator=operator or m.operator,
        notified=list(notify or cfg.notified or []),
        feedback_note=note,
        resolution=resolution,
        records_dir=_path(m.records_dir),
        state_dir=_path(m.state_dir),
        timezone=m.timezone,
        forks=int(cfg.forks),
        connect_timeout=int(cfg.connect_timeout),
        vault_password_file=m.vault_password_file or None,
        keep_artifacts=keep_artifacts,
    )
    try:
        outcome = inspection.run(opts)
    except MhopsError as exc:
        raise _fail(exc) from None
    if outcome.exit_code:
        raise Exit(code=outcome.exit_code)


def _schedule_plan(c, kind, when, user, log, inventory):
    from mhops import schedule

    s = c.config.schedule
    inv = inventory or s.inventory or c.config.inspect.inventory
    return schedule.plan(kind=kind or s.kind, when=when or s.when, user=user or s.user,
                         log=_path(log or s.log), invoke_args=["-i", str(_path(inv))],
                         cron_file=Path(s.cron_file), systemd_dir=Path(s.systemd_dir))


@task(help={"kind": "cron or systemd", "when": "cron expression", "user": "account to run as",
            "log": "log file for the scheduled runs", "inventory": "inventory to inspect",
            "check": "only show what would be written"})
def schedule_install(c, kind=None, when=None, user=None, log=None, inventory=None,
                     check=False):
    """Write the cron file (or systemd timer) that runs `invoke inspect` unattended."""
    from mhops import schedule
    from mhops.errors import MhopsError

    try:
        plan = _schedule_plan(c, kind, when, user, log, inventory)
        for path, text in plan.files.items():
            print(f"--- {path}\n{text}", end="")
        if check:
            print("(check mode: nothing written)")
            return
        written = schedule.install(plan, _path(log or c.config.schedule.log))
    except MhopsError as exc:
        raise _fail(exc) from None
    print("installed: " + ", ".join(map(str, written)))


@task(help={"kind": "cron or systemd"})
def schedule_show(c, kind=None):
    """Show the installed schedule."""
    from mhops import schedule

    plan = _schedule_plan(c, kind, None, None, None, None)
    for path, text in schedule.show(list(plan.files)).items():
        print(f"--- {path}\n{text}" if text is not None else f"--- {path}: not installed")


@task(help={"kind": "cron or systemd", "check": "only show what would be removed"})
def schedule_remove(c, kind=None, check=False):
    """Remove the installed schedule."""
    from mhops import schedule
    from mhops.errors import MhopsError

    plan = _schedule_plan(c, kind, None, None, None, None)
    if check:
        print("would remove: " + ", ".join(str(p) for p in plan.files if p.exists()))
        return
    try:
        removed = schedule.remove(list(plan.files))
    except MhopsError as exc:
        raise _fail(exc) from None
    print("removed: " + (", ".join(map(str, removed)) or "nothing"))


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_databases(c) -> None:
    """Start PostgreSQL and MariaDB where they are installed but not running."""
    import time

    starts = {
        5432: "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | tail -1) main start",
        3306: "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd",
    }
    for port, command in starts.items():
        if _listening(port) or not shutil.which(command.split()[0]):
            continue
        c.run(command, warn=True)
        deadline = time.monotonic() + 30
        while not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.5)


@task(help={"pytest_args": "extra arguments for pytest", "lint": "run ruff and ansible-lint"})
def test(c, pytest_args="", lint=True):
    """Run the whole test suite (installs openssh-server, starts databases when needed)."""
    _start_databases(c)
    if not Path("/usr/sbin/sshd").exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise Exit("the integration tests need /usr/sbin/sshd: install openssh-server", 3)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        "openssh-server"], check=True, env=env)
    bindir = Path(sys.executable).parent
    with c.cd(str(ROOT)):
        if lint:
            c.run(f"{bindir}/ruff check .")
            c.run(f"{bindir}/ansible-lint -q")
        c.run(f"{bindir}/python -m pytest {pytest_args}", pty=False)


schedule = Collection("schedule")
schedule.add_task(schedule_install, "install")
schedule.add_task(schedule_show, "show")
schedule.add_task(schedule_remove, "remove")
ns = Collection(inspect, test, schedule)
