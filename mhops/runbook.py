"""Runbook engine: ``invoke runbook NAME --host H [--yes] [--check] [--incident N]``.

Owns loading the runbook modules in ``runbooks/`` (one per known fault, each with a
``META`` block and plain step functions taking a Fabric/Invoke context), resolving the
host through the shared inventory, opening a Fabric connection (or a local Invoke
context for ``ansible_connection: local``) with connect and command timeouts, and the
run itself: diagnosis, then remediation where every change goes through
:meth:`Run.change` (shown, then confirmed unless ``--yes``; ``--check`` never runs
one), then verification (steps use Testinfra through ``Run.testinfra``). Every
command and its output is kept per step, everything shown or written is redacted,
and the run is recorded (kind ``runbook``). A run linked to an incident hands its
record to the ``attach_to_incident`` callable it was given.

Step contract (see runbooks/README.md): ``def diagnose_x(c, rb) -> dict | None``
returning ``{"status": normal|warning|critical|unknown, "summary": str, "data": {}}``;
``rb.facts`` carries what diagnosis found to the later phases.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from mhops import kbmeta, records, state
from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.inventory import Host, select
from mhops.redact import Redactor

SCHEMA_VERSION = 1
RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"
KILL_GRACE = 5  # seconds between TERM and KILL when a command times out
OUTPUT_LIMIT = 4000  # characters of a command's output kept per stream in the record
_SECRET_SETTING = re.compile(r"(?i)pass|secret|token|key$")


# ------------------------------------------------------------------ loading

@dataclass
class Runbook:
    """One runbook module as found on disk (``error`` set when it failed to import)."""

    stem: str
    path: Path
    module: ModuleType | None
    meta: dict[str, Any]
    functions: list[str]
    error: str | None = None

    @property
    def id(self) -> str:
        return str(self.meta.get("id") or self.stem.replace("_", "-"))

    def title(self, lang: str) -> str:
        title = self.meta.get("title")
        return str(title.get(lang, self.id) if isinstance(title, dict) else self.id)


def load_all(folder: Path | None = None) -> dict[str, Runbook]:
    """Every ``*.py`` runbook in `folder` (default ``runbooks/``), by id."""
    folder = Path(folder or RUNBOOKS)
    if not folder.is_dir():
        raise MhopsError("runbook folder does not exist", path=str(folder))
    out: dict[str, Runbook] = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        rb = _load(path)
        out[rb.id] = rb
    return out


def _load(path: Path) -> Runbook:
    name = f"mhops_runbook_{abs(hash(str(path.parent)))}_{path.stem}"
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as exc:  # a broken runbook must not hide the others from kb.check
        return Runbook(path.stem, path, None, {}, [], f"{type(exc).__name__}: {exc}")
    meta = getattr(module, "META", None)
    fns = kbmeta.step_functions([n for n, v in vars(module).items()
                                 if callable(v) and getattr(v, "__module__", None) == name])
    return Runbook(path.stem, path, module, meta if isinstance(meta, dict) else {}, fns)


def get(runbook_id: str, folder: Path | None = None) -> Runbook:
    """The runbook `runbook_id`, or bad input naming every valid id."""
    books = load_all(folder)
    rb = books.get(runbook_id)
    if rb is None:
        raise MhopsError(f"unknown runbook / knowledge-base id {runbook_id!r}; "
                         f"valid: {', '.join(sorted(books))}")
    if rb.error:
        raise MhopsError(f"runbook {runbook_id} cannot be loaded: {rb.error}", path=str(rb.path))
    return rb


# ------------------------------------------------------------------ options

@dataclass
class Options:
    name: str
    host: str
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    yes: bool = False
    check: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    incident: int | None = None
    # Wired by the integrator to the incident store: (incident id, redacted record).
    attach_to_incident: Callable[[int, dict[str, Any]], None] | None = None
    confirm: Callable[[str], bool] | None = None  # asked per change when not --yes
    connect_timeout: int = 10
    command_timeout: int = 60
    inspections_dir: Path | None = None  # inspection records read by trend steps
    runbooks_dir: Path | None = None
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    vault_password_file: str | None = None
    echo: Callable[[str], None] = print


def _ask(prompt: str) -> bool:
    """Ask on the terminal; without one nothing is confirmed (use --yes)."""
    if not sys.stdin.isatty():
        return False
    return input(f"{prompt} [y/N] ").strip().lower() in ("y", "yes", "是")


# ------------------------------------------------------------------ contexts

class CheckModeRefused(RuntimeError):
    """A remediation step ran a command directly while only planning (--check)."""


class _Recorder:
    """The context a step receives: ``c.run`` with timeouts, output kept for the record."""

    def __init__(self, run: Run, conn, *, refuse: bool = False):
        self._run, self._conn, self._refuse = run, conn, refuse

    def run(self, command: str, **kw):
        self._guard()
        return self._run.execute(command, **kw)

    def _guard(self) -> None:
        if self._refuse:
            raise CheckModeRefused("check mode: a remediation step may change the host only "
                                   "through rb.change()")

    def __getattr__(self, name: str):
        if name in ("sudo", "put", "local", "shell"):
            self._guard()
        return getattr(self._conn, name)


# ------------------------------------------------------------------ the run

class Run:
    """What a step sees as ``rb``: settings, facts, changes, Testinfra, helpers."""

    def __init__(self, book: Runbook, host: Host, selection, opts: Options,
                 settings: dict[str, Any], redactor: Redactor):
        self.book, self.host_entry, self.selection, self.opts = book, host, selection, opts
        self.host = host.name
        self.settings = settings
        self.lang = opts.lang
        self.check = opts.check
        self.facts: dict[str, Any] = {}
        self.redactor = redactor
        self.steps: list[dict[str, Any]] = []
        self._current: dict[str, Any] | None = None
        self._conn = None
        self._testinfra = None

    # -- helpers for steps
    def text(self, zh: str, en: str) -> str:
        return zh if self.lang == "zh-CN" else en

    @staticmethod
    def level(value, warning, critical, higher_is_worse: bool = True) -> str:
        return kbmeta.level(value, warning, critical, higher_is_worse)

    @staticmethod
    def result(status: str, summary: str, **data) -> dict[str, Any]:
        return {"status": status, "summary": summary, "data": data}

    @staticmethod
    def wait(predicate: Callable[[], Any], timeout: float, interval: float = 0.5):
        """Poll `predicate` until it is truthy or `timeout` seconds pass; its last value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(interval)

    @staticmethod
    def quote(value: Any) -> str:
        return shlex.quote(str(value))

    @property
    def testinfra(self):
        """A Testinfra host for the same inventory host (local:// or ansible://)."""
        if self._testinfra is None:
            from mhops.inventory import testinfra_host

            # Testinfra's ansible backend runs ansible-inventory from PATH.
            bindir = os.path.dirname(sys.executable)
            if bindir not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
            self._testinfra = testinfra_host(self.host_entry, self.selection.sources)
        return self._testinfra

    def probe(self, command: str):
        """A read-only command through Testinfra (verification), bounded and recorded."""
        limit = self.opts.command_timeout
        started = time.monotonic()
        res = self.testinfra.run(f"timeout -k {KILL_GRACE} {limit} sh -c "
                                 f"{shlex.quote(command)}")
        if self._current is not None:
            self._current["commands"].append({
                "command": f"[testinfra] {command}", "exit": res.rc, "stdout": _cut(res.stdout),
                "stderr": _cut(res.stderr), "seconds": round(time.monotonic() - started, 2),
                "error": f"timed out after {limit} s" if res.rc in (124, 137) else None})
        return res

    def inspections(self, days: float) -> dict[str, Any]:
        """This host's points from the inspection records of the last `days` days."""
        from mhops import perf, trends

        end = datetime.now(UTC) + timedelta(minutes=1)
        period = trends.Period(f"last {days} days", "days", end - timedelta(days=days), end)
        folder = self.opts.inspections_dir or self.opts.records_dir
        series, source = perf.load_inspections(Path(folder), period)
        s = series.get(self.host)
        out = {"records": source["records"], "folder": str(folder)}
        for key in ("cpu", "load", "memory"):
            points = trends.as_days(getattr(s, key)) if s else []
            out[key] = trends.trend(points, min_points=3, min_span_days=0.0).as_dict()
        return out

    # -- commands and changes
    def execute(self, command: str, **kw):
        """Run a command on the host with the command timeout; keep it for the record."""
        kw.setdefault("hide", True)
        kw.setdefault("warn", True)
        kw.setdefault("in_stream", False)
        limit = int(kw.pop("timeout", None) or self.opts.command_timeout)
        # coreutils timeout kills the command's whole process group, so a background
        # child still holding the output pipe cannot keep the run waiting; Invoke's own
        # timeout (the backstop) only kills the shell.
        kw["timeout"] = limit + KILL_GRACE + 5
        wire = f"timeout -k {KILL_GRACE} {limit} sh -c {shlex.quote(command)}"
        become = None if self.host_entry.local else _become(self.host_entry)
        if become:
            wire = f"sudo -n -u {become} {wire}"
        started = time.monotonic()
        entry = {"command": command, "exit": None, "stdout": "", "stderr": "", "seconds": 0.0,
                 "error": None}
        if self._current is not None:
            self._current["commands"].append(entry)
        try:
            res = self._conn.run(wire, **kw)
        except Exception as exc:
            entry["error"] = _why(exc, self.opts.command_timeout)
            entry["seconds"] = round(time.monotonic() - started, 2)
            raise
        entry.update(exit=res.exited, stdout=_cut(res.stdout), stderr=_cut(res.stderr),
                     seconds=round(time.monotonic() - started, 2))
        if res.exited in (124, 137):
            entry["error"] = f"timed out after {limit} s"
        return res

    def change(self, description: str, command: str, *, timeout: int | None = None) -> bool:
        """One changing action: shown, confirmed (or --yes), run; False when not run."""
        ch = {"description": description, "command": command, "outcome": "planned",
              "error": None}
        assert self._current is not None, "rb.change() outside a step"
        self._current["changes"].append(ch)
        self.show(f"    {self.text('变更', 'CHANGE')}: {description}\n      $ {command}")
        if self.check:
            self.show(f"      ({self.text('预演模式，未执行', 'check mode: not run')})")
            return False
        ok = self.opts.yes or (self.opts.confirm or _ask)(self.redactor.text(
            f"{description}: {command}"))
        if not ok:
            ch["outcome"] = "declined"
            self.show(f"      ({self.text('未确认，未执行', 'not confirmed: not run')})")
            return False
        try:
            res = self.execute(command, timeout=timeout or self.opts.command_timeout)
        except Exception as exc:
            ch.update(outcome="failed", error=_why(exc, timeout or self.opts.command_timeout))
            self.show(f"      {ch['error']}")
            return False
        ch.update(outcome="done" if res.ok else "failed", exit=res.exited,
                  output=_cut((res.stdout + res.stderr).strip()))
        if not res.ok:
            self.show(f"      exit {res.exited}: {_cut(res.stderr or res.stdout, 300)}")
        return bool(res.ok)

    def show(self, line: str) -> None:
        self.opts.echo(self.redactor.text(line))

    # -- phases
    def step(self, phase: str, spec: dict[str, str]) -> dict[str, Any]:
        name = spec["step"]
        entry = {"phase": phase, "step": name, "description": spec.get(self.lang, ""),
                 "status": th.UNKNOWN, "summary": "", "data": {}, "commands": [],
                 "changes": [], "error": None, "seconds": 0.0}
        self.steps.append(entry)
        self._current = entry
        fn = getattr(self.book.module, name)
        ctx = _Recorder(self, self._conn, refuse=self.check and phase == "remediation")
        started = time.monotonic()
        try:
            got = fn(ctx, self) or {}
            entry.update(status=got.get("status", th.NORMAL), summary=got.get("summary", ""),
                         data=got.get("data") or {})
        except CheckModeRefused as exc:
            entry.update(status="skipped", summary=str(exc))
        except Exception as exc:
            entry.update(status="failed", error=_why(exc, self.opts.command_timeout))
        entry["seconds"] = round(time.monotonic() - started, 2)
        self._current = None
        mark = {"failed": "FAIL"}.get(entry["status"], entry["status"].upper())
        self.show(f"  [{mark}] {name}: {entry['summary'] or entry['error'] or ''}")
        return entry


def _become(host: Host) -> str | None:
    from mhops.inventory import ssh_params

    return ssh_params(host).become


def _why(exc: Exception, timeout: int) -> str:
    from invoke.exceptions import CommandTimedOut

    if isinstance(exc, CommandTimedOut):
        return f"timed out after {timeout} s"
    return f"{type(exc).__name__}: {exc}"


def _cut(text: str, limit: int = OUTPUT_LIMIT) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit} more)"


def _open(host: Host, opts: Options):
    """A local Invoke context or an opened Fabric connection (UNREACHABLE -> exception)."""
    if host.local:
        from invoke import Config, Context

        return Context(Config(overrides={"run": {"in_stream": False}}))
    from mhops import remote

    conn = remote.connection(host, opts.connect_timeout)
    conn.config.run.in_stream = False
    conn.config.timeouts.command = opts.command_timeout
    conn.open()
    return conn


def settings_for(book: Runbook, host: Host, overrides: dict[str, Any]) -> dict[str, Any]:
    """META defaults, then the host's ``mhops_runbooks[<id>]``, then --set; keys checked."""
    defaults = dict(book.meta.get("settings") or {})
    per_host = (host.vars.get("mhops_runbooks") or {}).get(book.id) or {}
    if not isinstance(per_host, dict):
        path, line = host.where("mhops_runbooks")
        raise MhopsError(f"mhops_runbooks.{book.id} must be a mapping", path=path, line=line)
    merged = dict(defaults)
    for source, values in (("mhops_runbooks", per_host), ("--set", overrides)):
        unknown = sorted(set(values) - set(defaults))
        if unknown:
            path, line = host.where(f"mhops_runbooks.{book.id}") if source != "--set" else (
                None, None)
            raise MhopsError(f"{source}: unknown setting {', '.join(unknown)} for runbook "
                             f"{book.id}; valid: {', '.join(sorted(defaults))}",
                             path=path, line=line)
        merged.update(values)
    return merged


def _secrets(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _secrets(v, str(k))]
    if isinstance(value, list):
        return [s for v in value for s in _secrets(v, key)]
    return [str(value)] if value and _SECRET_SETTING.search(key) else []


def run(opts: Options) -> records.Outcome:
    """Diagnose, remediate (confirmed), verify, record; the Outcome carries the exit code."""
    records.labels(opts.lang)
    book = get(opts.name, opts.runbooks_dir)
    if opts.incident is not None and opts.attach_to_incident is None:
        raise MhopsError(f"--incident {opts.incident}: no incident store is wired to attach "
                         "the run to")
    selection = select(opts.inventory, opts.host, opts.vault_password_file)
    if len(selection.hosts) != 1:
        raise MhopsError(f"--host {opts.host!r} matches {len(selection.hosts)} hosts "
                         f"({', '.join(selection.names)}); a runbook runs on exactly one")
    host = selection.hosts[0]
    settings = settings_for(book, host, opts.settings)
    redactor = Redactor(secrets=[*selection.secrets, *_secrets(settings)])
    started = records.utc_now()
    lock = re.sub(r"[^A-Za-z0-9_.-]", "_", f"runbook-{host.name}")
    with state.locked(opts.state_dir, lock):
        rb = Run(book, host, selection, opts, settings, redactor)
        mode = "check" if opts.check else ("yes" if opts.yes else "confirm")
        rb.show(f"{book.id} — {book.title(opts.lang)} @ {host.name} ({mode})")
        outcome, error = _phases(rb, host, opts)
        record = build_record(rb, outcome, error, started, mode)
        run_dir = records.write_run(opts.records_dir, "runbook", record, redactor)
    clean = redactor.obj(record)
    rb.show(f"{clean['headline']} (exit {clean['exit_code']})")
    opts.echo(str(run_dir))
    code = record["exit_code"]
    if opts.incident is not None:
        try:
            opts.attach_to_incident(opts.incident, clean)
        except Exception as exc:  # the run happened and is recorded; say what is missing
            rb.show(f"error: the run is recorded in {run_dir} but attaching it to incident "
                    f"{opts.incident} failed: {type(exc).__name__}: {exc}")
            code = max(code, th.EXIT_WARNING)
    return records.Outcome(code, run_dir, record)


def _phases(rb: Run, host: Host, opts: Options) -> tuple[str, str | None]:
    try:
        rb._conn = _open(host, opts)
    except Exception as exc:
        return "unreachable", f"{type(exc).__name__}: {exc}"
    try:
        rb.show(rb.text("诊断", "Diagnosis") + ":")
        diag = [rb.step("diagnosis", s) for s in kbmeta.steps(rb.book.meta, "diagnosis")]
        if any(s["status"] == "failed" for s in diag):
            return "failed", None
        if th.worst([s["status"] for s in diag]) in (th.NORMAL, th.UNKNOWN):
            return "nothing_to_do", None
        rb.show(rb.text("处置", "Remediation") + ":")
        fix = [rb.step("remediation", s) for s in kbmeta.steps(rb.book.meta, "remediation")]
        if opts.check:
            return "diagnosed", None
        changes = [c for s in fix for c in s["changes"]]
        if any(s["status"] == "failed" for s in fix):
            return "failed", None
        if changes and not any(c["outcome"] == "done" for c in changes):
            return "not_confirmed", None
        rb.show(rb.text("验证", "Verification") + ":")
        ver = [rb.step("verification", s) for s in kbmeta.steps(rb.book.meta, "verification")]
        if any(s["status"] == "failed" for s in ver):
            return "failed", None
        ok = th.worst([s["status"] for s in ver]) in (th.NORMAL, th.UNKNOWN)
        return ("resolved" if ok else "unresolved"), None
    finally:
        close = getattr(rb._conn, "close", None)
        if close:
            close()


def _exit(outcome: str, steps: list[dict[str, Any]]) -> int:
    def codes(phase: str) -> int:
        return th.exit_code([s["status"] if s["status"] != "failed" else th.CRITICAL
                             for s in steps if s["phase"] == phase])
    if outcome in ("resolved", "nothing_to_do"):
        return th.EXIT_OK
    if outcome in ("unreachable", "failed"):
        return th.EXIT_CRITICAL
    if outcome == "unresolved":
        return max(codes("verification"), th.EXIT_WARNING)
    return max(codes("diagnosis"), th.EXIT_WARNING)  # diagnosed, not_confirmed


_STATUS = {th.EXIT_OK: th.NORMAL, th.EXIT_WARNING: th.WARNING, th.EXIT_CRITICAL: th.CRITICAL}


def build_record(rb: Run, outcome: str, error: str | None, started, mode: str) -> dict:
    finished = records.utc_now()
    code = _exit(outcome, rb.steps)
    words = records.labels(rb.lang)["runbook"]
    detail = error or ""
    phase = "verification" if outcome in ("resolved", "unresolved") else "diagnosis"
    shown = [s for s in rb.steps if s["phase"] == phase and (s["summary"] or s["error"])]
    if shown:  # the step that says most about the fault: failed, then the worst status
        rank = {"failed": 4, th.CRITICAL: 3, th.WARNING: 2, th.NORMAL: 1}
        top = max(shown, key=lambda s: rank.get(s["status"], 0))
        detail = top["error"] or top["summary"]
    meta = rb.book.meta
    changes = [c for s in rb.steps for c in s["changes"]]
    return {
        "schema_version": SCHEMA_VERSION, "kind": "runbook",
        "run_id": records.run_id("runbook", started), "lang": rb.lang,
        "status": _STATUS[code], "exit_code": code,
        "time": records.time_block(started, finished, rb.opts.timezone),
        "operator": records.operator_name(rb.opts.operator),
        "headline": f"{rb.book.title(rb.lang)} @ {rb.host}: {words['outcomes'][outcome]}"
                    + (f" — {detail}" if detail else ""),
        "runbook": {"id": rb.book.id, "title": rb.book.title(rb.lang),
                    "classification": dict(meta.get("classification") or {}),
                    "owner": meta.get("owner"), "reviewed": str(meta.get("reviewed"))},
        "host": rb.host,
        "scope": {"inventory": list(rb.selection.sources), "limit": rb.selection.limit},
        "mode": mode,
        "incident": rb.opts.incident,
        "outcome": outcome,
        "error": error,
        "settings": rb.settings,
        "steps": rb.steps,
        "summary": {"steps": len(rb.steps),
                    "changes_done": sum(c["outcome"] == "done" for c in changes),
                    "changes_declined": sum(c["outcome"] == "declined" for c in changes),
                    "changes_planned": sum(c["outcome"] == "planned" for c in changes),
                    "changes_failed": sum(c["outcome"] == "failed" for c in changes)},
        "ops_revision": records.ops_revision(),
    }
