"""Database backups: ``invoke backup.run`` and ``invoke backup.check``.

Owns the backup run (select the hosts holding ``mhops_databases``, check the entries,
hold the backup lock, run the ``mhops_backup`` role on those hosts through
ansible-runner, record each database's file, size, duration, tables and outcome) and
the backup check (newest backup age against the RPO target, size against the previous
backups, checksum against the manifest, empty or truncated files, errors in the backup
job's log; Nagios-style OK/WARNING/CRITICAL per item). The file layout and manifest
are the shared contract in ``roles/mhops_backup/library/mhops_backup_files.py``.

The checking rules that need no I/O are the pure functions at the top of this module.
"""

from __future__ import annotations

import importlib.util
import json
import re
import statistics
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mhops import records, state
from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.inventory import Host, select
from mhops.redact import Redactor

SCHEMA_VERSION = 1
ENGINES = ("postgresql", "mariadb")
COMPRESSIONS = ("none", "gzip", "zstd")
EXTS = ("dump", "sql", "sql.gz", "sql.zst")
NAGIOS = {th.NORMAL: "OK", th.WARNING: "WARNING", th.CRITICAL: "CRITICAL", th.UNKNOWN: "UNKNOWN"}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_STAMP = re.compile(r"-(\d{8}T\d{6}Z)\.(?:dump|sql|sql\.gz|sql\.zst)$")
PROBE = Path(__file__).resolve().parent.parent / "library" / "mhops_backup_probe.py"

DEFAULT_RPO_HOURS = {"warning": 26.0, "critical": 50.0}
DEFAULT_SHRINK = {"warning": 0.5, "critical": 0.2}
DEFAULT_LOG_MATCHES = {"warning": 1.0, "critical": 10.0}
DEFAULT_LOG_PATTERNS = {"error": r"(?i)\b(error|fatal|failed|failure|denied)\b"}


# ---------------------------------------------------------------- pure checking rules

def _load_probe():
    spec = importlib.util.spec_from_file_location("mhops_backup_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The probe (stdlib only, it runs on database hosts) is the one copy of the rules that
# read backup files; they are used from here for folders on this machine.
_probe = _load_probe()
has_footer = _probe.has_footer
count_matches = _probe.count_matches
integrity = _probe.integrity


def age_status(age_hours: float | None, warning: float, critical: float) -> str:
    """Newest backup age against the RPO target; no backup at all is critical."""
    if age_hours is None or age_hours >= critical:
        return th.CRITICAL
    return th.WARNING if age_hours >= warning else th.NORMAL


def size_anomaly(newest: int, previous: list[int], warning: float = 0.5,
                 critical: float = 0.2, window: int = 5) -> tuple[str, float | None]:
    """(status, ratio of `newest` to the median of the last `window` previous sizes).

    `previous` is oldest first. A sudden shrink below `warning` (`critical`) times the
    median is an anomaly; growth never is. Without history the rule cannot judge.
    """
    recent = [s for s in previous[-window:] if s > 0]
    if not recent:
        return th.UNKNOWN, None
    ratio = newest / statistics.median(recent)
    if ratio < critical:
        return th.CRITICAL, ratio
    if ratio < warning:
        return th.WARNING, ratio
    return th.NORMAL, ratio


def compare_manifest(manifest: dict[str, Any] | None, *, basename: str, size: int,
                     sha256: str | None, ours: bool) -> tuple[str, str]:
    """(status, reason) of a backup file against its manifest.

    A backup of ours without a manifest is incomplete (the manifest is written last);
    another tool's backup without one simply has nothing to compare with.
    """
    if manifest is None:
        if ours:
            return th.CRITICAL, "no manifest: the backup is incomplete"
        return th.UNKNOWN, "not applicable: no manifest (backup made by another tool)"
    if manifest.get("file") not in (None, basename):
        return th.CRITICAL, f"manifest names another file ({manifest.get('file')})"
    if manifest.get("size") is not None and manifest["size"] != size:
        return th.CRITICAL, f"size {size} differs from the manifest's {manifest['size']}"
    if not manifest.get("sha256"):
        return th.UNKNOWN, "the manifest holds no sha256"
    if sha256 != manifest["sha256"]:
        return th.CRITICAL, "sha256 differs from the manifest: the file changed or is corrupt"
    return th.NORMAL, "sha256 and size match the manifest"


def level_status(value: float, levels: dict[str, float], higher_is_worse: bool = True) -> str:
    def worse(limit: float | None) -> bool:
        if limit is None:
            return False
        return value >= limit if higher_is_worse else value < limit
    if worse(levels.get("critical")):
        return th.CRITICAL
    return th.WARNING if worse(levels.get("warning")) else th.NORMAL


def delta_seconds(delta: str | None) -> float | None:
    """ansible's command `delta` ("0:01:02.345678") in seconds."""
    m = re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", str(delta or ""))
    return round(int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3]), 3) if m else None


# ---------------------------------------------------------------- shared helpers

def _levels(raw: Any, default: dict[str, float], key: str,
            higher_is_worse: bool = True) -> dict[str, float]:
    if raw is None:
        return dict(default)
    if not isinstance(raw, dict) or set(raw) - {"warning", "critical"}:
        raise MhopsError(f"backup.{key} must be a mapping with warning and/or critical, "
                         f"got {raw!r}")
    out = dict(default)
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise MhopsError(f"backup.{key}.{k} must be a non-negative number, got {v!r}")
        out[k] = float(v)
    w, c = out["warning"], out["critical"]
    if (c < w) if higher_is_worse else (c > w):
        raise MhopsError(f"backup.{key}: critical ({c:g}) and warning ({w:g}) are in the "
                         "wrong order")
    return out


def database_entries(host: Host, only: list[str] | tuple[str, ...] = ()) -> list[dict]:
    """The checked `mhops_databases` entries of `host` (all, or those named in `only`)."""
    raw = host.vars.get("mhops_databases") or []
    path, line = host.where("mhops_databases")
    if not isinstance(raw, list):
        raise MhopsError(f"host {host.name}: mhops_databases must be a list", path=path,
                         line=line)
    out = []
    for i, entry in enumerate(raw):
        where = host.where(f"mhops_databases[{i}]")
        p, ln = where if where[0] else (path, line)
        if not isinstance(entry, dict):
            raise MhopsError(f"host {host.name}: mhops_databases[{i}] must be a mapping",
                             path=p, line=ln)
        name = str(entry.get("name", ""))
        problems = []
        if not _NAME.match(name):
            problems.append("name must be letters, digits, '_', '.' or '-'")
        if entry.get("engine") not in ENGINES:
            problems.append(f"engine must be one of {', '.join(ENGINES)}, "
                            f"got {entry.get('engine')!r}")
        if not entry.get("database"):
            problems.append("database is missing")
        bdir = entry.get("backup_dir")
        if bdir is not None and not str(bdir).startswith("/"):
            problems.append(f"backup_dir must be an absolute path, got {bdir!r}")
        # socket and data_dir let restore drills recognise production by path too.
        unknown = set(entry) - {"name", "engine", "host", "port", "user", "password",
                                "database", "production", "backup_dir", "socket", "data_dir"}
        if unknown:
            problems.append(f"unknown keys {', '.join(sorted(unknown))}")
        if problems:
            raise MhopsError(f"host {host.name}: mhops_databases[{i}] ({name or '?'}): "
                             + "; ".join(problems), path=p, line=ln)
        if not only or name in only:
            out.append(entry)
    return out


def _selected(inventory: list[str], limit: str | None, only: list[str],
              vault_password_file: str | None):
    selection = select(inventory, limit, vault_password_file)
    chosen = [(h, database_entries(h, only)) for h in selection.hosts]
    chosen = [(h, dbs) for h, dbs in chosen if dbs]
    found = {d["name"] for _, dbs in chosen for d in dbs}
    missing = [n for n in only if n not in found]
    if missing:
        raise MhopsError(f"no mhops_databases entry named {', '.join(missing)} on the selected "
                         f"hosts ({', '.join(selection.names)})")
    if not chosen:
        raise MhopsError("none of the selected hosts has mhops_databases "
                         f"({', '.join(selection.names)})")
    return selection, chosen


def locate(inventory: list[str], names: list[str], vault_password_file: str | None = None
           ) -> list[tuple[Host, dict]]:
    """(host, entry) of every `mhops_databases` entry named in `names`, over the whole
    inventory; a name no host has is an error."""
    _, chosen = _selected(inventory, None, list(names), vault_password_file)
    return [(h, d) for h, dbs in chosen for d in dbs]


# ---------------------------------------------------------------- backup.run

@dataclass
class RunOptions:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    limit: str | None = None
    databases: list[str] = field(default_factory=list)
    backup_dir: str = "/var/backups/mhops"
    keep: int = 7
    compress: str = "none"
    check: bool = False
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    forks: int = 10
    vault_password_file: str | None = None
    echo: Callable[[str], None] = print


def run(opts: RunOptions) -> records.Outcome:
    """Back up the selected databases on their hosts, apply retention, write the record."""
    if isinstance(opts.keep, bool) or not isinstance(opts.keep, int) or opts.keep < 1:
        raise MhopsError(f"backup.keep must be a positive integer, got {opts.keep!r}")
    if not str(opts.backup_dir).startswith("/"):
        raise MhopsError(f"backup.dir must be an absolute path on the database hosts, "
                         f"got {opts.backup_dir!r}")
    if opts.compress not in COMPRESSIONS:
        raise MhopsError(f"backup.compress must be one of {', '.join(COMPRESSIONS)}, "
                         f"got {opts.compress!r}")
    records.labels(opts.lang)
    started = records.utc_now()
    selection, chosen = _selected(opts.inventory, opts.limit, opts.databases,
                                  opts.vault_password_file)
    redactor = Redactor(secrets=selection.secrets)
    tokens = {d["name"]: uuid.uuid4().hex for _, dbs in chosen for d in dbs}
    with state.locked(opts.state_dir, "backup"):
        from mhops import runner

        outcomes: dict[str, runner.HostOutcome] = {}
        pb = runner.run_playbook(
            "playbooks/backup.yml", inventory=opts.inventory,
            limit=",".join(h.name for h, _ in chosen),
            extravars={"mhops_backup_only": list(opts.databases),
                       "mhops_backup_dir": str(opts.backup_dir),
                       "mhops_backup_keep": int(opts.keep),
                       "mhops_backup_compress": opts.compress,
                       "mhops_backup_plan_only": bool(opts.check),
                       "mhops_backup_tokens": tokens},
            forks=opts.forks, task_action="ansible.builtin.debug", redactor=redactor,
            on_host=lambda o: outcomes.__setitem__(o.host, o))
        entries = _run_entries(chosen, outcomes, pb)
        record = _run_record(selection, entries, opts, started)
        run_dir = records.write_run(opts.records_dir, "backup_run", record, redactor)
    _echo_run(record, opts.echo)
    opts.echo(str(run_dir))
    return records.Outcome(record["exit_code"], run_dir, record)


def _run_entries(chosen, outcomes, pb) -> list[dict[str, Any]]:
    out = []
    for host, dbs in chosen:
        o = outcomes.get(host.name)
        msg = (o.result.get("msg") if o and o.status == "ok" else None) or {}
        got = {r["name"]: r for r in msg.get("results", [])} if isinstance(msg, dict) else {}
        for d in dbs:
            r = dict(got.get(d["name"]) or {})
            if not r:
                why = o.message if o else f"no result from Ansible ({pb.status})"
                r = {"outcome": "failed", "error": why}
            tables = r.get("tables") or {}
            size = r.get("size")
            started = records.parse_time(r.get("started_at"))
            finished = records.parse_time(r.get("finished_at"))
            out.append({
                "host": host.name, "name": d["name"], "engine": d["engine"],
                "database": d["database"], "production": bool(d.get("production", False)),
                "db_endpoint": f"{d.get('host', '127.0.0.1')}:{d.get('port', '')}",
                "outcome": r.get("outcome", "failed"),
                "status": {"ok": th.NORMAL, "planned": th.NORMAL}.get(r.get("outcome"),
                                                                       th.CRITICAL),
                "folder": r.get("folder"),
                "file": (Path(r["path"]).name if r.get("outcome") == "ok" and r.get("path")
                         else None),
                "planned_file": r.get("planned_file"),
                "size": int(size) if size not in (None, "") else None,
                "sha256": r.get("sha256"),
                "started_at": r.get("started_at"), "finished_at": r.get("finished_at"),
                "duration_s": ((finished - started).total_seconds()
                               if started and finished else None),
                "dump_seconds": delta_seconds(r.get("dump_seconds")),
                "server_version": r.get("server_version"),
                "compression": r.get("compression"),
                "tables_counted": r.get("tables_counted"),
                "tables_count": len(tables), "rows_total": sum(int(v) for v in tables.values()),
                "tables": {k: int(v) for k, v in tables.items()},
                "retention": r.get("retention") or {"deleted": [], "kept": [], "in_use": [],
                                                    "incomplete": []},
                "error": r.get("error"), "failed_task": r.get("failed_task"),
            })
    return out


def _run_record(selection, entries, opts: RunOptions, started) -> dict[str, Any]:
    finished = records.utc_now()
    statuses = [e["status"] for e in entries]
    events = [{"host": e["host"], "name": e["name"], "status": e["status"],
               "explanation": e["error"] or "",
               "resolution": _RUN_FIX[opts.lang]} for e in entries if e["outcome"] == "failed"]
    return {
        "schema_version": SCHEMA_VERSION, "kind": "backup_run",
        "run_id": records.run_id("backup_run", started), "lang": opts.lang,
        "check_mode": bool(opts.check),
        "status": th.worst(statuses), "exit_code": th.exit_code(statuses),
        "headline": _run_headline(opts.lang, entries, bool(opts.check)),
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "scope": {"inventory": list(selection.sources), "limit": selection.limit,
                  "hosts": sorted({e["host"] for e in entries}),
                  "databases": [e["name"] for e in entries]},
        "settings": {"backup_dir": opts.backup_dir, "keep": opts.keep,
                     "compress": opts.compress},
        "backups": entries,
        "summary": {"total": len(entries),
                    "ok": sum(e["outcome"] == "ok" for e in entries),
                    "failed": sum(e["outcome"] == "failed" for e in entries),
                    "planned": sum(e["outcome"] == "planned" for e in entries),
                    "bytes": sum(e["size"] or 0 for e in entries),
                    "deleted": sum(len(e["retention"]["deleted"]) for e in entries)},
        "events": events,
        "ops_revision": records.ops_revision(),
    }


def _run_headline(lang: str, entries: list[dict[str, Any]], check: bool) -> str:
    ok = sum(e["outcome"] == "ok" for e in entries)
    failed = sum(e["outcome"] == "failed" for e in entries)
    if lang == "zh-CN":
        if check:
            return f"数据库备份（仅计划）：{len(entries)} 个数据库"
        return f"数据库备份：{ok} 个成功，{failed} 个失败"
    if check:
        return f"Database backup (plan only): {len(entries)} database(s)"
    return f"Database backup: {ok} done, {failed} failed"


_RUN_FIX = {
    "zh-CN": "查看错误信息（数据库连接、权限、磁盘空间），修复后重新执行 invoke backup.run；"
             "未完成的临时文件已删除。",
    "en": "Read the error (connection, privileges, disk space), fix it and run "
          "invoke backup.run again; the unfinished temp file was removed.",
}


def _echo_run(record: dict[str, Any], echo: Callable[[str], None]) -> None:
    for e in record["backups"]:
        if e["outcome"] == "planned":
            echo(f"PLAN {e['host']} {e['name']}: would dump {e['engine']} database "
                 f"{e['database']} to {e['folder']}/{e['planned_file']}; retention would "
                 f"delete {', '.join(e['retention']['deleted']) or 'nothing'}")
        elif e["outcome"] == "ok":
            echo(f"OK   {e['host']} {e['name']}: {e['file']} {e['size']} bytes, "
                 f"{e['tables_count']} tables, {e['rows_total']} rows, "
                 f"{e['dump_seconds']} s; deleted {', '.join(e['retention']['deleted']) or '-'}")
        else:
            echo(f"FAIL {e['host']} {e['name']}: {e['error']}")
    if record["check_mode"]:
        echo("(check mode: nothing was written, dumped or deleted)")


# ---------------------------------------------------------------- backup.check

@dataclass
class CheckTarget:
    name: str
    folder: Path
    glob: str
    engine: str | None = None
    ours: bool = True
    host: str = ""        # an inventory host; "" is a folder on this machine


@dataclass
class CheckOptions:
    records_dir: Path
    inventory: list[str] = field(default_factory=list)
    limit: str | None = None
    databases: list[str] = field(default_factory=list)
    backup_dir: str = "/var/backups/mhops"
    external: list[CheckTarget] = field(default_factory=list)
    rpo_hours: dict[str, float] | None = None
    size_shrink: dict[str, float] | None = None
    size_window: int = 5
    log: str | None = None
    log_patterns: dict[str, str] | None = None
    log_matches: dict[str, float] | None = None
    log_tail_bytes: int = 262144
    deep: bool = True
    forks: int = 10
    connect_timeout: int = 10
    probe_timeout: int = 3600
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    vault_password_file: str | None = None
    now: datetime | None = None
    echo: Callable[[str], None] = print


def external_target(folder: str, glob: str, engine: str | None = None,
                    name: str | None = None) -> CheckTarget:
    """A folder of backups made by another tool on this machine, matched by a glob."""
    if engine is not None and engine not in ENGINES:
        raise MhopsError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    p = Path(folder)
    if not p.is_dir():
        raise MhopsError("backup folder does not exist or is not a folder", path=str(p))
    return CheckTarget(name=name or p.name, folder=p, glob=glob, engine=engine, ours=False,
                       host="")


def _targets(opts: CheckOptions) -> tuple[list[CheckTarget], dict[str, Host], Any]:
    """External folders (host ""), then every selected database's folder on its host."""
    targets = list(opts.external)
    hosts: dict[str, Host] = {}
    selection = None
    if opts.inventory and (opts.databases or not targets):
        selection, chosen = _selected(opts.inventory, opts.limit, opts.databases,
                                      opts.vault_password_file)
        for h, dbs in chosen:
            hosts[h.name] = h
            for d in dbs:
                folder = Path(d.get("backup_dir") or opts.backup_dir) / d["name"]
                targets.append(CheckTarget(d["name"], folder, f"{d['name']}-*", d["engine"],
                                           True, h.name))
    if not targets:
        raise MhopsError("nothing to check: give an inventory with mhops_databases or --dir")
    return targets, hosts, selection


def _probe_args(targets: list[CheckTarget], log: str | None, patterns: dict[str, re.Pattern],
                opts: CheckOptions) -> dict[str, Any]:
    return {"deep": bool(opts.deep),
            "targets": [{"name": t.name, "folder": str(t.folder), "glob": t.glob,
                         "ours": t.ours, "engine": t.engine} for t in targets],
            "log": {"path": log, "tail_bytes": int(opts.log_tail_bytes),
                    "patterns": {k: v.pattern for k, v in patterns.items()}} if log else None}


def _payload(args: dict[str, Any]) -> str:
    # The probe reads its arguments from MHOPS_ARGS when run as `python3 -`.
    return f"MHOPS_ARGS = {json.dumps(json.dumps(args))}\n" + PROBE.read_text()


def _probe_hosts(targets, hosts: dict[str, Host], patterns, opts: CheckOptions,
                 redactor: Redactor) -> dict[str, dict[str, Any]]:
    """One probe per database host (Fabric, or a local process): {host: result or error}."""
    from mhops import remote

    by_host: dict[str, list[CheckTarget]] = {}
    for t in targets:
        if t.host:
            by_host.setdefault(t.host, []).append(t)
    if not by_host:
        return {}
    out: dict[str, dict[str, Any]] = {}

    def command_for(h: Host) -> tuple[str, str, float]:
        log = h.vars.get("mhops_backup_log") or opts.log
        args = _probe_args(by_host[h.name], str(log) if log else None, patterns, opts)
        return remote.python_command(h), _payload(args), opts.probe_timeout

    def done(o) -> None:
        got: dict[str, Any] = {"error": redactor.text(o.error) if o.error else None,
                               "unreachable": o.status == remote.UNREACHABLE,
                               "seconds": round(o.seconds, 3)}
        if o.status == remote.OK:
            try:
                got.update(json.loads(o.stdout))
            except ValueError:
                got["error"] = redactor.text(f"probe printed no JSON: {o.stdout[-300:]!r}")
        out[o.host] = got

    remote.run_many([hosts[n] for n in by_host], command_for, forks=opts.forks,
                    connect_timeout=opts.connect_timeout, on_done=done)
    return out


_FIX = {
    "exists": ("未找到任何备份：确认备份任务已配置并执行（invoke backup.run），检查备份目录。",
               "No backups found: check the backup job is scheduled and ran (invoke backup.run)."),
    "age": ("最新备份超过 RPO 目标：检查备份任务调度和日志，立即补做一次备份。",
            "The newest backup is older than the RPO target: check the schedule and log, "
            "take a backup now."),
    "size": ("备份大小骤减：核对是否有表被清空或备份中途失败，对比清单中的行数。",
             "The backup shrank suddenly: check for emptied tables or a failed dump; compare "
             "the manifest row counts."),
    "checksum": ("校验和与清单不符：该备份已损坏或被修改，不可用于恢复；立即重新备份并排查存储。",
                 "Checksum differs from the manifest: the backup is corrupt; take a new one "
                 "and check the storage."),
    "integrity": ("备份文件为空或被截断：不可用于恢复；查看备份日志并重新备份。",
                  "The backup is empty or truncated: it cannot be restored; read the log and "
                  "take a new one."),
    "log": ("备份日志中有错误：查看样例行定位原因并处理。",
            "The backup log has errors: read the sample lines and fix the cause."),
    "reach": ("无法读取数据库主机上的备份：检查 SSH 连接、主机密钥和 Python，然后重新检查。",
              "The backups on the database host could not be read: check SSH, the host key "
              "and Python there, then check again."),
}


def _item(check: str, target: str, status: str, explanation: str, lang: str,
          value: Any = None, unit: str = "", **extra: Any) -> dict[str, Any]:
    fix = _FIX.get(check, ("", ""))
    return {"check": check, "target": target, "status": status, "nagios": NAGIOS[status],
            "value": value, "unit": unit, "explanation": explanation,
            "resolution": (fix[0] if lang == "zh-CN" else fix[1])
            if status in (th.WARNING, th.CRITICAL) else "", **extra}


def check_target(t: CheckTarget, got: dict[str, Any], opts: CheckOptions, now: datetime,
                 rpo: dict[str, float], shrink: dict[str, float]) -> dict[str, Any]:
    """The Nagios items of one backup folder from what the probe read there."""
    lang = opts.lang
    files = got.get("files") or []
    where = f"{t.host}:{t.folder}" if t.host else str(t.folder)
    out: dict[str, Any] = {"name": t.name, "host": t.host or "localhost", "engine": t.engine,
                           "folder": str(t.folder), "glob": t.glob,
                           "source": "mhops" if t.ours else "external",
                           "files_count": len(files), "newest": None, "items": []}
    items = out["items"]
    if got.get("error") and not files:
        items.append(_item("exists", t.name, th.CRITICAL, f"{where}: {got['error']}", lang,
                           value=0))
    if not files:
        if not items:
            items.append(_item("exists", t.name, th.CRITICAL,
                               f"no backup in {where} matching {t.glob}", lang, value=0))
        out["status"] = th.CRITICAL
        return out
    newest = files[-1]
    probed = got.get("newest") or {}
    when = datetime.fromtimestamp(float(newest["when"]), UTC)
    age_raw = (now - when).total_seconds() / 3600
    age_h = round(age_raw, 2)
    manifest = newest.get("manifest")
    out["newest"] = {"file": newest["file"], "size": newest["size"],
                     "time": records.iso(when.replace(microsecond=0)),
                     "age_hours": age_h,
                     "compression": (manifest or {}).get("compression"),
                     "tables_counted": (manifest or {}).get("tables_counted"),
                     "tables": len((manifest or {}).get("tables") or {}) or None}
    st = age_status(age_raw, rpo["warning"], rpo["critical"])
    items.append(_item("age", newest["file"], st,
                       f"{age_h} h (RPO {rpo['warning']:g}/{rpo['critical']:g} h)", lang,
                       value=age_h, unit="h", warning=rpo["warning"],
                       critical=rpo["critical"]))
    # Only backups stored the same way compare: switching on compression is no shrink.
    suffix = newest["file"][len(_probe.stem_of(newest["file"])):]
    earlier = [f["size"] for f in files[:-1] if f["file"].endswith(suffix)]
    st, ratio = size_anomaly(newest["size"], earlier, shrink["warning"], shrink["critical"],
                             opts.size_window)
    prev = [s for s in earlier if s > 0][-opts.size_window:]
    text = (f"{newest['size']} bytes = {ratio:.0%} of the median of the previous {len(prev)} "
            f"({int(statistics.median(prev))} bytes)" if ratio is not None
            else f"{newest['size']} bytes; no earlier backup to compare with")
    items.append(_item("size", newest["file"], st, text, lang, value=newest["size"], unit="B",
                       ratio=None if ratio is None else round(ratio, 3)))
    sha = probed.get("sha256")
    st, why = compare_manifest(manifest, basename=newest["file"], size=newest["size"],
                               sha256=sha, ours=t.ours)
    if newest.get("manifest_error"):
        st, why = th.CRITICAL, newest["manifest_error"]
    items.append(_item("checksum", newest["file"], st, why, lang, value=sha))
    integ = probed.get("integrity") or {"status": th.CRITICAL,
                                        "reason": "the probe did not read the newest backup"}
    items.append(_item("integrity", newest["file"], integ["status"], integ["reason"], lang,
                       value=newest["size"], unit="B"))
    out["status"] = th.worst([i["status"] for i in items])
    return out


def _unreachable(t: CheckTarget, error: str, lang: str) -> dict[str, Any]:
    item = _item("reach", t.host, th.CRITICAL,
                 f"{t.host}: backups in {t.folder} could not be read: {error}", lang)
    return {"name": t.name, "host": t.host, "engine": t.engine, "folder": str(t.folder),
            "glob": t.glob, "source": "mhops" if t.ours else "external", "files_count": 0,
            "newest": None, "items": [item], "status": th.CRITICAL}


def log_item(scan: dict[str, Any], host: str, levels: dict[str, float], tail_bytes: int,
             lang: str) -> dict[str, Any]:
    """The Nagios item of a backup job log the probe scanned."""
    target = f"{host}:{scan['path']}" if host else scan["path"]
    if scan.get("error"):
        return _item("log", target, th.CRITICAL, scan["error"], lang, value=None, host=host,
                     samples=[], counts={})
    st = level_status(scan["total"], levels)
    return _item("log", target, st, ", ".join(f"{k}: {v}" for k, v in scan["counts"].items())
                 + f" (last {tail_bytes} bytes)", lang, value=scan["total"],
                 warning=levels["warning"], critical=levels["critical"], host=host,
                 samples=scan["samples"], counts=scan["counts"])


def check(opts: CheckOptions) -> records.Outcome:
    """Check backups of the selected databases (on their hosts) and/or local folders."""
    records.labels(opts.lang)
    rpo = _levels(opts.rpo_hours, DEFAULT_RPO_HOURS, "rpo_hours")
    shrink = _levels(opts.size_shrink, DEFAULT_SHRINK, "size_shrink", higher_is_worse=False)
    log_levels = _levels(opts.log_matches, DEFAULT_LOG_MATCHES, "log_matches")
    patterns: dict[str, re.Pattern] = {}
    for name, rx in (opts.log_patterns or DEFAULT_LOG_PATTERNS).items():
        try:
            patterns[name] = re.compile(rx)
        except re.error as exc:
            raise MhopsError(f"backup.log_patterns.{name}: bad regex {rx!r}: {exc}") from exc
    if opts.size_window < 1:
        raise MhopsError(f"backup.size_window must be at least 1, got {opts.size_window}")
    started = records.utc_now()
    now = opts.now or datetime.now(UTC)
    targets, hosts, selection = _targets(opts)
    redactor = Redactor(secrets=selection.secrets if selection else frozenset())
    local = [t for t in targets if not t.host]
    # Folders on this machine: the probe's code in this process. The log is read here
    # when no database host is checked (it is the backup job's, which runs on them).
    here = _probe.probe(_probe_args(local, opts.log if not hosts else None, patterns, opts)) \
        if local or (opts.log and not hosts) else {"targets": [], "log": None}
    if opts.log and not hosts and here["log"] and here["log"]["error"]:
        raise MhopsError(here["log"]["error"], path=opts.log)
    remote_results = _probe_hosts(targets, hosts, patterns, opts, redactor)
    local_got = iter(here["targets"])
    checked, logs = [], []
    for t in targets:
        if not t.host:
            checked.append(check_target(t, next(local_got), opts, now, rpo, shrink))
            continue
        res = remote_results.get(t.host) or {"error": "no result"}
        if "targets" not in res:
            checked.append(_unreachable(t, res.get("error") or "no result", opts.lang))
            continue
        got = next((g for g in res["targets"] if g["name"] == t.name
                    and g["folder"] == str(t.folder)), {"error": "not probed"})
        checked.append(check_target(t, got, opts, now, rpo, shrink))
    if here.get("log"):
        logs.append(log_item(here["log"], "", log_levels, opts.log_tail_bytes, opts.lang))
    for h in sorted(remote_results):
        if remote_results[h].get("log"):
            logs.append(log_item(remote_results[h]["log"], h, log_levels, opts.log_tail_bytes,
                                 opts.lang))
    statuses = [i["status"] for c in checked for i in c["items"]] + [x["status"] for x in logs]
    events = [{"name": c["name"], "host": c["host"],
               **{k: i[k] for k in ("check", "target", "status", "nagios",
                                    "explanation", "resolution")}}
              for c in checked for i in c["items"] if i["status"] in (th.WARNING, th.CRITICAL)]
    events += [{"name": "log", "host": x["host"], **{k: x[k] for k in (
        "check", "target", "status", "nagios", "explanation", "resolution")}}
        for x in logs if x["status"] in (th.WARNING, th.CRITICAL)]
    finished = records.utc_now()
    worst = th.worst(statuses)
    record = {
        "schema_version": SCHEMA_VERSION, "kind": "backup_check",
        "run_id": records.run_id("backup_check", started), "lang": opts.lang,
        "status": worst, "nagios": NAGIOS[worst], "exit_code": th.exit_code(statuses),
        "headline": _check_headline(opts.lang, worst, checked, statuses),
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "scope": {"inventory": list(selection.sources) if selection else [],
                  "limit": opts.limit,
                  "hosts": sorted(hosts),
                  "targets": [c["name"] for c in checked],
                  "folders": [f"{c['host']}:{c['folder']}" if c["source"] == "mhops"
                              else c["folder"] for c in checked]},
        "settings": {"rpo_hours": rpo, "size_shrink": shrink, "size_window": opts.size_window,
                     "log": opts.log, "log_patterns": {k: v.pattern for k, v in patterns.items()},
                     "log_matches": log_levels, "deep": opts.deep},
        "probes": {h: {"seconds": r.get("seconds"), "error": r.get("error"),
                       "unreachable": r.get("unreachable")} for h, r in remote_results.items()},
        "targets": checked,
        # The worst log alone, as before several hosts' logs were read.
        "log": next((x for x in logs if x["status"] == th.worst([y["status"] for y in logs])),
                    None),
        "logs": logs,
        "summary": {"targets": len(checked), "hosts": len(hosts),
                    "counts": {s: statuses.count(s) for s in th.STATUSES}},
        "events": events,
        "ops_revision": records.ops_revision(),
    }
    run_dir = records.write_run(opts.records_dir, "backup_check", record, redactor)
    for c in checked:
        for i in c["items"]:
            opts.echo(f"{i['nagios']:<8} {c['name']} {i['check']}: "
                      f"{redactor.text(i['explanation'])}")
    for x in logs:
        opts.echo(f"{x['nagios']:<8} log {x['target']}: {redactor.text(x['explanation'])}")
    opts.echo(f"BACKUP {record['nagios']} (exit {record['exit_code']})")
    opts.echo(str(run_dir))
    return records.Outcome(record["exit_code"], run_dir, record)


def _check_headline(lang: str, worst: str, checked: list[dict], statuses: list[str]) -> str:
    bad = sum(s in (th.WARNING, th.CRITICAL) for s in statuses)
    if lang == "zh-CN":
        return (f"备份检查：{len(checked)} 个备份位置，{NAGIOS[worst]}"
                + (f"，{bad} 项异常" if bad else "，全部正常"))
    return (f"Backup check: {len(checked)} backup location(s), {NAGIOS[worst]}"
            + (f", {bad} item(s) abnormal" if bad else ", all OK"))
