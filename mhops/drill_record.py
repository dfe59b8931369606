"""The DR drill record (灾难恢复演练记录, kind ``drill``) and the timing of its steps.

Owns the step list (start time, duration, status and detail of each step, one line
per step for the operator as it finishes) and turning a finished drill into the
record: backup used and where it came from, target, steps, verification results,
RTO/RPO against their targets, teardown, outcome and reason, operator, exit code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from mhops import records
from mhops.drill_rules import BAD, EXIT, FAILED, OK, SKIPPED, WARNING, against_target, outcome_of

KIND = "drill"
SCHEMA_VERSION = 1


class Interrupted(BaseException):
    """SIGTERM/SIGHUP during a drill: unwind like Ctrl-C so teardown runs."""


def reason_of(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (SIGINT)"
    return str(exc) or type(exc).__name__


class Steps:
    """Times of each step for the record, and a line per step for the operator."""

    def __init__(self, echo: Callable[[str], None], words: dict[str, str]):
        self.items: list[dict[str, Any]] = []
        self.echo, self.words = echo, words

    @contextmanager
    def __call__(self, step: str) -> Iterator[dict[str, Any]]:
        item = {"step": step, "started_utc": records.iso(records.utc_now()),
                "duration_s": None, "status": OK, "detail": ""}
        self.items.append(item)
        t0 = time.monotonic()
        try:
            yield item
        except BaseException as exc:
            item["status"] = BAD
            item["detail"] = item["detail"] or reason_of(exc)
            raise
        finally:
            item["duration_s"] = round(time.monotonic() - t0, 3)
            self.echo(f"{self.words.get(item['step'], item['step']):<20} "
                      f"{item['status']:<8} {item['duration_s']:7.2f}s  {item['detail']}")

    def skip(self, step: str, why: str) -> None:
        self.items.append({"step": step, "started_utc": None, "duration_s": None,
                           "status": SKIPPED, "detail": why})


def build_record(ctx: Any) -> dict[str, Any]:
    """The record of a finished drill; `ctx` is the drill's context (mhops.drill)."""
    opts, m = ctx.opts, ctx.manifest or {}
    finished = records.utc_now()
    rto_s = round(ctx.verified_at - ctx.t0, 3) if ctx.verified_at else None
    snapshot = records.parse_time(m.get("started_at")) or records.parse_time(
        (m.get("canary") or {}).get("written_at"))
    if snapshot is None and ctx.parsed:
        snapshot = datetime.strptime(ctx.parsed[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    rpo_s = round((ctx.started - snapshot).total_seconds(), 1) if snapshot else None
    rto = {"seconds": rto_s, "target_seconds": opts.rto_target_minutes * 60,
           "status": against_target(rto_s, opts.rto_target_minutes * 60)}
    rpo = {"seconds": rpo_s, "target_seconds": opts.rpo_target_hours * 3600,
           "status": against_target(rpo_s, opts.rpo_target_hours * 3600),
           "backup_taken_at": records.iso(snapshot) if snapshot else None}
    v = ctx.verification
    checks = [s["status"] for s in ctx.steps.items if s["step"] != "teardown"]
    if not ctx.verified_at:
        checks.append(BAD)
    outcome = outcome_of(checks, rto["status"], rpo["status"])
    reason = ctx.reason
    if outcome == WARNING:
        reason = "; ".join(f"{k.upper()} over target" for k, x in (("rto", rto), ("rpo", rpo))
                           if x["status"] == WARNING)
    if not (ctx.teardown.get("instance_stopped") and ctx.teardown.get("folder_removed")):
        outcome = FAILED
        reason = "; ".join(filter(None, [reason, "teardown incomplete"]))
    staged = ctx.staged
    words = records.labels(opts.lang)[KIND]
    name = (m.get("name") or (ctx.parsed[0] if ctx.parsed else None)
            or (ctx.entry or {}).get("name"))
    headline = f"{words['title']}: {name or staged.file or '-'} — {words['outcomes'][outcome]}"
    if reason:
        headline += f" ({reason[:160]})"
    return {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "run_id": records.run_id(KIND, ctx.started), "lang": opts.lang,
        "status": outcome, "exit_code": EXIT[outcome], "headline": headline,
        "time": records.time_block(ctx.started, finished, opts.timezone)
        | {"duration_s": round(time.monotonic() - ctx.t0, 3)},
        "operator": records.operator_name(opts.operator),
        "backup": {"path": staged.source_path, "file": staged.file,
                   "db_host": staged.host, "name": name,
                   "engine": ctx.engine, "database": m.get("database"),
                   "format": m.get("format"), "size": m.get("size"),
                   "sha256_manifest": m.get("sha256"), "sha256_actual": ctx.sha256,
                   "started_at": m.get("started_at"), "finished_at": m.get("finished_at"),
                   "server_version": m.get("server_version"), "tool": m.get("tool"),
                   "host": m.get("host"), "chosen": "latest" if opts.backup in ("", "latest")
                   else "path"},
        "staging": {"db_host": staged.host, "transfer": staged.transfer, "via": staged.via,
                    "drill_host": "control node", "staged_path": staged.path,
                    "fetch_checksum_sha1": staged.checksum, "marked_in_use": staged.marked,
                    "released": staged.released, "error": staged.error},
        "target": {"kind": "scratch", "engine": ctx.engine, "host": ctx.target.host,
                   "port": ctx.target.port, "folder_parent": ctx.target.data_dir,
                   "version": ctx.instance.version if ctx.instance else None,
                   "jobs": opts.jobs if ctx.engine == "postgresql" else 1},
        "steps": ctx.steps.items,
        "verification": {"instance": v.get("instance"), "tables": v.get("tables", []),
                         "canary": v.get("canary"), "checksums": v.get("checksums", []),
                         "smoke": v.get("smoke")},
        "rto": rto, "rpo": rpo, "teardown": ctx.teardown,
        "outcome": outcome, "reason": reason, "interrupted": ctx.interrupted,
        "ops_revision": records.ops_revision(),
    }
