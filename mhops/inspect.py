"""Scheduled inspection: ``invoke inspect`` from host selection to exit code.

Owns the inspection run: select hosts, check every host's settings before touching
anything, hold the inspection lock, run the one collector per host (Fabric, or the
``mhops_inspect`` role through ansible-runner), classify, write the inspection
record, and only then commit the log cursors, so a failure at any step loses no
log lines and leaves no partial record.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhops import findings, records, remote, state
from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.inspect_config import collector_args
from mhops.inventory import Host, select
from mhops.redact import Redactor

COLLECTOR = Path(__file__).resolve().parent.parent / "library" / "mhops_collect.py"
SCHEMA_VERSION = 1
TRANSPORTS = ("fabric", "ansible")
# Collector keys kept in a host's record; anything Ansible adds (invocation, changed) is not.
_RAW_KEYS = ("hostname", "kernel", "collected_at", "duration_ms")


@dataclass
class Options:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    limit: str | None = None
    transport: str = "fabric"
    lang: str = "zh-CN"
    operator: str = ""
    notified: list[str] = field(default_factory=list)
    feedback_note: str = ""
    resolution: str = ""
    timezone: str = "Asia/Shanghai"
    forks: int = 50
    connect_timeout: int = 10
    vault_password_file: str | None = None
    keep_artifacts: bool = False
    echo: Callable[[str], None] = print


@dataclass
class Collected:
    host: str
    raw: dict[str, Any] | None
    error: str = ""
    unreachable: bool = False
    seconds: float = 0.0
    results: list[th.Result] | None = None

    def judge(self, thresholds: dict[str, dict[str, float]], lang: str) -> list[th.Result]:
        if self.results is None:
            if self.raw is not None:
                self.results = findings.classify_host(self.raw, thresholds, lang)
            elif self.unreachable:
                self.results = findings.unreachable(self.error, lang)
            else:
                self.results = findings.collector_failed(self.error, lang)
        return self.results


def run(opts: Options) -> records.Outcome:
    if opts.transport not in TRANSPORTS:
        raise MhopsError(f"unknown transport {opts.transport!r}; valid: {', '.join(TRANSPORTS)}")
    records.labels(opts.lang)  # an unknown language fails before any host is touched
    started = records.utc_now()
    selection = select(opts.inventory, opts.limit, opts.vault_password_file)
    plans = {h.name: collector_args(h) for h in selection.hosts}
    redactor = Redactor(secrets=selection.secrets)
    with state.locked(opts.state_dir, "inspect"):
        cursors = {h.name: state.load_cursors(opts.state_dir, h.name) for h in selection.hosts}
        progress = _Progress(plans, opts.echo, opts.lang)
        if opts.transport == "fabric":
            collected = _via_fabric(selection.hosts, plans, cursors, opts, redactor, progress)
        else:
            collected = _via_ansible(selection.hosts, opts, redactor, progress)
        _refuse_bad_logs(selection.hosts, collected)
        record = build_record(selection, plans, collected, opts, started)
        run_dir = records.write_run(opts.records_dir, "inspection", record, redactor)
        for name, c in collected.items():
            if c.raw is not None and isinstance(c.raw.get("cursors"), dict):
                state.save_cursors(opts.state_dir, name, c.raw["cursors"])
    _table(record, opts.echo, opts.lang)
    opts.echo(f"{run_dir}")
    return records.Outcome(exit_code=record["exit_code"], record_dir=run_dir, record=record)


class _Progress:
    """One line per host as its result arrives: its status and what is worst (redacted)."""

    def __init__(self, plans: dict[str, tuple], echo: Callable[[str], None], lang: str):
        self.plans, self.total, self.done, self.echo, self.lang = plans, len(plans), 0, echo, lang
        self.words = records.labels(lang)

    def __call__(self, c: Collected) -> None:
        self.done += 1
        results = c.judge(self.plans[c.host][1], self.lang)
        status = findings.host_status(results)
        worst = [r for r in results if r.status == status and status in findings.ABNORMAL]
        detail = "; ".join(" ".join(filter(None, (self.words["checks"].get(r.check, r.check),
                                                  r.target, r.explanation)))
                           for r in worst[:3])
        more = f" (+{len(worst) - 3})" if len(worst) > 3 else ""
        width = len(str(self.total))
        self.echo(f"[{self.done:>{width}}/{self.total}] {c.host:<20} "
                  f"{self.words['statuses'][status]:<8} {c.seconds:5.1f}s  {detail}{more}")


def _payload(args: dict[str, Any]) -> str:
    # The collector reads its arguments from MHOPS_ARGS when run as `python3 -`.
    return f"MHOPS_ARGS = {json.dumps(json.dumps(args))}\n" + COLLECTOR.read_text()


def _via_fabric(hosts, plans, cursors, opts: Options, redactor: Redactor,
                progress: _Progress) -> dict[str, Collected]:
    by_name: dict[str, Collected] = {}

    def command_for(h: Host) -> tuple[str, str, float]:
        args = {k: v for k, v in plans[h.name][0].items() if not k.startswith("_")}
        args["cursors"] = cursors[h.name]
        return remote.python_command(h), _payload(args), plans[h.name][0]["_timeout"]

    def done(o: remote.RemoteOutcome) -> None:
        c = Collected(o.host, None, error=redactor.text(o.error), seconds=o.seconds,
                       unreachable=o.status == remote.UNREACHABLE)
        if o.status == remote.OK:
            try:
                c.raw = redactor.obj(json.loads(o.stdout))
            except ValueError:
                c.error = redactor.text(f"collector printed no JSON: {o.stdout[-300:]!r}")
        by_name[o.host] = c
        progress(c)

    remote.run_many(list(hosts), command_for, forks=opts.forks,
                    connect_timeout=opts.connect_timeout, on_done=done)
    return by_name


def _via_ansible(hosts, opts: Options, redactor: Redactor,
                 progress: _Progress) -> dict[str, Collected]:
    from mhops import runner

    by_name: dict[str, Collected] = {}
    t0 = time.monotonic()

    def on_host(o: runner.HostOutcome) -> None:
        c = Collected(o.host, None, seconds=time.monotonic() - t0,
                       unreachable=o.status == runner.UNREACHABLE)
        if o.status == runner.OK:
            c.raw = {k: v for k, v in o.result.items() if k not in ("invocation", "changed")}
        else:
            c.error = o.message
        by_name[o.host] = c
        progress(c)

    keep = opts.records_dir / ".artifacts" if opts.keep_artifacts else None
    runner.run_playbook(
        "playbooks/inspect.yml", inventory=opts.inventory, limit=opts.limit,
        extravars={"mhops_inspect_cursor_commit": False,
                   "mhops_inspect_state_dir": str(Path(opts.state_dir).resolve())},
        forks=opts.forks, task_action="mhops_collect", redactor=redactor, on_host=on_host,
        keep_artifacts=keep,
        envvars={"ANSIBLE_TIMEOUT": str(opts.connect_timeout)})
    for h in hosts:  # a host Ansible never reported on is not silently dropped
        by_name.setdefault(h.name, Collected(h.name, None, error="no result from Ansible"))
    return by_name


def _refuse_bad_logs(hosts: tuple[Host, ...], collected: dict[str, Collected]) -> None:
    """A configured log that is missing or unreadable is bad input: stop before writing."""
    problems = []
    for h in hosts:
        raw = collected[h.name].raw
        if raw is None:
            continue
        for log in raw.get("logs") or []:
            if log.get("kind") != "system" and log.get("error"):
                path, line = h.where("mhops_inspect_logs")
                where = f" (configured in {path}:{line})" if path else ""
                problems.append(f"host {h.name}: log file {log.get('path')}: "
                                f"{log['error']}{where}")
    if problems:
        raise MhopsError("; ".join(problems) + " — nothing was written")


def build_record(selection, plans, collected: dict[str, Collected], opts: Options,
            started) -> dict[str, Any]:
    lang = opts.lang
    hosts_out, events, content, statuses = [], [], [], []
    for h in selection.hosts:
        c = collected[h.name]
        results = c.judge(plans[h.name][1], lang)
        for r in results:  # suggested runbook commands name this host
            r.resolution = th.for_host(r.resolution, h.name)
        status = findings.host_status(results)
        entry = {"host": h.name, "groups": list(h.groups), "reachable": not c.unreachable,
                 "status": status, "error": c.error or None,
                 "results": [r.as_dict() for r in results]}
        entry.update({k: (c.raw or {}).get(k) for k in _RAW_KEYS})
        hosts_out.append(entry)
        for r in results:
            statuses.append(r.status)
            if r.check not in content:
                content.append(r.check)
            if r.status in findings.ABNORMAL:
                ev = {"host": h.name, "check": r.check, "target": r.target,
                      "status": r.status, "explanation": r.explanation,
                      "resolution": r.resolution, "samples": r.extra.get("samples", [])}
                events.append(ev)
    unreachable = sum(1 for c in collected.values() if c.unreachable)
    finished = records.utc_now()
    by_host = []
    for e in hosts_out:
        counts = {s: sum(1 for r in e["results"] if r["status"] == s) for s in th.STATUSES}
        by_host.append({"host": e["host"], "status": e["status"], **counts})
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "inspection",
        "run_id": records.run_id("inspection", started),
        "lang": lang,
        "status": th.worst([e["status"] for e in hosts_out]),
        "exit_code": th.exit_code(statuses, unreachable),
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "scope": {"inventory": list(selection.sources), "limit": selection.limit,
                  "hosts": selection.names, "groups": selection.groups},
        "content": content,
        "hosts": hosts_out,
        "summary": {
            "hosts_total": len(hosts_out), "hosts_unreachable": unreachable,
            "counts": {s: statuses.count(s) for s in th.STATUSES},
            "by_host": by_host,
        },
        "events": events,
        "feedback": {"notified": list(opts.notified), "note": opts.feedback_note or None},
        "resolution": opts.resolution or None,
        "ops_revision": records.ops_revision(),
        "transport": opts.transport,
    }


def _table(record: dict[str, Any], echo: Callable[[str], None], lang: str) -> None:
    words = records.labels(lang)
    st = words["statuses"]
    echo("")
    echo(f"{words['host']:<20} {words['status']:<10} " + " ".join(
        f"{st[s]:>8}" for s in th.STATUSES))
    for row in record["summary"]["by_host"]:
        echo(f"{row['host']:<20} {st[row['status']]:<10} " + " ".join(
            f"{row[s]:>8}" for s in th.STATUSES))
    echo(f"{words['overall']}: {st[record['status']]} (exit {record['exit_code']}), "
         f"{len(record['events'])} {words['events']}")
