"""Invoke tasks: thin wrappers that read options, fall back to invoke.yaml, call mhops.

Exit codes of `invoke inspect`: 0 all normal, 1 warnings, 2 critical or a host
unreachable, 3 the run itself failed (bad input, internal error, lock held).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

from invoke import Collection, Exit, task

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))


def _path(value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else ROOT / p


def _fail(exc: Exception) -> Exit:
    return Exit(f"error: {exc}", code=getattr(exc, "exit_code", 3))


@contextmanager
def _exits():
    """A run that failed itself (bad input, lock held) ends with its message and exit 3."""
    from mhops.errors import MhopsError

    try:
        yield
    except MhopsError as exc:
        raise _fail(exc) from None


def _exit_with(outcome) -> None:
    """A finished run exits with the code its record carries (0 normal, 1, 2)."""
    if outcome.exit_code:
        raise Exit(code=outcome.exit_code)


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
    with _exits():
        outcome = inspection.run(opts)
    _exit_with(outcome)


def _levels_cfg(value):
    """An invoke.yaml mapping (DataProxy) as a plain dict, or None when unset/empty."""
    return {k: value[k] for k in value} if value else None


@task(
    iterable=["inventory", "database"],
    help={
        "inventory": "inventory file or folder (repeatable); default backup.inventory",
        "limit": "Ansible host pattern (hosts holding mhops_databases)",
        "database": "logical name from mhops_databases (repeatable); default: all",
        "backup_dir": "backup folder on the database hosts for entries without backup_dir",
        "keep": "good backups kept per database (the newest and drills' .in-use never go)",
        "check": "only show what would be dumped and deleted",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def backup_run(c, inventory=None, limit=None, database=None, backup_dir=None, keep=None,
               check=False, lang=None, operator=None):
    """Dump each database (pg_dump -Fc / mariadb-dump) with manifest and canary; retention."""
    from mhops import backup

    cfg, m = c.config.backup, c.config.mhops
    opts = backup.RunOptions(
        inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
        limit=limit,
        databases=list(database or []),
        backup_dir=backup_dir or cfg.dir,
        keep=int(keep if keep is not None else cfg.keep),
        check=check,
        lang=lang or m.lang,
        operator=operator or m.operator,
        timezone=m.timezone,
        forks=int(cfg.forks),
        records_dir=_path(m.records_dir),
        state_dir=_path(m.state_dir),
        vault_password_file=m.vault_password_file or None,
    )
    with _exits():
        outcome = backup.run(opts)
    _exit_with(outcome)


@task(
    iterable=["inventory", "database"],
    help={
        "inventory": "inventory file or folder (repeatable); default backup.inventory",
        "limit": "Ansible host pattern (hosts holding mhops_databases)",
        "database": "logical name from mhops_databases (repeatable); default: all",
        "dir": "a folder of backups made by another tool (checked instead of the inventory)",
        "glob": "filename glob for --dir, e.g. 'nightly-*.sql.gz'",
        "engine": "postgresql or mariadb, for --dir (default: guessed from the file)",
        "name": "name shown for --dir (default: the folder name)",
        "rpo_warning": "hours: newest backup older than this is a WARNING",
        "rpo_critical": "hours: newest backup older than this is CRITICAL",
        "log": "the backup job's log to scan for errors",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def backup_check(c, inventory=None, limit=None, database=None, dir=None, glob="*",
                 engine=None, name=None, rpo_warning=None, rpo_critical=None, log=None,
                 lang=None, operator=None):
    """Check backups: age vs RPO, size shrink, checksum vs manifest, truncation, job log."""
    from mhops import backup

    cfg, m = c.config.backup, c.config.mhops
    rpo = dict(_levels_cfg(cfg.rpo_hours) or {})
    if rpo_warning is not None:
        rpo["warning"] = float(rpo_warning)
    if rpo_critical is not None:
        rpo["critical"] = float(rpo_critical)
    with _exits():
        external = [backup.external_target(str(_path(dir)), glob, engine, name)] if dir else []
        opts = backup.CheckOptions(
            inventory=[] if dir and not database else
            [str(_path(i)) for i in (inventory or [cfg.inventory])],
            limit=limit,
            databases=list(database or []),
            backup_dir=cfg.dir,
            external=external,
            rpo_hours=rpo or None,
            size_shrink=_levels_cfg(cfg.size_shrink),
            size_window=int(cfg.size_window),
            log=str(_path(log or cfg.log)) if (log or cfg.log) else None,
            log_patterns=_levels_cfg(cfg.log_patterns),
            log_matches=_levels_cfg(cfg.log_matches),
            log_tail_bytes=int(cfg.log_tail_bytes),
            deep=bool(cfg.deep),
            lang=lang or m.lang,
            operator=operator or m.operator,
            timezone=m.timezone,
            records_dir=_path(m.records_dir),
            vault_password_file=m.vault_password_file or None,
        )
        outcome = backup.check(opts)
    _exit_with(outcome)


@task(help={"engine": "postgresql, mariadb or both (default)",
            "database": "database to create/fill (default demo.database)",
            "size": "1 = a few thousand rows; 150 = about 1M rows / 213 MiB",
            "drop": "recreate the demo tables when they exist",
            "seed": "random seed (same seed, size and day = same rows)"})
def demo_seed_db(c, engine="both", database=None, size=1, drop=False, seed=20261128):
    """Create the platform's kind of demo data (fake patients, payments, ...) in a database."""
    from mhops import dbseed

    cfg = c.config.demo
    engines = dbseed.ENGINES if engine == "both" else (engine,)
    for e in engines:
        server = cfg[e]
        with _exits():
            rows = dbseed.seed(e, host=server.host, port=int(server.port), user=server.user,
                               password=os.environ.get(server.password_env or "", ""),
                               database=database or cfg.database, size=int(size), drop=drop,
                               seed=int(seed))
        print(f"{e}: {database or cfg.database}: " + ", ".join(
            f"{t} {n}" for t, n in rows.items()) + f" ({sum(rows.values())} rows)")


@task(
    iterable=["inventory", "database"],
    help={
        "inventory": "inventory file or folder (repeatable); default db.inventory",
        "limit": "Ansible host pattern among the hosts holding mhops_databases",
        "database": "logical database name from mhops_databases (repeatable); default all",
        "apply": "run the plan (default: only show and record it, nothing changed)",
        "force": "with --apply: run outside the maintenance window db.window",
        "window": "maintenance window, local time HH:MM-HH:MM; default db.window",
        "lock_timeout": "seconds to wait for a lock before giving up an item",
        "statement_timeout": "seconds one maintenance statement may run",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def db_maintain(c, inventory=None, limit=None, database=None, apply=False, force=False,
                window=None, lock_timeout=None, statement_timeout=None, lang=None,
                operator=None):
    """Plan (default) or --apply index rebuilds, VACUUM/ANALYZE and defragmentation."""
    from mhops import dbmaint

    cfg, m = c.config.db, c.config.mhops
    with _exits():
        outcome = dbmaint.run(dbmaint.Options(
            inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
            limit=limit,
            databases=list(database or []),
            apply=apply,
            force=force,
            window=window or cfg.window,
            thresholds=dict(cfg.thresholds or {}),
            lock_timeout_s=float(lock_timeout or cfg.lock_timeout_s),
            statement_timeout_s=float(statement_timeout or cfg.statement_timeout_s),
            lang=lang or m.lang,
            operator=operator or m.operator,
            records_dir=_path(m.records_dir),
            state_dir=_path(m.state_dir),
            timezone=m.timezone,
            vault_password_file=m.vault_password_file or None,
        ))
    _exit_with(outcome)


@task(positional=["what"], iterable=["inventory"], help={
    "what": "the kind of drill: restore",
    "engine": "postgresql or mariadb", "backup": "backup file path, or latest (default)",
    "target": "scratch (default), HOST:PORT, host=..,port=..,dir=.., or an mhops_databases name",
    "name": "logical database name when several match", "inventory": "inventory (repeatable)",
    "limit": "Ansible host pattern: the database host(s) holding the backup",
    "check": "only show which backup would be restored where (nothing marked or fetched)",
    "lang": "zh-CN or en", "operator": "执行人",
    "smoke_day": "YYYY-MM-DD or today (default: backup day)",
    "department": "department code for the smoke query"})
def drill(c, what, engine=None, backup=None, target=None, name=None, inventory=None,
          limit=None, lang=None, operator=None, smoke_day=None, department=None,
          check=False):
    """`invoke drill restore`: restore a backup into a throwaway instance, verify, RTO/RPO."""
    from mhops import drill as drills

    if what != "restore":
        raise Exit(f"error: unknown drill {what!r}; valid: restore", code=3)
    d, m = c.config.drill, c.config.mhops
    opts = drills.Options(
        records_dir=_path(m.records_dir),
        inventory=[str(_path(i))
                   for i in (inventory or [d.inventory or c.config.inspect.inventory])],
        limit=limit, engine=engine, name=name, backup=backup or "latest",
        target=target or d.target,
        backup_dir=d.backup_dir or c.config.backup.dir, scratch_dir=d.scratch_dir,
        rto_target_minutes=float(d.rto_target_minutes),
        rpo_target_hours=float(d.rpo_target_hours),
        row_tolerance=float(d.row_tolerance), sample_tables=list(d.sample_tables or []),
        smoke_sql=dict(d.smoke_sql or {}), smoke_department=department or d.smoke_department,
        smoke_day=smoke_day or "", smoke_min_rows=int(d.smoke_min_rows),
        compare_source=bool(d.compare_source), jobs=int(d.jobs), lang=lang or m.lang,
        operator=operator or m.operator, timezone=m.timezone,
        vault_password_file=m.vault_password_file or None, check=check,
        stage_local=d.stage_local or "direct")
    with _exits():
        outcome = drills.run(opts)
    _exit_with(outcome)


@task(
    iterable=["inventory", "database"],
    help={
        "period": "quarter (2026Q4) or month (2026-11); default: the current quarter",
        "inventory": "inventory with mhops_databases (repeatable); default perf.inventory",
        "limit": "Ansible host pattern among the hosts holding mhops_databases",
        "database": "logical database name from mhops_databases (repeatable); default all",
        "records_from": "folder of inspection records to read; default mhops.records_dir",
        "top_n": "top statements per database",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def perf(c, period=None, inventory=None, limit=None, database=None, records_from=None,
         top_n=None, lang=None, operator=None):
    """Quarterly performance analysis: host trends and forecasts, database bottlenecks, advice."""
    from mhops import perf as analysis

    cfg, m = c.config.perf, c.config.mhops
    with _exits():
        outcome = analysis.run(analysis.Options(
            records_dir=_path(m.records_dir),
            inspections_dir=_path(records_from or cfg.records_from or m.records_dir),
            inventory=[str(_path(i))
                       for i in (inventory or [cfg.inventory or c.config.db.inventory])],
            period=period or cfg.period or None,
            limit=limit,
            databases=list(database or []),
            thresholds=dict(cfg.thresholds or {}),
            top_n=int(top_n or cfg.top_n),
            lang=lang or m.lang,
            operator=operator or m.operator,
            timezone=m.timezone,
            vault_password_file=m.vault_password_file or None,
        ))
    _exit_with(outcome)


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

    with _exits():
        plan = _schedule_plan(c, kind, when, user, log, inventory)
        for path, text in plan.files.items():
            print(f"--- {path}\n{text}", end="")
        if check:
            print("(check mode: nothing written)")
            return
        written = schedule.install(plan, _path(log or c.config.schedule.log))
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

    plan = _schedule_plan(c, kind, None, None, None, None)
    if check:
        print("would remove: " + ", ".join(str(p) for p in plan.files if p.exists()))
        return
    with _exits():
        removed = schedule.remove(list(plan.files))
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
backup = Collection("backup")
backup.add_task(backup_run, "run")
backup.add_task(backup_check, "check")
demo = Collection("demo")
demo.add_task(demo_seed_db, "seed-db")
db = Collection("db")
db.add_task(db_maintain, "maintain")
ns = Collection(inspect, test, schedule, backup, demo, db, drill, perf)
