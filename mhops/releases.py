"""Releases of a component: ``invoke upgrade``, ``invoke rollback`` and ``invoke versions``.

Owns the upgrade procedure: pre-flight risk assessment and the rollback plan, both
written as a record before any host changes; the rolling deploy, one batch at a
time through ``playbooks/release.yml`` (role ``mhops_release``) with a Testinfra gate
(``mhops.release_verify``) after each batch; the automatic rollback of every touched
host on any failure, timeout or interruption, verified with the same gate; the
per-component journal that lets the next run finish a rollback a SIGKILL cut short;
the per-component lock; the ``upgrade`` and ``rollback`` records; and the hook that
tells other capabilities (notifications) that a rollback happened.

The on-host layout and its atomic switch live in the role's ``mhops_release`` module,
the pure rules (versions, batches, risk, plan) in ``mhops.release_plan``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mhops import records, runner, state
from mhops import release_backup as rbk
from mhops import release_hosts as rh
from mhops import release_plan as rp
from mhops import release_verify as rv
from mhops.errors import MhopsError
from mhops.inventory import select
from mhops.redact import Redactor

SCHEMA_VERSION = 1
PLAYBOOK = "playbooks/release.yml"
REPORT = "ansible.builtin.debug"

# Called as fn(record, record_dir) after every rollback record is written (automatic,
# manual or recovery); `record` is the redacted record.json content. See
# add_rollback_listener.
_ROLLBACK_LISTENERS: list[Callable[[dict[str, Any], Path], None]] = []


def add_rollback_listener(fn: Callable[[dict[str, Any], Path], None]) -> None:
    """Register `fn(record, record_dir)`; it runs after each ``rollback`` record is written.

    A failing listener is reported and ignored: a notification problem never turns a
    finished rollback into a failed run.
    """
    if fn not in _ROLLBACK_LISTENERS:
        _ROLLBACK_LISTENERS.append(fn)


@dataclass
class Options:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    component: str
    limit: str | None = None
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    forks: int = 50
    connect_timeout: int = 10
    vault_password_file: str | None = None
    verify_window_s: float = 30.0
    poll_interval_s: float = 0.1
    check: bool = False
    yes: bool = False
    echo: Callable[[str], None] = print


@dataclass
class UpgradeOptions(Options):
    version: str = ""
    artifacts_dir: Path = Path("artifacts")
    show_plan: bool = False
    allow_downgrade: bool = False
    serial: int = 1
    max_fail_percentage: float = 0.0
    keep: int = 5
    backup_max_age_hours: float = 24.0
    switch_delay_s: int = 0
    # For components naming a platform database (backup_database): backup.* settings.
    backup_dir: str = "/var/backups/mhops"
    backup_keep: int = 7
    backup_compress: str = "none"


@dataclass
class RollbackOptions(Options):
    to: str | None = None


class Interrupted(Exception):
    pass


@dataclass
class _Ctx:
    """What one run knows: hosts, settings, probe facts, redactor, record parts."""

    opts: Options
    started: Any
    selection: Any
    cfgs: dict[str, dict[str, Any]]
    hosts: dict[str, Any]
    redactor: Redactor
    steps: list[dict[str, Any]] = field(default_factory=list)
    verification: list[dict[str, Any]] = field(default_factory=list)
    downtime: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------- shared plumbing

def _journal_path(state_dir: Path, component: str) -> Path:
    return Path(state_dir) / "releases" / f"{component}.journal.json"


def _journal_load(state_dir: Path, component: str) -> dict[str, Any] | None:
    path = _journal_path(state_dir, component)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise MhopsError(f"release journal is unreadable ({exc}); check the hosts by hand "
                         "(invoke versions) and move it aside", path=str(path)) from exc
    return data if data.get("phase") != "done" else None


def _journal_save(state_dir: Path, component: str, data: dict[str, Any]) -> None:
    state.atomic_write(_journal_path(state_dir, component),
                       json.dumps(data, ensure_ascii=False, indent=1).encode())


def _journal_done(state_dir: Path, component: str) -> None:
    _journal_path(state_dir, component).unlink(missing_ok=True)


@contextmanager
def _signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set a flag instead of raising: the run stops at the next safe
    point (ansible-runner cancels ansible-playbook) and rolls back, and a second Ctrl-C
    cannot cut the rollback itself short."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: flag.set())
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _checkpoint(flag: threading.Event) -> None:
    if flag.is_set():
        raise Interrupted("interrupted (Ctrl-C or SIGTERM)")


def _now() -> str:
    """A step's time, to the millisecond (records.utc_now() drops the fraction)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _step(ctx: _Ctx, name: str, started: str, hosts: list[str], ok: bool, detail: str = "",
          batch: int | None = None) -> None:
    finished = _now()
    s, f = records.parse_time(started), records.parse_time(finished)
    ctx.steps.append({"step": name, "batch": batch, "hosts": hosts, "started": started,
                      "finished": finished, "duration_s": round((f - s).total_seconds(), 2),
                      "ok": ok, "detail": detail})
    ctx.opts.echo(f"{'OK  ' if ok else 'FAIL'} {name}{f' batch {batch}' if batch else ''}"
                  f" [{', '.join(hosts)}]{': ' + detail if detail else ''}")


def _setup(opts: Options) -> _Ctx:
    records.labels(opts.lang)
    if not opts.component or not rp.valid_version(opts.component):
        raise MhopsError(f"bad component name {opts.component!r}")
    started = records.utc_now()
    selection = select(opts.inventory, opts.limit, opts.vault_password_file)
    chosen = rh.component_hosts(selection, opts.component)
    return _Ctx(opts=opts, started=started, selection=selection,
                cfgs={h.name: c for h, c in chosen}, hosts={h.name: h for h, _ in chosen},
                redactor=Redactor(secrets=selection.secrets))


def _playbook(ctx: _Ctx, hosts: list[str], extravars: dict[str, Any],
              cancel: Callable[[], bool] | None = None) -> dict[str, dict[str, Any]]:
    """Run the release play on `hosts`; {host: report} ({failed, error, steps})."""
    pb = runner.run_playbook(
        PLAYBOOK, inventory=ctx.opts.inventory, limit=",".join(hosts),
        extravars={"mhops_release_component": ctx.opts.component, **extravars},
        forks=ctx.opts.forks, task_action=REPORT, redactor=ctx.redactor, cancel=cancel)
    out = {}
    for h in hosts:
        o = pb.hosts.get(h)
        msg = o.result.get("msg") if o and o.status == runner.OK else None
        if isinstance(msg, dict):
            out[h] = msg
        else:
            out[h] = {"failed": True, "steps": {},
                      "error": o.message if o else f"no result from Ansible ({pb.status}): "
                                                   "unreachable or the play stopped"}
        out[h]["failed"] = _report_failed(out[h])
    return out


def _revision(ctx: _Ctx, run_id: str, **extra: Any) -> dict[str, Any]:
    return {"run_id": run_id, "operator": records.operator_name(ctx.opts.operator),
            "origin": socket.gethostname(), "ops_revision": records.ops_revision(), **extra}


def _verify(ctx: _Ctx, wanted: dict[str, tuple[str, int]], phase: str,
            batch: int | None = None) -> dict[str, bool]:
    """Gate {host: (version, log offset)}; records the results; {host: passed}."""
    targets = [rv.Target(ctx.hosts[h], ctx.cfgs[h], v, off) for h, (v, off) in wanted.items()]
    if not targets:
        return {}
    started = _now()
    res = rv.gate(targets, ctx.opts.inventory, ctx.opts.verify_window_s)
    out = {}
    for h in wanted:
        checks = res.get(h, [])
        ok = rv.passed(checks)
        out[h] = ok
        ctx.verification.append({"phase": phase, "batch": batch, "host": h,
                                 "version": wanted[h][0], "ok": ok, "checks": checks})
    bad = [f"{h}: " + "; ".join(c["detail"] for c in res.get(h, []) if not c["ok"])
           for h, ok in out.items() if not ok]
    _step(ctx, f"verify_{phase}", started, list(wanted), not bad, " | ".join(bad), batch)
    return out


# ---------------------------------------------------------------- rollback core

def _rollback(ctx: _Ctx, hosts: list[str], plans: dict[str, dict[str, Any]], run_id: str,
              reason: str, phase: str = "rollback") -> dict[str, dict[str, Any]]:
    """Roll `hosts` back along `plans`, reload, verify; {host: result}."""
    started = _now()
    rollback_vars = {h: {"target": plans[h].get("target"), "failed": plans[h].get("failed"),
                         "keep_migrations": plans[h].get("keep_migrations"),
                         "keep_from_target": bool(plans[h].get("keep_from_target")),
                         "backup": plans[h].get("backup")} for h in hosts}
    try:
        rep = _playbook(ctx, hosts, {"mhops_release_action": "rollback",
                                     "mhops_release_rollback": rollback_vars,
                                     "mhops_release_revision": _revision(ctx, run_id,
                                                                         reason=reason)})
    except MhopsError as exc:
        rep = {h: {"failed": True, "error": str(exc), "steps": {}} for h in hosts}
    bad = [f"{h}: {r.get('error')}" for h, r in rep.items() if r["failed"]]
    _step(ctx, "rollback", started, hosts, not bad, " | ".join(bad))
    wanted = {}
    for h in hosts:
        back = (rep[h].get("steps") or {}).get("rollback") or {}
        if plans[h].get("target") and not rep[h]["failed"]:
            wanted[h] = (plans[h].get("target_version"), int(back.get("log_size") or 0))
    verified = _verify(ctx, wanted, phase)
    out = {}
    for h in hosts:
        back = (rep[h].get("steps") or {}).get("rollback") or {}
        ok = not rep[h]["failed"] and verified.get(h, plans[h].get("target") is None)
        out[h] = {"host": h, "ok": ok, "changed": bool(back.get("changed")),
                  "target": plans[h].get("target"),
                  "target_version": plans[h].get("target_version"),
                  "failed_release": plans[h].get("failed"), "archived": back.get("archived"),
                  "migrations_reversed": back.get("reversed") or [],
                  "database_restored": back.get("restored"),
                  "error": rep[h].get("error") or ("" if ok else "verification failed")}
    return out


def _rollback_record(ctx: _Ctx, *, run_id: str, reason: str, trigger: str,
                     results: dict[str, dict[str, Any]], version_from: str | None,
                     upgrade_run_id: str | None, check: bool = False,
                     plans: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    finished = records.utc_now()
    L = ctx.opts.lang
    if check:
        outcome = "planned"
    else:
        outcome = "rolled_back" if results and all(r["ok"] for r in results.values()) \
            else "failed"
    # The hosts it changed (or failed on); hosts the failed run never reached are only
    # verified, and listed under results.
    hosts = sorted(h for h, r in results.items() if r.get("changed") or not r["ok"]) \
        if results else sorted(plans or {})
    to_versions = sorted({str(results[h].get("target_version")) for h in hosts}) or \
        sorted({str(p.get("target_version")) for p in (plans or {}).values()})
    version_to = to_versions[0] if len(to_versions) == 1 else ", ".join(to_versions)
    status = {"planned": "normal", "rolled_back": "warning"}.get(outcome, "critical")
    exit_code = {"planned": 0, "rolled_back": 2}.get(outcome, 2)
    word = _WORDS[L][outcome]
    headline = (f"{ctx.opts.component} 回退 {version_from} → {version_to}：{word}"
                f"（{len(hosts)} 台主机）" if L == "zh-CN" else
                f"{ctx.opts.component} rollback {version_from} → {version_to}: {word} "
                f"on {len(hosts)} host(s)")
    return {
        "schema_version": SCHEMA_VERSION, "kind": "rollback", "run_id": run_id, "lang": L,
        "status": status, "exit_code": exit_code,
        "time": records.time_block(ctx.started, finished, ctx.opts.timezone),
        "operator": records.operator_name(ctx.opts.operator), "headline": headline,
        "component": ctx.opts.component, "version_from": version_from,
        "version_to": version_to, "outcome": outcome, "hosts": hosts, "check_mode": check,
        "reason": reason, "trigger": trigger, "upgrade_run_id": upgrade_run_id,
        "plan": list((plans or {}).values()),
        "results": [results[h] for h in sorted(results)],
        "execution": {"steps": ctx.steps, "verification": ctx.verification},
        "impact": _impact(ctx, hosts),
        "scope": {"inventory": list(ctx.selection.sources), "limit": ctx.selection.limit},
        "ops_revision": records.ops_revision(),
    }


def _publish_rollback(ctx: _Ctx, record: dict[str, Any]) -> Path:
    run_dir = records.write_run(ctx.opts.records_dir, "rollback", record, ctx.redactor)
    ctx.opts.echo(f"{record['headline']}\n{run_dir}")
    if record["outcome"] != "planned":
        clean = json.loads((run_dir / "record.json").read_text())
        for fn in list(_ROLLBACK_LISTENERS):
            try:
                fn(clean, run_dir)
            except Exception as exc:  # a notification problem must not fail the rollback
                ctx.opts.echo(f"warning: rollback listener {getattr(fn, '__name__', fn)} "
                              f"failed: {exc}")
    return run_dir


def _finish_interrupted(ctx: _Ctx, journal: dict[str, Any]) -> records.Outcome:
    """Another run was killed: roll back every host it touched, along its written plan."""
    ctx.opts.echo(f"found the unfinished {journal.get('kind', 'upgrade')} run "
                  f"{journal.get('run_id')} (phase {journal.get('phase')}): finishing its "
                  "rollback instead of starting anew")
    plans = journal["plans"]
    hosts = [h for h in journal.get("touched", []) if h in plans and h in ctx.hosts]
    run_id = records.run_id("rollback", ctx.started)
    journal["phase"] = "rolling_back"
    _journal_save(ctx.opts.state_dir, ctx.opts.component, journal)
    results = _rollback(ctx, hosts, plans, run_id, "recovery") if hosts else {}
    record = _rollback_record(
        ctx, run_id=run_id, reason="recovery", results=results,
        trigger=f"unfinished run {journal.get('run_id')} found by the next run",
        version_from=journal.get("version_to"), upgrade_run_id=journal.get("run_id"),
        plans={h: plans[h] for h in hosts})
    if not hosts:
        record["outcome"], record["status"] = "rolled_back", "warning"
    run_dir = _publish_rollback(ctx, record)
    if record["outcome"] == "rolled_back":
        _journal_done(ctx.opts.state_dir, ctx.opts.component)
    return records.Outcome(2, run_dir, record)


# ---------------------------------------------------------------- invoke upgrade

def upgrade(opts: UpgradeOptions) -> records.Outcome:
    """Assess, plan (recorded), deploy in gated batches, roll back on any failure."""
    rh.check_version(opts.version)
    if opts.keep < 2:
        raise MhopsError(f"release.keep must be at least 2, got {opts.keep}")
    if opts.serial < 0 or not 0 <= opts.max_fail_percentage <= 100:
        raise MhopsError("serial must be >= 0 and max_fail_percentage within 0..100")
    ctx = _setup(opts)
    with state.locked(opts.state_dir, f"release-{opts.component}"):
        journal = _journal_load(opts.state_dir, opts.component)
        if journal:
            if opts.check:
                raise MhopsError(f"an interrupted run ({journal.get('run_id')}) left "
                                 f"{opts.component} half-changed; run invoke upgrade or "
                                 "invoke rollback without --check to finish its rollback")
            return _finish_interrupted(ctx, journal)
        return _upgrade_locked(ctx, opts)


def _upgrade_locked(ctx: _Ctx, opts: UpgradeOptions) -> records.Outcome:
    tar = rh.read_tarball(rh.tarball_path(opts.artifacts_dir, opts.component, opts.version))
    if tar["meta"].get("version") not in (None, opts.version):
        raise MhopsError(f"tarball says version {tar['meta']['version']}, not {opts.version}",
                         path=tar["path"])
    t0 = _now()
    facts = rh.probe(list(zip(ctx.hosts.values(), ctx.cfgs.values(), strict=True)),
                     forks=opts.forks, connect_timeout=opts.connect_timeout)
    names = list(ctx.hosts)
    live = Counter(f.get("current_version") for f in facts.values() if f.get("reachable"))
    version_from = live.most_common(1)[0][0] if live else None
    old_path = rh.tarball_path(opts.artifacts_dir, opts.component, str(version_from))
    old = rh.read_tarball(old_path)["files"] if version_from and old_path.is_file() else None
    ups = sorted(m for m, s in tar["migrations"].items() if s.get("up"))
    pending = [m for m in ups if any(m not in (f.get("applied") or []) for f in facts.values()
                                     if f.get("reachable"))]
    bset = _backup_settings(opts)
    dbs = rbk.check(bset, rbk.wanted(ctx.hosts, ctx.cfgs, opts.component))

    def assess() -> rp.Risk:
        return rp.assess(facts, version=opts.version, pending_up=pending,
                         down_steps={m: bool(tar["migrations"][m].get("down")) for m in ups},
                         tarball_bytes=tar["size"],
                         backup_max_age_hours=opts.backup_max_age_hours,
                         allow_downgrade=opts.allow_downgrade, database_backups=dbs)

    risk = assess()
    _step(ctx, "risk_assessment", t0, names, not risk.blocking,
          f"risk {risk.level}" + (": " + "; ".join(risk.blocking) if risk.blocking else ""))
    confirmed = opts.yes or risk.level != rp.HIGH
    # The backup is taken only when the upgrade goes ahead, and before the plan that
    # names it is written.
    if not risk.blocking and not opts.check and confirmed and \
            any(d["state"] == "stale" for d in dbs):
        t1 = _now()
        rbk.take(bset, dbs)
        bad = [f"{d['name']}@{d['host']}: {d['reason']}" for d in dbs if d["state"] == "failed"]
        _step(ctx, "database_backup", t1, sorted({d["host"] for d in dbs}), not bad,
              "; ".join(bad) or ", ".join(d["file"] for d in dbs if d["state"] == "taken"))
        risk = assess()
    release = rp.release_name(opts.version, ctx.started)
    plans = {h: rp.host_plan(h, facts[h], component=opts.component, new_release=release,
                             cfg=ctx.cfgs[h], pending_up=pending, database_backups=dbs)
             for h in names if facts[h].get("reachable")}
    batches = rp.batches(names, opts.serial)
    run_id = records.run_id("upgrade", ctx.started)
    base = {"run_id": run_id, "facts": facts, "tar": tar, "old": old, "risk": risk,
            "plans": plans, "batches": batches, "release": release,
            "version_from": version_from, "pending": pending,
            "database_backups": rbk.public(dbs)}
    outcome = "failed" if risk.blocking else "planned"
    plan_record = _upgrade_record(ctx, base, outcome=outcome, check=opts.check,
                                  note="" if confirmed or risk.blocking else "needs_yes")
    # The plan is its own record (written before any change); the final one keeps run_id.
    plan_record["run_id"] = f"{run_id}-plan"
    plan_dir = records.write_run(opts.records_dir, "upgrade", plan_record, ctx.redactor)
    _echo_plan(ctx, plan_record, opts.show_plan or opts.check)
    opts.echo(str(plan_dir))
    if risk.blocking:
        opts.echo("refused: " + "; ".join(risk.blocking))
        return records.Outcome(2, plan_dir, plan_record)
    if opts.check:
        opts.echo("(check mode: risk assessed and rollback plan written; no host changed)")
        return records.Outcome(plan_record["exit_code"], plan_dir, plan_record)
    if not confirmed:
        opts.echo("risk is high: read the plan above and run again with --yes to go ahead")
        return records.Outcome(1, plan_dir, plan_record)
    base["plan_run_id"] = plan_dir.name
    return _deploy(ctx, opts, base)


def _backup_settings(opts: UpgradeOptions) -> rbk.Settings:
    return rbk.Settings(
        inventory=opts.inventory, records_dir=opts.records_dir, state_dir=opts.state_dir,
        max_age_hours=opts.backup_max_age_hours, backup_dir=opts.backup_dir,
        keep=opts.backup_keep, compress=opts.backup_compress, lang=opts.lang,
        operator=opts.operator, timezone=opts.timezone,
        vault_password_file=opts.vault_password_file, echo=opts.echo)


def _deploy(ctx: _Ctx, opts: UpgradeOptions, base: dict[str, Any]) -> records.Outcome:
    plans = base["plans"]
    names = list(ctx.hosts)
    # One rolling play may reach every host: all are recorded as touched before it starts,
    # so a run killed at any moment is rolled back everywhere it could have changed.
    journal = {"kind": "upgrade", "run_id": base["run_id"], "plan_run_id": base["plan_run_id"],
               "component": opts.component, "version_from": base["version_from"],
               "version_to": opts.version, "release": base["release"], "phase": "deploying",
               "touched": names, "plans": plans, "started": records.iso(ctx.started)}
    _journal_save(opts.state_dir, opts.component, journal)
    per_host = {h: {"host": h, "outcome": "pending", "error": ""} for h in names}
    revision = _revision(ctx, base["run_id"], plan_run_id=base["plan_run_id"],
                         component=opts.component, version=opts.version)
    failure = None
    with _signals() as flag, tempfile.TemporaryDirectory(prefix="mhops-gate-") as gate_dir:
        gate = _Gate(ctx, base, Path(gate_dir))
        rv.warm(list(ctx.hosts.values()), opts.inventory)
        try:
            with rv.Poller({h: ctx.cfgs[h]["health_url"] for h in names},
                           opts.poll_interval_s) as poller:
                runner.run_playbook(
                    PLAYBOOK, inventory=opts.inventory, limit=",".join(names),
                    extravars={
                        "mhops_release_component": opts.component,
                        "mhops_release_action": "deploy", "mhops_release_name": base["release"],
                        "mhops_release_tarball": str(Path(base["tar"]["path"]).resolve()),
                        "mhops_release_revision": revision,
                        "mhops_release_switch_delay": int(opts.switch_delay_s),
                        "mhops_release_wait_healthy": False,
                        "mhops_release_keep": int(opts.keep),
                        "mhops_release_serial": int(opts.serial),
                        "mhops_release_max_fail_percentage": opts.max_fail_percentage,
                        "mhops_release_gate_dir": gate_dir,
                        "mhops_release_gate_timeout": int(2 * opts.verify_window_s + 120),
                        "mhops_release_ready_hosts": [
                            h for h in names if base["facts"][h].get("exists")]},
                    forks=opts.forks, redactor=ctx.redactor, on_host=gate.on_host,
                    cancel=flag.is_set)
            ctx.downtime.update(poller.stats)
            gate.join()
            _checkpoint(flag)
        except Interrupted as exc:
            failure = str(exc)
        except MhopsError as exc:
            failure = "interrupted (Ctrl-C or SIGTERM)" if flag.is_set() else \
                f"deploy step failed: {exc}"
        gate.join()
        failed, tolerated = gate.judge(per_host, opts.max_fail_percentage)
        failure = failure or failed
        to_roll = names if failure else tolerated
        if to_roll:
            journal["phase"] = "rolling_back"
            _journal_save(opts.state_dir, opts.component, journal)
            opts.echo(f"rolling back: {failure or 'failures within max_fail_percentage'}")
            rb_id = records.run_id("rollback", records.utc_now())
            results = _rollback(ctx, to_roll, plans, rb_id,
                                "automatic" if failure else "tolerated_failure")
            for h, r in results.items():
                if r["changed"] or per_host[h]["outcome"] != "pending":
                    per_host[h]["outcome"] = "rolled_back" if r["ok"] else "rollback_failed"
                    per_host[h]["rollback"] = r
            rb = _rollback_record(ctx, run_id=rb_id,
                                  reason="automatic" if failure else "tolerated_failure",
                                  trigger=failure or
                                  "failures within max_fail_percentage", results=results,
                                  version_from=opts.version, upgrade_run_id=base["run_id"],
                                  plans={h: plans[h] for h in to_roll})
            rb_dir = _publish_rollback(ctx, rb)
            base["rollback_run_id"], base["rollback_outcome"] = rb_dir.name, rb["outcome"]
    if failure:
        outcome = "rolled_back" if base.get("rollback_outcome") == "rolled_back" else "failed"
    else:
        outcome = "succeeded"
    base["failure"], base["per_host"] = failure, per_host
    if outcome != "failed":
        _journal_done(opts.state_dir, opts.component)
    record = _upgrade_record(ctx, base, outcome=outcome, check=False,
                             note="tolerated" if tolerated and not failure else "")
    run_dir = records.write_run(opts.records_dir, "upgrade", record, ctx.redactor)
    opts.echo(f"{record['headline']}\n{run_dir}")
    return records.Outcome(record["exit_code"], run_dir, record)


class _Gate:
    """The Testinfra gate between batches of the one rolling play.

    The play reports each host after its reload (with the batch it belongs to) and then
    waits for ``<gate dir>/<sha1 of the batch>.json``; as soon as a whole batch has
    reported, this checks it and writes the verdict (the hosts that passed). A host
    missing from the verdict fails in the play, so ``max_fail_percentage`` stops it.
    """

    def __init__(self, ctx: _Ctx, base: dict[str, Any], gate_dir: Path):
        self.ctx, self.base, self.dir = ctx, base, gate_dir
        self.reports: dict[str, dict[str, Any]] = {}
        self.batches: list[list[str]] = []
        self.verdicts: dict[int, list[str]] = {}
        self.threads: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.since = _now()

    def on_host(self, o: runner.HostOutcome) -> None:
        msg = o.result.get("msg")
        if o.status != runner.OK or not isinstance(msg, dict) or "steps" not in msg \
                or msg.get("action") != "deploy":
            return
        with self.lock:
            self.reports[o.host] = msg
            batch = [str(h) for h in msg.get("batch") or [o.host]]
            if batch in self.batches or not all(h in self.reports for h in batch):
                return
            self.batches.append(batch)
            th = threading.Thread(target=self._check, args=(len(self.batches), batch),
                                  daemon=True)
            self.threads.append(th)
        th.start()

    def _check(self, i: int, batch: list[str]) -> None:
        passed: list[str] = []
        try:
            bad = {h: f"{r.get('failed_task') or 'deploy'}: {r.get('error')}"
                   for h in batch if _report_failed(r := self.reports[h])}
            _step(self.ctx, "deploy", self.since, batch, not bad,
                  " | ".join(f"{h}: {e}" for h, e in bad.items()), i)
            opts = self.ctx.opts
            wanted = {h: (opts.version, int(self.base["facts"][h].get("log_size") or 0))
                      for h in batch if h not in bad}
            verified = _verify(self.ctx, wanted, "upgrade", i)
            passed = [h for h in batch if h not in bad and verified.get(h)]
        finally:
            self.verdicts[i] = passed
            key = hashlib.sha1(",".join(batch).encode()).hexdigest()
            state.atomic_write(self.dir / f"{key}.json", json.dumps({"passed": passed}).encode())
            self.since = _now()

    def join(self) -> None:
        for th in list(self.threads):
            th.join()

    def judge(self, per_host: dict[str, dict[str, Any]], max_fail: float
              ) -> tuple[str | None, list[str]]:
        """(why the upgrade failed or None, failed hosts within the tolerance)."""
        why, tolerated = [], []
        for i, batch in enumerate(self.batches, 1):
            passed = self.verdicts.get(i, [])
            for h in batch:
                steps = self.reports[h].get("steps") or {}
                per_host[h].update({
                    "release": self.base["release"], "batch": i,
                    "migrations_applied": (steps.get("migrate") or {}).get("applied") or [],
                    "backup": (steps.get("migrate") or {}).get("backup"),
                    "cleanup_deleted": (steps.get("cleanup") or {}).get("deleted") or []})
                if (steps.get("migrate") or {}).get("backup"):
                    self.base["plans"][h]["backup"] = steps["migrate"]["backup"]
                if h in passed:
                    per_host[h]["outcome"] = "upgraded"
                else:
                    r = self.reports[h]
                    per_host[h]["outcome"] = "failed"
                    per_host[h]["error"] = (f"{r.get('failed_task')}: {r.get('error')}"
                                            if _report_failed(r) else
                                            "post-condition checks failed")
            failed = [h for h in batch if h not in passed]
            if failed and rp.batch_failed(len(failed), len(batch), max_fail):
                why.append(f"batch {i}: " + "; ".join(f"{h}: {per_host[h]['error']}"
                                                     for h in failed))
                break
            tolerated += failed
        else:
            missing = [h for h in per_host if h not in self.reports]
            for h in missing:
                per_host[h]["outcome"] = "failed"
                per_host[h]["error"] = "no report from the play (unreachable or stopped)"
            if missing:
                why.append("no report from " + ", ".join(missing))
        return ("; ".join(why) or None), tolerated


def _report_failed(report: dict[str, Any]) -> bool:
    return report.get("failed") not in (False, "False", "false", None, "")


def _impact(ctx: _Ctx, hosts: list[str]) -> dict[str, Any]:
    groups: dict[str, list[str]] = {}
    for h in hosts:
        for g in ctx.hosts[h].groups:
            groups.setdefault(g, []).append(h)
    services = sorted({s for h in hosts for s in ctx.cfgs[h].get("services") or []})
    measured = {h: ctx.downtime[h] for h in hosts if h in ctx.downtime}
    return {"hosts": hosts, "groups": groups, "services": services,
            "endpoints": [f"{ctx.cfgs[h]['address']}:{ctx.cfgs[h]['port']}" for h in hosts],
            "expected_downtime_s": max((float(ctx.cfgs[h].get("expected_downtime_s") or 0)
                                        for h in hosts), default=0.0),
            "measured_downtime": measured,
            "measured_max_gap_s": max((m["longest_gap_s"] for m in measured.values()),
                                      default=None),
            "failed_health_polls": sum(m["failed"] for m in measured.values())
            if measured else None,
            "poll_interval_s": ctx.opts.poll_interval_s}


def _upgrade_record(ctx: _Ctx, base: dict[str, Any], *, outcome: str, check: bool,
                    note: str = "") -> dict[str, Any]:
    finished = records.utc_now()
    opts: UpgradeOptions = ctx.opts  # type: ignore[assignment]
    L = opts.lang
    names = list(ctx.hosts)
    risk: rp.Risk = base["risk"]
    status = {"succeeded": "normal", "planned": "normal"}.get(outcome, "critical")
    if outcome == "planned" and (risk.level == rp.HIGH or note == "needs_yes"):
        status = "warning"
    if note == "tolerated":
        status = "warning"
    exit_code = {"normal": 0, "warning": 1}.get(status, 2)
    vf = base["version_from"]
    word = _WORDS[L][outcome]
    headline = (f"{opts.component} 升级 {vf or '（新装）'} → {opts.version}：{word}"
                f"（{len(names)} 台主机，风险{_WORDS[L][risk.level]}）" if L == "zh-CN" else
                f"{opts.component} upgrade {vf or '(new)'} → {opts.version}: {word} on "
                f"{len(names)} host(s), {risk.level} risk")
    meta = base["tar"]["meta"]
    facts = base["facts"]
    return {
        "schema_version": SCHEMA_VERSION, "kind": "upgrade", "run_id": base["run_id"],
        "lang": L, "status": status, "exit_code": exit_code,
        "time": records.time_block(ctx.started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator), "headline": headline,
        "component": opts.component, "version_from": vf, "version_to": opts.version,
        "outcome": outcome, "hosts": names, "check_mode": check, "note": note,
        "content": {"version_from": vf, "version_to": opts.version,
                    "versions_live": {h: facts[h].get("current_version") for h in names},
                    "changes": list(meta.get("changes") or []), "release": base["release"],
                    "tarball": {"file": Path(base["tar"]["path"]).name,
                                "sha256": base["tar"]["sha256"], "size": base["tar"]["size"]},
                    "migrations": base["pending"]},
        "modules_changed": rp.modules_changed(base["old"], base["tar"]["files"]),
        "execution": {"strategy": "rolling", "serial": opts.serial,
                      "max_fail_percentage": opts.max_fail_percentage,
                      "batches": base["batches"], "steps": ctx.steps,
                      "verification": ctx.verification, "failure": base.get("failure"),
                      "rollback_run_id": base.get("rollback_run_id"),
                      "rollback_outcome": base.get("rollback_outcome"),
                      "verify_window_s": opts.verify_window_s},
        "per_host": [dict({"host": h, "outcome": outcome, "error": "", "release": None,
                           "migrations_applied": [], "backup": None, "cleanup_deleted": [],
                           "batch": None},
                          **(base.get("per_host", {}).get(h) or {}),
                          groups=list(ctx.hosts[h].groups),
                          from_release=facts[h].get("current"),
                          from_version=facts[h].get("current_version")) for h in names],
        "impact": _impact(ctx, names),
        "risk": {"level": risk.level, "reasons": risk.reasons, "blocking": risk.blocking,
                 "confirmed_with_yes": bool(opts.yes),
                 "hosts": [{"host": h, "reachable": facts[h].get("reachable"),
                            "healthy": facts[h].get("healthy"),
                            "live_version": facts[h].get("current_version"),
                            "disk_free_bytes": facts[h].get("disk_free_bytes"),
                            "backup_age_hours": facts[h].get("backup_age_hours"),
                            "applied_migrations": facts[h].get("applied"),
                            "error": facts[h].get("error")} for h in names]},
        "database_backups": base.get("database_backups") or [],
        "plan": {"plan_run_id": base.get("plan_run_id"), "release": base["release"],
                 "triggers": rp.triggers(), "hosts": list(base["plans"].values())},
        "scope": {"inventory": list(ctx.selection.sources), "limit": ctx.selection.limit},
        "ops_revision": records.ops_revision(),
    }


def _echo_plan(ctx: _Ctx, rec: dict[str, Any], full: bool) -> None:
    echo = ctx.opts.echo
    echo(rec["headline"])
    for r in rec["risk"]["reasons"]:
        echo(f"  risk {r['level']:6} {r['host'] or '*'}: {r['detail']}")
    echo(f"  batches: {rec['execution']['batches']}")
    for p in rec["plan"]["hosts"]:
        echo(f"  rollback plan {p['host']}: back to {p['target'] or '(nothing: new install)'}"
             f", keep migrations {p['keep_migrations']}")
        if full:
            for s in p["steps"]:
                echo(f"      $ {s}")
    if full:
        echo("  automatic rollback when: " + ", ".join(rec["plan"]["triggers"]))


# ---------------------------------------------------------------- invoke rollback

def rollback(opts: RollbackOptions) -> records.Outcome:
    """Return the component to its previous release (or --to VERSION), with a record."""
    if opts.to is not None:
        rh.check_version(opts.to)
    ctx = _setup(opts)
    with state.locked(opts.state_dir, f"release-{opts.component}"):
        journal = _journal_load(opts.state_dir, opts.component)
        if journal and not opts.check:
            return _finish_interrupted(ctx, journal)
        t0 = _now()
        facts = rh.probe(list(zip(ctx.hosts.values(), ctx.cfgs.values(), strict=True)),
                         health=False, forks=opts.forks, connect_timeout=opts.connect_timeout)
        plans, problems = {}, []
        for h, f in facts.items():
            if not f.get("reachable"):
                problems.append(f"{h}: unreachable ({f.get('error')})")
                continue
            if opts.to:
                cands = [r["name"] for r in f.get("releases") or [] if r["version"] == opts.to]
                target = cands[-1] if cands else None
                if not target:
                    problems.append(f"{h}: no release of version {opts.to} is kept")
                    continue
            else:
                target = f.get("previous")
                if not target:
                    problems.append(f"{h}: no previous release to roll back to")
                    continue
            if target == f.get("current"):
                continue
            plans[h] = {"host": h, "target": target, "target_version": rp.parse_release(
                target)[0], "failed": f.get("current"), "keep_migrations": None,
                "keep_from_target": True, "backup": None,
                "from_version": f.get("current_version")}
        _step(ctx, "plan", t0, list(facts), not problems, "; ".join(problems))
        if problems:
            raise MhopsError("cannot roll back: " + "; ".join(problems))
        if not plans:
            raise MhopsError(f"nothing to roll back: {opts.component} already runs the "
                             "wanted release on every selected host")
        froms = sorted({str(p["from_version"]) for p in plans.values()})
        run_id = records.run_id("rollback", ctx.started)
        for p in plans.values():
            ctx.opts.echo(f"  {p['host']}: {p['failed']} -> {p['target']}")
        if opts.check:
            rec = _rollback_record(ctx, run_id=run_id, reason="manual", trigger="operator",
                                   results={}, version_from=", ".join(froms),
                                   upgrade_run_id=None, check=True, plans=plans)
            run_dir = _publish_rollback(ctx, rec)
            ctx.opts.echo("(check mode: nothing changed)")
            return records.Outcome(0, run_dir, rec)
        journal = {"kind": "rollback", "run_id": run_id, "component": opts.component,
                   "version_to": ", ".join(froms), "phase": "rolling_back",
                   "touched": list(plans), "plans": plans, "started": records.iso(ctx.started)}
        _journal_save(opts.state_dir, opts.component, journal)
        with _signals():
            results = _rollback(ctx, list(plans), plans, run_id, "manual")
        rec = _rollback_record(ctx, run_id=run_id, reason="manual", trigger="operator",
                               results=results, version_from=", ".join(froms),
                               upgrade_run_id=None, plans=plans)
        if rec["outcome"] == "rolled_back":
            rec["status"], rec["exit_code"] = "normal", 0
            _journal_done(opts.state_dir, opts.component)
        run_dir = _publish_rollback(ctx, rec)
        return records.Outcome(rec["exit_code"], run_dir, rec)


# ---------------------------------------------------------------- invoke versions

def versions(inventory: list[str], component: str | None = None, limit: str | None = None,
             vault_password_file: str | None = None, echo: Callable[[str], None] = print
             ) -> list[dict[str, Any]]:
    """Component x host: live version, previous version, deployed at (read-only)."""
    selection = select(inventory, limit, vault_password_file)
    comps = [component] if component else rh.components(selection)
    if not comps:
        raise MhopsError("no selected host has mhops_release_components")
    rows = []
    for comp in comps:
        chosen = rh.component_hosts(selection, comp)
        facts = rh.probe(chosen, health=False)
        for h, _ in chosen:
            f = facts[h.name]
            rows.append({"component": comp, "host": h.name,
                         "live": f.get("current_version") if f.get("reachable") else None,
                         "previous": f.get("previous_version"),
                         "deployed_at": f.get("current_deployed_at"),
                         "release": f.get("current"),
                         "error": None if f.get("reachable") else f.get("error")})
    widths = [12, 14, 12, 12, 22]
    head = ("component", "host", "live", "previous", "deployed at")
    echo("  ".join(t.ljust(w) for t, w in zip(head, widths, strict=True)))
    for r in rows:
        cells = (r["component"], r["host"], r["live"] or ("-" if not r["error"] else "?"),
                 r["previous"] or "-", r["deployed_at"] or (r["error"] or "-")[:60])
        echo("  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)))
    return rows


_WORDS = {
    "zh-CN": {"succeeded": "成功", "rolled_back": "已回退", "failed": "失败", "planned": "计划",
              "low": "低", "medium": "中", "high": "高"},
    "en": {"succeeded": "succeeded", "rolled_back": "rolled back", "failed": "failed",
           "planned": "planned", "low": "low", "medium": "medium", "high": "high"},
}
