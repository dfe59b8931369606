"""Restore drills: ``invoke drill restore``, from choosing the backup to the DR drill record.

Owns the order of a drill and what happens when a step fails or is interrupted:
resolve the database and its host from the inventory (``mhops.drill_inputs``; ``--limit``
like other tasks),
refuse any target that is or could be production before anything is written anywhere
(``mhops.drill_guards``), stage the backup from its database host through Ansible
(``mhops.drill_stage``: marked in ``.in-use``, fetched with checksums when the host is
remote), check it against its manifest, restore it into a throwaway instance on this
machine (``mhops.scratch``), verify it (instance up and listening via Testinfra, then
``mhops.drill_verify``), measure RTO and RPO, tear everything down whatever happens
(failure, Ctrl-C, SIGTERM), release the backup and write the record
(``mhops.drill_record``).

Exit codes: 0 passed, 1 passed but RTO or RPO over target, 2 failed (corrupt or
truncated backup, failed transfer, missing table, wrong count, restore error,
interrupted), 3 the run itself failed (bad input, a refused target, no such backup):
no record is written.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from mhops import drill_inputs, drill_stage, records, scratch
from mhops.drill_files import FORMATS, parse_name
from mhops.drill_guards import Endpoint, parse_target, production_endpoints, refusals
from mhops.drill_record import KIND, Interrupted, Steps, build_record, reason_of
from mhops.drill_rules import BAD
from mhops.drill_verify import CHECKS, DrillFailed, Verifier
from mhops.errors import MhopsError
from mhops.redact import Redactor

ENGINES = drill_inputs.ENGINES
STEPS = ("fetch", "initdb", "start", "checksum", "listening", "restore", *CHECKS)


@dataclass
class Options:
    records_dir: Path
    inventory: list[str] = field(default_factory=list)
    limit: str | None = None
    engine: str | None = None
    name: str | None = None
    backup: str = "latest"
    target: str | None = None
    backup_dir: str = ""
    scratch_dir: str = ""
    rto_target_minutes: float = 60.0
    rpo_target_hours: float = 24.0
    row_tolerance: float = 0.0
    sample_tables: list[str] = field(default_factory=list)
    smoke_sql: dict[str, str] = field(default_factory=dict)
    smoke_department: str = "D001"
    smoke_day: str = ""
    smoke_min_rows: int = 1
    compare_source: bool = True
    jobs: int = 2
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    vault_password_file: str | None = None
    check: bool = False
    stage_local: str = "direct"      # or "ansible": see drill_stage.Settings.direct_local
    echo: Callable[[str], None] = print


# ---------------------------------------------------------------- the drill

def run(opts: Options) -> records.Outcome:
    t0 = time.monotonic()
    started = records.utc_now()
    words = records.labels(opts.lang)[KIND]
    if opts.engine and opts.engine not in ENGINES:
        raise MhopsError(f"unknown engine {opts.engine!r}; valid: {', '.join(ENGINES)}")
    if opts.stage_local not in ("direct", "ansible"):
        raise MhopsError(f"drill.stage_local must be direct or ansible, got {opts.stage_local!r}")
    # Production is judged over the whole inventory; --limit only narrows the database.
    entries, everything = drill_inputs.entries(opts, None) if opts.inventory else ([], None)
    chosen, selection = (drill_inputs.entries(opts, opts.limit) if opts.inventory and opts.limit
                         else (entries, everything))
    entry = drill_inputs.choose_entry(chosen, opts)
    host, local = drill_inputs.db_host(entry, selection)
    known_engine = (entry or {}).get("engine") or opts.engine
    if known_engine:
        scratch.require_tools(known_engine)

    # Guards: everything above only read; nothing is written anywhere before this passes.
    spec = parse_target(opts.target, entries)
    parent = spec.parent or opts.scratch_dir or None
    port = spec.port or scratch.free_port("127.0.0.1")
    target = Endpoint(known_engine or "", spec.host, port, data_dir=parent,
                      name=spec.entry or "", production=spec.production)
    prod = [drill_inputs.discover(p, next(e for e in entries if e["name"] == p.name))
            for p in production_endpoints(entries)]
    reasons = refusals(target, prod, os.environ, drill_inputs.local_aliases())
    if reasons:
        raise MhopsError("refusing the drill target: " + "; ".join(reasons))
    if spec.port and scratch.port_in_use(spec.host, spec.port):
        raise MhopsError(f"--target port {spec.port} is in use: a drill restores only into a "
                         "scratch instance it starts itself, never into a running server")

    redactor = Redactor(secrets=everything.secrets if everything else frozenset())
    steps = Steps(opts.echo, words.get("steps", {}))
    where = drill_stage.Settings(
        inventory=opts.inventory, host=host, local=local,
        name=str((entry or {}).get("name") or opts.name or ""), backup=opts.backup,
        backup_dir=str((entry or {}).get("backup_dir") or opts.backup_dir or ""),
        staging_parent=parent, vault_password_file=opts.vault_password_file,
        redactor=redactor, direct_local=opts.stage_local != "ansible")
    opts.echo(f"{words['title']}: {opts.backup or 'latest'} @ {host}")
    if opts.check:
        return _plan(opts, where, target)
    interrupted = ""
    staged: drill_stage.Staged | None = None
    early: _Early | None = None
    # Once restored, the file has been read: release it while the verification runs.
    releaser = _Once(lambda: staged and drill_stage.release(where, staged))
    with _signals_as_interrupts():
        try:
            if parent:
                scratch.sweep_stale(Path(parent))
            else:
                scratch.sweep_stale()
            try:
                with steps("fetch") as s:
                    if known_engine:  # the instance starts while the backup is staged
                        early = _Early(_instance(known_engine, target), steps)
                    staged = drill_stage.stage(where)
                    s["detail"] = staged.detail
                    if staged.error:
                        s["status"] = BAD
            except (KeyboardInterrupt, Interrupted) as exc:
                # Whether the cancelled stage had written its .in-use line is unknown: leave
                # it to an operator rather than risk removing the line of another drill.
                interrupted = reason_of(exc)
                given = opts.backup not in ("", "latest")
                staged = drill_stage.Staged(
                    host=host, source_path=opts.backup if given else None,
                    file=Path(opts.backup).name if given else None,
                    error=f"{interrupted} while staging the backup; check {host} for a "
                          ".in-use line left behind")
            ctx = _context(opts, staged, entry, entries, target, steps, t0, started)
            ctx.interrupted = bool(interrupted)
            ctx.on_restored = releaser.start
            ctx.early, early = early, None  # from here the drill tears it down
            ctx.drill()
        finally:
            with _shielded():
                if early is not None:  # staging or the manifest refused the run
                    early.abandon()
                releaser.finish()
        record = build_record(ctx)
        run_dir = records.write_run(opts.records_dir, KIND, record, redactor)
    opts.echo(f"{words['outcomes'][record['outcome']]} ({words['exit_code']} "
              f"{record['exit_code']}): {record['reason'] or ''}".rstrip(": "))
    opts.echo(str(run_dir))
    return records.Outcome(exit_code=record["exit_code"], record_dir=run_dir, record=record)


def _plan(opts: Options, where: drill_stage.Settings, target: Endpoint) -> records.Outcome:
    """--check: which backup the drill would restore, and where; nothing marked or written."""
    staged = drill_stage.stage(where, plan_only=True)
    how = "fetched to this machine" if staged.transfer == "fetched" else "used in place"
    plan = {"check_mode": True, "db_host": staged.host, "backup": staged.source_path,
            "size": staged.size, "transfer": staged.transfer,
            "manifest_problem": staged.manifest_problem or None,
            "target": f"scratch {target.host}:{target.port} under "
                      f"{target.data_dir or 'the temp folder'}"}
    opts.echo(f"would restore {staged.source_path} ({staged.size} bytes) from {staged.host}, "
              f"{how}, into a {plan['target']}")
    if staged.manifest_problem:
        opts.echo(f"the drill would fail: {staged.manifest_problem}")
    opts.echo("(check mode: nothing marked, fetched, restored or recorded)")
    return records.Outcome(exit_code=0, record_dir=None, record=plan)


def _context(opts: Options, staged: drill_stage.Staged, entry: dict[str, Any] | None,
             entries: list[dict[str, Any]], target: Endpoint, steps: Steps, t0: float,
             started: datetime) -> _Context:
    """What the staged backup says about itself; MhopsError when it contradicts the request."""
    manifest, problem = drill_inputs.read_manifest(staged.manifest, staged.manifest_problem,
                                       staged.file or "")
    parsed = parse_name(staged.file or "")
    engine = ((manifest or {}).get("engine") or (entry or {}).get("engine") or opts.engine
              or ("postgresql" if str(staged.file).endswith(".dump") else None))
    if engine not in ENGINES:
        if not staged.error:
            raise MhopsError("cannot tell the engine of this backup: give --engine",
                             path=staged.source_path)
        engine = "unknown"  # the staging failed before the backup said what it is
    if opts.engine and engine != opts.engine:
        raise MhopsError(f"the backup is a {engine} backup, not {opts.engine}",
                         path=staged.source_path)
    if not staged.error:
        scratch.require_tools(engine)
    if entry is None and manifest:
        entry = next((e for e in entries if e["name"] == manifest.get("name")
                      and e["engine"] == engine), None)
    return _Context(opts, engine, Path(staged.path or ""), manifest, problem, entry, parsed,
                    Endpoint(engine, target.host, target.port, data_dir=target.data_dir,
                             name=target.name, production=target.production),
                    steps, t0, started, staged)


def _instance(engine: str, target: Endpoint) -> scratch.Instance:
    return scratch.Instance(engine, parent=Path(target.data_dir) if target.data_dir else None,
                            host=target.host, port=target.port or 0)


def _create_and_start(inst: scratch.Instance, steps: Steps) -> None:
    with steps("initdb"):
        inst.create()
        inst.init()
    with steps("start") as s:
        inst.start()
        s["detail"] = f"{inst.host}:{inst.port} {inst.version}"


class _Early:
    """The scratch instance created and started in the background while the backup is
    staged (initdb and start do not need the backup); the drill waits for it."""

    def __init__(self, instance: scratch.Instance, steps: Steps):
        self.instance, self.error = instance, None
        self.thread = threading.Thread(target=self._run, args=(steps,), name="drill-early",
                                       daemon=True)
        self.thread.start()

    def _run(self, steps: Steps) -> None:
        try:
            _create_and_start(self.instance, steps)
        except Exception as exc:  # handed to the drill thread by wait()
            self.error = exc

    def wait(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        self.thread.join()
        self.instance.stop()


class _Once:
    """Run `work` once: in the background from `start`, or inline from `finish`."""

    def __init__(self, work: Callable[[], Any]):
        self.work, self.thread, self.done = work, None, False

    def start(self) -> None:
        if self.thread is None and not self.done:
            self.thread = threading.Thread(target=self.work, name="drill-release", daemon=True)
            self.thread.start()

    def finish(self) -> None:
        if self.thread is not None:
            self.thread.join()
        elif not self.done:
            self.work()
        self.done = True


@contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the drill like Ctrl-C, so the finally blocks tear down."""
    def raise_interrupt(signum, frame):
        raise Interrupted(f"interrupted ({signal.Signals(signum).name})")

    saved = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, raise_interrupt)
    except ValueError:  # not the main thread: the caller owns signal handling
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextmanager
def _shielded() -> Iterator[None]:
    """A second Ctrl-C or SIGTERM must not cut the teardown short: note it, carry on."""
    saved = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, lambda *_: None)
    except ValueError:
        pass
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)



@dataclass
class _Context:
    opts: Options
    engine: str
    backup: Path
    manifest: dict[str, Any] | None
    manifest_problem: str
    entry: dict[str, Any] | None
    parsed: tuple[str, str, str] | None
    target: Endpoint
    steps: Steps
    t0: float
    started: datetime
    staged: drill_stage.Staged
    instance: scratch.Instance | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    interrupted: bool = False
    verified_at: float | None = None
    teardown: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    on_restored: Callable[[], None] | None = None
    early: _Early | None = None

    @property
    def database(self) -> str:
        return str((self.manifest or {}).get("database") or "drill")

    def drill(self) -> None:
        fmt = FORMATS.get(self.parsed[2] if self.parsed else "")
        if self.manifest and self.manifest.get("format"):
            fmt = self.manifest["format"]
        early = self.early
        inst = early.instance if early else _instance(self.engine, self.target)
        self.instance = inst
        try:
            if early:
                early.wait()
                if inst.engine != self.engine:  # the manifest overrules the inventory
                    early.abandon()
                    early = self.early = None
                    inst = self.instance = _instance(self.engine, self.target)
            if self.staged.error:
                raise DrillFailed(self.staged.error)
            if self.manifest_problem:
                with self.steps("manifest") as s:
                    s["detail"] = self.manifest_problem
                    raise DrillFailed(self.manifest_problem)
            with ThreadPoolExecutor(max_workers=1) as pool:
                # The checksum runs while the instance starts; nothing is restored before
                # it has matched the manifest.
                digest = pool.submit(_sha256, self.backup)
                if not early:
                    _create_and_start(inst, self.steps)
                with self.steps("checksum") as s:
                    self.sha256, size = digest.result()
                    s["detail"] = self._check_file(size)
            with self.steps("listening") as s:
                s["detail"] = self._testinfra()
            with self.steps("restore") as s:
                inst.create_database(self.database)
                inst.restore(self.backup, fmt, self.database, jobs=self.opts.jobs)
                s["detail"] = f"{fmt} → {self.database}"
            if self.on_restored:
                self.on_restored()
            self._verify()
            self.verified_at = time.monotonic()
        except (DrillFailed, scratch.ScratchError) as exc:
            self.reason = str(exc)
        except (KeyboardInterrupt, Interrupted) as exc:
            self.interrupted = True
            self.reason = reason_of(exc)
        finally:
            for step in STEPS:
                if not any(i["step"] == step for i in self.steps.items):
                    self.steps.skip(step, "not reached")
            with _shielded(), self.steps("teardown") as s:
                if self.early:
                    self.early.thread.join()
                inst = self.instance
                inst.stop()
                left = [p for p in (inst.root,) if p is not None and p.exists()]
                alive = inst.proc is not None and inst.proc.poll() is None
                self.teardown = {"instance_stopped": not alive, "folder_removed": not left,
                                 "folder": str(inst.root) if inst.root else None}
                s["detail"] = "ok" if not alive and not left else "LEFT BEHIND"

    def _check_file(self, size: int) -> str:
        want_sha, want_size = self.manifest.get("sha256"), self.manifest.get("size")
        if want_size is not None and size != want_size:
            raise DrillFailed(f"size {size} differs from the manifest's {want_size}: the "
                              "backup file is truncated or was changed")
        if self.sha256 != want_sha:
            raise DrillFailed("sha256 differs from the manifest: the backup file is corrupt "
                              "or was changed")
        return f"sha256 {self.sha256[:16]}… size {size}"

    def _testinfra(self) -> str:
        import testinfra

        inst = self.instance
        host = testinfra.get_host("local://")
        procs = host.process.filter(pid=inst.pid)
        tcp = host.socket(f"tcp://{inst.host}:{inst.port}").is_listening
        unix = host.socket(f"unix://{inst.root}/.s.PGSQL.{inst.port}"
                           if self.engine == "postgresql"
                           else f"unix://{inst.socket_path}").is_listening
        self.verification["instance"] = {
            "process": procs[0].comm if procs else None, "pid": inst.pid,
            "tcp": f"{inst.host}:{inst.port}", "tcp_listening": tcp, "socket_listening": unix,
            "version": inst.version}
        if not (procs and tcp and unix):
            raise DrillFailed(f"the scratch instance is not up: process {bool(procs)}, "
                              f"tcp {inst.host}:{inst.port} listening {tcp}, socket {unix}")
        return f"pid {inst.pid} {procs[0].comm}, tcp {inst.host}:{inst.port}, socket"

    # ------------------------------------------------------------ verification
    def _verify(self) -> None:
        checks = Verifier(self.instance, self.engine, self.database, self.manifest,
                          self.entry, self.opts, self.verification)
        failures = []
        for step in CHECKS:
            try:
                with self.steps(step) as s:
                    s["detail"] = getattr(checks, step)()
            except DrillFailed as exc:
                failures.append(str(exc))
            except scratch.ScratchError as exc:
                failures.append(f"{step}: {exc}")
        if failures:
            raise DrillFailed("; ".join(failures))


def _sha256(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return h.hexdigest(), size


