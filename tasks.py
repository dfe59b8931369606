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


def _targets(junit, prom_textfile):
    """--junit / --prom-textfile destinations, refused before the run when unusable."""
    from mhops.exports import Targets

    targets = Targets(junit=_path(junit) if junit else None,
                      prom_dir=_path(prom_textfile) if prom_textfile else None)
    targets.check()
    return targets


def _notify_settings(c, inventory, lang=None, explicit=False):
    """Notification settings; channels come from notify.inventory, else the run's inventory."""
    from mhops import notify

    n, m = c.config.get("notify") or {}, c.config.mhops
    inv = None if explicit else n.get("inventory")
    return notify.settings_from(
        _plain_cfg(n), records_dir=_path(m.records_dir), state_dir=_path(m.state_dir),
        inventory=[str(_path(inv))] if inv else list(inventory),
        vault_password_file=m.vault_password_file or None, lang=lang,
        operator=m.operator, timezone=m.timezone)


def _plain_cfg(value):
    """An invoke.yaml value (DataProxy, nested) as plain dicts and lists."""
    if hasattr(value, "keys"):
        return {k: _plain_cfg(value[k]) for k in value}
    if isinstance(value, (list, tuple)):
        return [_plain_cfg(v) for v in value]
    return value


def _after_run(c, outcome, targets, inventory, send=True) -> None:
    """After the record is written: JUnit/Prometheus files, then notifications.

    Neither changes the run's exit code: a notification failure is recorded as a
    notification record, and the output folders were checked before the run.
    """
    from mhops import exports, notify

    try:
        exports.publish(outcome, targets)
    except Exception as exc:  # the run is recorded; its exit code must survive this
        print(f"warning: could not write the machine-readable output: {exc}", file=sys.stderr)
    if send:
        try:
            settings = _notify_settings(c, inventory)
        except Exception as exc:
            print(f"warning: notify settings in invoke.yaml are unusable: {exc}",
                  file=sys.stderr)
            return
        notify.after_run(outcome, settings)


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
        "junit": "also write the result as JUnit XML to this file (for CI)",
        "prom_textfile": "also write <DIR>/mhops_inspection.prom for node_exporter",
        "no_send": "do not send notifications for this run",
    },
)
def inspect(c, inventory=None, limit=None, transport=None, lang=None, operator=None,
            notify=None, note="", resolution="", keep_artifacts=False, junit=None,
            prom_textfile=None, no_send=False):
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
        targets = _targets(junit, prom_textfile)
        outcome = inspection.run(opts)
    _after_run(c, outcome, targets, opts.inventory, send=not no_send)
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
        "compress": "MariaDB SQL dumps: none, gzip or zstd (default backup.compress)",
        "check": "only show what would be dumped and deleted",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def backup_run(c, inventory=None, limit=None, database=None, backup_dir=None, keep=None,
               compress=None, check=False, lang=None, operator=None):
    """Dump each database (pg_dump -Fc / mariadb-dump) with manifest and canary; retention."""
    from mhops import backup

    cfg, m = c.config.backup, c.config.mhops
    opts = backup.RunOptions(
        inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
        limit=limit,
        databases=list(database or []),
        backup_dir=backup_dir or cfg.dir,
        keep=int(keep if keep is not None else cfg.keep),
        compress=compress or cfg.get("compress") or "none",
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
            forks=int(cfg.forks),
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
    "department": "department code for the smoke query",
    "junit": "also write the drill as JUnit XML to this file (for CI)",
    "prom_textfile": "also write <DIR>/mhops_drill.prom for node_exporter",
    "no_send": "do not send notifications for this run"})
def drill(c, what, engine=None, backup=None, target=None, name=None, inventory=None,
          limit=None, lang=None, operator=None, smoke_day=None, department=None,
          check=False, junit=None, prom_textfile=None, no_send=False):
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
        targets = _targets(junit, prom_textfile)
        outcome = drills.run(opts)
    _after_run(c, outcome, targets, opts.inventory, send=not no_send)
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


def _callable(spec: str):
    """A "module:function" from invoke.yaml (the incident store, the knowledge-base export)."""
    import importlib

    from mhops.errors import MhopsError

    if not spec:
        return None
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise MhopsError(f"cannot load {spec!r} ({exc}); expected module:function",
                         path="invoke.yaml") from None


def _incident_store(c, cfg):
    """report.incident_store (given report.incident_db first when set); by default the
    incident database the incident.* tasks keep, when there is one."""
    import functools

    fn = _callable(cfg.incident_store or "")
    if fn is not None:
        return functools.partial(fn, _path(cfg.incident_db)) if cfg.incident_db else fn
    from mhops import incident

    store = _incident_db(c)
    return functools.partial(incident.list_incidents, store) if store.exists() else None


def _kb_faq(c):
    """The knowledge base's FAQ document (常见问题文档) for the quarterly bundle."""
    from functools import partial

    from mhops import kb

    return partial(kb.write_faq, runbooks_dir=_path(c.config.runbook.runbooks_dir))


@task(positional=["what"], iterable=["plan"], help={
    "what": "weekly, monthly or quarterly",
    "period": "2026-W48 (weekly), 2026-11 (monthly) or 2026Q4 (quarterly); default: current",
    "lang": "document language: zh-CN (default) or en",
    "out": "folder the documents are written to; default report.out_dir",
    "records_from": "folder of run records to read; default mhops.records_dir",
    "plan": "weekly: next week's planned work item (repeatable); default report.planned",
    "pdf": "quarterly: auto (index.pdf through headless Chromium when installed) or off",
})
def report(c, what, period=None, lang=None, out=None, records_from=None, plan=None, pdf=None):
    """Weekly report, monthly inspection report with charts, or the quarterly bundle zip."""
    from mhops import report as reports

    cfg, m = c.config.report, c.config.mhops
    with _exits():
        outcome = reports.run(reports.Options(
            what=what,
            records_dir=_path(records_from or cfg.records_from or m.records_dir),
            out_dir=_path(out or cfg.out_dir),
            period=period or cfg.period or None,
            lang=lang or m.lang,
            timezone=m.timezone,
            planned=list(plan or cfg.planned or []),
            perf_thresholds=dict(c.config.perf.thresholds or {}),
            list_incidents=_incident_store(c, cfg),
            kb_export=_callable(cfg.kb_export or "") or _kb_faq(c),
            pdf=pdf or cfg.pdf,
            redact_sheets=cfg.redact_sheets or "auto",
            chromium=cfg.chromium or None,
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


def _announce_rollbacks(c, inventory) -> None:
    """Every rollback (automatic, manual, recovery) goes to the notification channels."""
    from mhops import notify, releases

    def send(record, record_dir):
        notify.notify_event("rollback", record, _notify_settings(c, inventory),
                            record_dir=record_dir)

    releases.add_rollback_listener(send)


def _release_common(c, component, inventory, limit, lang, operator, check, yes):
    cfg, m = c.config.release, c.config.mhops
    return dict(
        inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
        records_dir=_path(m.records_dir), state_dir=_path(m.state_dir),
        component=component or cfg.component, limit=limit, lang=lang or m.lang,
        operator=operator or m.operator, timezone=m.timezone, forks=int(cfg.forks),
        vault_password_file=m.vault_password_file or None,
        verify_window_s=float(cfg.verify_window_s), poll_interval_s=float(cfg.poll_interval_s),
        check=check, yes=yes)


@task(
    iterable=["inventory"],
    help={
        "component": "component to upgrade (a key of mhops_release_components)",
        "version": "version to deploy: <artifacts_dir>/<component>-<version>.tar.gz",
        "rollback_plan": "show the full rollback plan (steps and commands per host)",
        "check": "stop after the risk assessment and the written plan: no host changes",
        "yes": "go ahead although the risk is high",
        "allow_downgrade": "allow a version older than the live one",
        "serial": "hosts per batch (0: all at once); default release.serial",
        "max_fail_percentage": "failed hosts tolerated per batch, percent; default 0",
        "inventory": "inventory file or folder (repeatable); default release.inventory",
        "limit": "Ansible host pattern among the component's hosts",
        "artifacts_dir": "folder of release tarballs on this machine",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
        "junit": "also write JUnit XML here (one test case per host x check)",
        "prom_textfile": "also write Prometheus gauges into this textfile-collector folder",
    },
)
def upgrade(c, component=None, version=None, rollback_plan=False, check=False, yes=False,
            allow_downgrade=False, serial=None, max_fail_percentage=None, inventory=None,
            limit=None, artifacts_dir=None, lang=None, operator=None, junit=None,
            prom_textfile=None):
    """Upgrade a component: risk assessment, rollback plan, gated rolling deploy, record."""
    from mhops import releases

    cfg = c.config.release
    if not version:
        raise Exit("error: --version is required", code=3)
    common = _release_common(c, component, inventory, limit, lang, operator, check, yes)
    with _exits():
        targets = _targets(junit, prom_textfile)
        _announce_rollbacks(c, common["inventory"])
        outcome = releases.upgrade(releases.UpgradeOptions(
            **common,
            version=version, artifacts_dir=_path(artifacts_dir or cfg.artifacts_dir),
            show_plan=rollback_plan, allow_downgrade=allow_downgrade,
            serial=int(serial if serial is not None else cfg.serial),
            max_fail_percentage=float(max_fail_percentage if max_fail_percentage is not None
                                      else cfg.max_fail_percentage),
            keep=int(cfg.keep), backup_max_age_hours=float(cfg.backup_max_age_hours),
            switch_delay_s=int(cfg.switch_delay_s), backup_dir=str(c.config.backup.dir),
            backup_keep=int(c.config.backup.keep),
            backup_compress=str(c.config.backup.compress)))
    _after_run(c, outcome, targets, common["inventory"], send=False)
    _exit_with(outcome)


@task(
    iterable=["inventory"],
    help={
        "component": "component to roll back",
        "to": "version to return to (default: the release the live one replaced)",
        "check": "only show and record what would be rolled back",
        "yes": "accepted for symmetry with upgrade",
        "inventory": "inventory file or folder (repeatable); default release.inventory",
        "limit": "Ansible host pattern among the component's hosts",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def rollback(c, component=None, to=None, check=False, yes=False, inventory=None, limit=None,
             lang=None, operator=None):
    """Roll a component back (or finish an interrupted upgrade's rollback), with a record."""
    from mhops import releases

    common = _release_common(c, component, inventory, limit, lang, operator, check, yes)
    with _exits():
        _announce_rollbacks(c, common["inventory"])
        outcome = releases.rollback(releases.RollbackOptions(**common, to=to))
    _exit_with(outcome)


@task(iterable=["inventory"], help={
    "component": "only this component (default: every component in the inventory)",
    "inventory": "inventory file or folder (repeatable); default release.inventory",
    "limit": "Ansible host pattern"})
def versions(c, component=None, inventory=None, limit=None):
    """Table of component x host: live version, previous version, deployed at."""
    from mhops import releases

    cfg, m = c.config.release, c.config.mhops
    with _exits():
        rows = releases.versions([str(_path(i)) for i in (inventory or [cfg.inventory])],
                                 component=component, limit=limit,
                                 vault_password_file=m.vault_password_file or None)
    if any(r["error"] for r in rows):
        raise Exit(code=2)


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


def _apt_install_missing(present: dict[str, bool]) -> None:
    """Install the Debian packages the tests need that this machine lacks (one apt run)."""
    missing = [pkg for pkg, ok in present.items() if not ok]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Exit(f"the tests need these Debian packages: {' '.join(missing)}", 3)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                   check=True, env=env)


@task(help={"pytest_args": "extra arguments for pytest", "lint": "run ruff and ansible-lint"})
def test(c, pytest_args="", lint=True):
    """Run the whole test suite (installs sshd, Chromium, CJK fonts; starts databases)."""
    _start_databases(c)
    _apt_install_missing({
        # the integration tests start their own sshd on loopback addresses
        "openssh-server": Path("/usr/sbin/sshd").exists(),
        # the report tests render documents in headless Chromium (PNG, the bundle's PDF)
        "chromium": bool(shutil.which("chromium")),
        # Chinese text in those PDFs and screenshots instead of empty boxes
        "fonts-noto-cjk": Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc").exists(),
    })
    bindir = Path(sys.executable).parent
    with c.cd(str(ROOT)):
        if lint:
            c.run(f"{bindir}/ruff check .")
            c.run(f"{bindir}/ansible-lint -q")
        c.run(f"{bindir}/python -m pytest {pytest_args}", pty=False)


def _incident_opts(c, lang=None, operator=None):
    from mhops import incident

    cfg, m = c.config.incident, c.config.mhops
    raw = {k: cfg[k] for k in ("classes", "onsite_minutes", "priorities", "rules") if k in cfg}
    return incident.Options(records_dir=_path(m.records_dir),
                            db=str(_path(cfg.db)) if cfg.db else "",
                            config=_plain(raw), lang=lang or m.lang,
                            operator=operator or m.operator, timezone=m.timezone)


def _plain(value):
    """invoke.yaml values (DataProxy) as plain dicts and lists, for validation."""
    if hasattr(value, "keys"):
        return {k: _plain(value[k]) for k in value}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


@task(help={"title": "short description of the fault (redacted before it is stored)",
            "scope": "person, department or hospital", "type": "server or software",
            "severity": "patient-safety, clinical, operations or experience",
            "reporter": "who reported it (feedback goes to them)",
            "host": "the host concerned", "lang": "zh-CN or en", "operator": "执行人"})
def incident_open(c, title, scope, type, severity, reporter="", host="", lang=None,
                  operator=None):
    """Open an incident: priority from the rule table in invoke.yaml; prints the deadlines."""
    from mhops import incident

    opts = _incident_opts(c, lang, operator)
    with _exits():
        outcome = incident.open_incident(opts, title=title, scope=scope, type_=type,
                                         severity=severity, reporter=reporter, host=host)
    _exit_with(outcome)


@task(positional=["id"], help={"id": "incident number", "text": "optional note",
                               "onsite": "also record arrival on site now",
                               "lang": "zh-CN or en", "operator": "执行人"})
def incident_ack(c, id, text="", onsite=False, lang=None, operator=None):
    """Acknowledge (respond to) an incident: stops its response clock."""
    from mhops import incident

    with _exits():
        _exit_with(incident.ack(_incident_opts(c, lang, operator), id, text=text,
                                onsite=onsite))


@task(positional=["id", "text"], help={"id": "incident number", "text": "the handling step",
                                       "onsite": "this note records arrival on site",
                                       "lang": "zh-CN or en", "operator": "执行人"})
def incident_note(c, id, text, onsite=False, lang=None, operator=None):
    """Add a handling step to an incident."""
    from mhops import incident

    with _exits():
        _exit_with(incident.note(_incident_opts(c, lang, operator), id, text, onsite=onsite))


@task(positional=["id"], help={"id": "incident number", "resolution": "how it was solved",
                               "runbook": "the runbook used", "feedback": "feedback given to "
                               "the reporter", "lang": "zh-CN or en", "operator": "执行人"})
def incident_resolve(c, id, resolution, runbook="", feedback="", lang=None, operator=None):
    """Resolve an incident: writes 故障处理记录 (and 系统故障分析报告 for department/hospital)."""
    from mhops import incident

    with _exits():
        outcome = incident.resolve(_incident_opts(c, lang, operator), id,
                                   resolution=resolution, runbook=runbook, feedback=feedback)
    _exit_with(outcome)


@task(positional=["id"], help={"id": "incident number",
                               "field": "description, steps, cause, impact, symptoms or summary",
                               "text": "the text entered by a person", "operator": "执行人"})
def incident_edit(c, id, field, text, operator=None):
    """Fill in a field of the fault analysis report (then `incident.report N`)."""
    from mhops import incident

    with _exits():
        _exit_with(incident.edit(_incident_opts(c, None, operator), id, field, text))


@task(positional=["id"], help={"id": "incident number", "lang": "zh-CN or en",
                               "operator": "执行人"})
def incident_report(c, id, lang=None, operator=None):
    """Re-render an incident's records (after notes or analysis edits); 1 = fields pending."""
    from mhops import incident

    with _exits():
        outcome = incident.report(_incident_opts(c, lang, operator), id)
    _exit_with(outcome)


@task(help={"open": "only incidents not yet resolved",
            "breached": "only incidents whose SLA is breached",
            "since": "reported at or after (YYYY-MM-DD or ISO time, naive = UTC)",
            "until": "reported before (same format)", "lang": "zh-CN or en"})
def incident_list(c, open=False, breached=False, since=None, until=None, lang=None):
    """List incidents with their clocks."""
    from mhops import incident

    with _exits():
        _exit_with(incident.list_(_incident_opts(c, lang), open_only=open, breached=breached,
                                  since=since, until=until))


@task(help={"lang": "zh-CN or en"})
def incident_rules(c, lang=None):
    """Show the effective rule table: classification -> priority -> deadlines (invoke.yaml)."""
    from mhops import incident

    with _exits():
        _exit_with(incident.rules_table(_incident_opts(c, lang)))


@task(help={"month": "YYYY-MM in the hospital's time zone", "lang": "zh-CN or en",
            "operator": "执行人"})
def incident_summary(c, month, lang=None, operator=None):
    """Monthly fault summary by category: counts, time to resolve, SLA compliance, open items."""
    from mhops import incident

    with _exits():
        outcome = incident.summary(_incident_opts(c, lang, operator), month)
    _exit_with(outcome)


@task(iterable=["inventory"], help={
    "inventory": "inventory whose group_vars hold mhops_notify_channels; default "
                 "notify.inventory, then inspect.inventory",
    "lang": "message language: zh-CN (default) or en"})
def notify_test(c, inventory=None, lang=None):
    """Send a test message to every configured channel and record the deliveries."""
    from mhops import notify

    inv = [str(_path(i)) for i in (inventory or [c.config.inspect.inventory])]
    settings = _notify_settings(c, inv, lang or c.config.mhops.lang, explicit=bool(inventory))
    with _exits():
        outcome = notify.send_test(settings)
    _exit_with(outcome)


@task(iterable=["inventory"], help={
    "within": "minutes: remind about SLA deadlines this close (default notify.sla_within_minutes)",
    "source": "module:function returning the incidents due soon; default: the incident store",
    "inventory": "inventory whose group_vars hold mhops_notify_channels",
    "lang": "message language: zh-CN (default) or en"})
def notify_sla(c, within=None, source=None, inventory=None, lang=None):
    """Remind the channels about incidents whose SLA deadline is near (once per incident)."""
    import importlib

    from mhops import notify
    from mhops.errors import MhopsError

    n = c.config.get("notify") or {}
    spec = source or n.get("sla_source") or ""
    inv = [str(_path(i)) for i in (inventory or [c.config.inspect.inventory])]
    settings = _notify_settings(c, inv, lang or c.config.mhops.lang, explicit=bool(inventory))
    with _exits():
        if spec:
            module, _, name = spec.partition(":")
            if not module or not name:
                raise MhopsError(f"SLA source {spec!r}: expected module:function")
            try:
                due_soon = getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError) as exc:
                raise MhopsError(f"SLA source {spec!r}: {exc}") from None
        else:  # the incident store this project keeps (incident.* tasks)
            from functools import partial

            from mhops import incident

            due_soon = partial(incident.sla_reminders, _incident_db(c))
        outcome = notify.sla_check(due_soon, settings,
                                   int(within or n.get("sla_within_minutes") or 30))
    if outcome is None:
        print("no incident close to its SLA deadline that was not already announced")
        return
    _exit_with(outcome)


@task(
    iterable=["inventory"],
    help={
        "inventory": "inventory file or folder (repeatable); default patch.inventory",
        "limit": "Ansible host pattern to select hosts; matching nothing is an error",
        "check": "only list the pending updates (no list refresh, no change)",
        "security_only": "only security-flagged updates",
        "serial": "hosts patched (and verified) per batch; 0 = all at once",
        "reboot": "reboot hosts whose updates ask for it (/var/run/reboot-required)",
        "repair": "run dpkg --configure -a when an earlier transaction was interrupted",
        "yes": "apply the plan without asking",
        "lock_timeout": "seconds to wait for the package manager's lock",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def patch(c, inventory=None, limit=None, check=False, security_only=False, serial=None,
          reboot=False, repair=False, yes=False, lock_timeout=None, lang=None, operator=None):
    """List pending updates, apply them in rolling batches, verify, write the patch record."""
    from mhops import patch as patching

    cfg, m = c.config.patch, c.config.mhops
    timeout = lock_timeout if lock_timeout is not None else cfg.lock_timeout
    opts = patching.Options(
        inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
        limit=limit,
        check=check,
        security_only=security_only or bool(cfg.security_only),
        serial=int(serial if serial is not None else cfg.serial),
        reboot=reboot,
        repair=repair,
        yes=yes,
        lock_timeout=float(timeout) if timeout not in (None, "") else None,
        lang=lang or m.lang,
        operator=operator or m.operator,
        timezone=m.timezone,
        forks=int(cfg.forks),
        records_dir=_path(m.records_dir),
        state_dir=_path(m.state_dir),
        vault_password_file=m.vault_password_file or None,
        confirm=_ask if sys.stdin.isatty() else None,
    )
    with _exits():
        outcome = patching.run(opts)
    _exit_with(outcome)


def _ask(question: str) -> bool:
    return input(question).strip().lower() in ("y", "yes", "是")


@task(
    iterable=["inventory", "notify"],
    help={
        "inventory": "inventory file or folder (repeatable); default security.inventory",
        "limit": "Ansible host pattern to select hosts; matching nothing is an error",
        "transport": "fabric (one SSH round trip per host) or ansible (ansible-runner)",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
        "notify": "who was told about abnormal results (repeatable)",
        "junit": "also write JUnit XML here (one test case per host x check)",
        "prom_textfile": "also write Prometheus gauges into this textfile-collector folder",
    },
)
def security_audit(c, inventory=None, limit=None, transport=None, lang=None, operator=None,
                   notify=None, junit=None, prom_textfile=None):
    """Audit logins, ports, sshd, pending security updates, firewall, AV, files and TLS."""
    from mhops import security_audit as audit

    cfg, m = c.config.security, c.config.mhops
    opts = audit.Options(
        inventory=[str(_path(i)) for i in (inventory or [cfg.inventory
                                                         or c.config.inspect.inventory])],
        limit=limit,
        transport=transport or cfg.transport,
        lang=lang or m.lang,
        operator=operator or m.operator,
        notified=list(notify or cfg.notified or []),
        records_dir=_path(m.records_dir),
        state_dir=_path(m.state_dir),
        timezone=m.timezone,
        forks=int(cfg.forks),
        connect_timeout=int(cfg.connect_timeout),
        vault_password_file=m.vault_password_file or None,
    )
    with _exits():
        targets = _targets(junit, prom_textfile)
        outcome = audit.run(opts)
    _after_run(c, outcome, targets, opts.inventory, send=False)
    _exit_with(outcome)


def _settings(pairs) -> dict:
    """--set key=value pairs; values read as YAML (numbers, lists, booleans)."""
    import yaml

    from mhops.errors import MhopsError

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MhopsError(f"--set {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value) if value else ""
    return out


def _incident_hook(c):
    """attach_to_incident(incident_id, record): a runbook run's steps go to the incident
    store the incident.* tasks keep."""
    from functools import partial

    from mhops import incident

    return partial(incident.attach_run, _incident_db(c))


def _incident_db(c):
    """The incident database the incident.* tasks keep (incident.db, else in the records)."""
    from mhops import incident_store

    configured = c.config.incident.db
    return incident_store.path_for(_path(c.config.mhops.records_dir),
                                   _path(configured) if configured else None)


@task(
    positional=["name"],
    iterable=["inventory", "set"],
    help={
        "name": "runbook id (invoke kb.list shows them)",
        "host": "inventory host (or pattern matching exactly one host)",
        "yes": "run every change without asking",
        "check": "diagnose only; no change is run",
        "incident": "incident number to attach the run's steps and outputs to",
        "set": "override a runbook setting: key=value (repeatable, value as YAML)",
        "inventory": "inventory file or folder (repeatable); default runbook.inventory",
        "lang": "record language: zh-CN (default) or en",
        "operator": "执行人 written in the record",
    },
)
def runbook(c, name, host=None, inventory=None, yes=False, check=False, set=None,
            incident=None, lang=None, operator=None):
    """Run a fault runbook on one host: diagnose, remediate (confirmed), verify, record."""
    from mhops import runbook as runbooks
    from mhops.errors import MhopsError

    cfg, m = c.config.runbook, c.config.mhops
    with _exits():
        if not host:
            raise MhopsError("--host is required")
        if incident is not None and not str(incident).isdigit():
            raise MhopsError(f"--incident {incident!r}: expected an incident number")
        if incident is not None:
            from mhops import incident as incidents

            incidents.require(_incident_db(c), incident)
        outcome = runbooks.run(runbooks.Options(
            name=name, host=host,
            inventory=[str(_path(i)) for i in (inventory or [cfg.inventory])],
            records_dir=_path(m.records_dir), state_dir=_path(m.state_dir),
            yes=yes, check=check, settings=_settings(set),
            incident=int(incident) if incident is not None else None,
            attach_to_incident=_incident_hook(c),
            connect_timeout=int(cfg.connect_timeout),
            command_timeout=int(cfg.command_timeout),
            inspections_dir=_path(cfg.inspections_dir or m.records_dir),
            runbooks_dir=_path(cfg.runbooks_dir),
            lang=lang or m.lang, operator=operator or m.operator, timezone=m.timezone,
            vault_password_file=m.vault_password_file or None))
    _exit_with(outcome)


@task(help={"lang": "zh-CN (default) or en",
            "dir": "runbook folder (default runbook.runbooks_dir)"})
def kb_list(c, lang=None, dir=None):
    """List the knowledge base: every runbook with its classification and review date."""
    from mhops import kb

    with _exits():
        lines = kb.list_lines(_path(dir or c.config.runbook.runbooks_dir),
                              lang or c.config.mhops.lang)
    print("\n".join(lines))


@task(positional=["id"], help={"id": "runbook / knowledge-base id", "lang": "zh-CN or en",
                               "dir": "runbook folder"})
def kb_show(c, id, lang=None, dir=None):
    """Show one knowledge-base entry."""
    from mhops import kb

    with _exits():
        print(kb.show(id, _path(dir or c.config.runbook.runbooks_dir),
                      lang or c.config.mhops.lang))


@task(positional=["words"], help={"words": "search words, Chinese or English (quote them)",
                                  "lang": "zh-CN or en", "dir": "runbook folder"})
def kb_search(c, words, lang=None, dir=None):
    """Search the knowledge base (Chinese by character bigrams, English by words)."""
    from mhops import kb

    lang = lang or c.config.mhops.lang
    with _exits():
        hits = kb.search(words, _path(dir or c.config.runbook.runbooks_dir))
    for score, b in hits:
        print(f"{b.id:<18} {b.title(lang)}  ({score})")
    if not hits:
        raise Exit("no entry matches", code=1)


@task(help={"dir": "runbook folder (default runbook.runbooks_dir)"})
def kb_check(c, dir=None):
    """Check the knowledge base: reviewed within 183 days, fields present, steps match."""
    from mhops import kb

    with _exits():
        result = kb.check(_path(dir or c.config.runbook.runbooks_dir))
    for key, problems in result.problems.items():
        print(f"{'FAIL' if problems else 'OK  '} {key}")
        for p in problems:
            print(f"     - {p}")
    if result.exit_code:
        raise Exit(f"kb.check: {sum(map(bool, result.problems.values()))} of "
                   f"{result.checked} entries need attention", code=result.exit_code)


@task(help={"lang": "zh-CN (default) or en", "operator": "执行人", "dir": "runbook folder"})
def kb_export(c, lang=None, operator=None, dir=None):
    """Write the knowledge base as the FAQ document (常见问题文档), Markdown + HTML."""
    from mhops import kb

    m = c.config.mhops
    with _exits():
        outcome = kb.export(kb.ExportOptions(
            records_dir=_path(m.records_dir),
            runbooks_dir=_path(dir or c.config.runbook.runbooks_dir),
            lang=lang or m.lang, operator=operator or m.operator, timezone=m.timezone))
    print(outcome.record_dir)


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
incident = Collection("incident")
for _name, _task in (("open", incident_open), ("ack", incident_ack), ("note", incident_note),
                     ("resolve", incident_resolve), ("edit", incident_edit),
                     ("report", incident_report), ("list", incident_list),
                     ("summary", incident_summary), ("rules", incident_rules)):
    incident.add_task(_task, _name)
notify_ns = Collection("notify")
notify_ns.add_task(notify_test, "test")
notify_ns.add_task(notify_sla, "sla")
security = Collection("security")
security.add_task(security_audit, "audit")
kb = Collection("kb")
kb.add_task(kb_list, "list")
kb.add_task(kb_show, "show")
kb.add_task(kb_search, "search")
kb.add_task(kb_check, "check")
kb.add_task(kb_export, "export")
ns = Collection(inspect, test, schedule, backup, demo, db, drill, perf, incident, notify_ns,
                report, patch, security, runbook, kb, upgrade, rollback, versions)
