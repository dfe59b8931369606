"""Pure release rules: versions, release names, batches, risk, rollback plan, modules changed.

A pure leaf (no project imports, no I/O): everything ``mhops.releases`` decides before
it touches a host is computed here from plain data, so the rules are unit-tested.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

LOW, MEDIUM, HIGH = "low", "medium", "high"
_NAME = re.compile(r"^(?P<version>[A-Za-z0-9_.+~]+)-(?P<stamp>\d{8}T\d{6}Z)$")
_VERSION = re.compile(r"^[A-Za-z0-9_.+~]+$")


def valid_version(version: str) -> bool:
    """Versions go into folder names: letters, digits and ``._+~`` only, no '-'."""
    return bool(_VERSION.match(version or ""))


def version_key(version: str | None) -> tuple:
    """Sort key: numeric parts compare as numbers ('1.10' > '1.9'); a leading 'v' is ignored."""
    text = (version or "").lstrip("vV")
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"[._+~]", text) if p != "")


def is_downgrade(live: str | None, wanted: str) -> bool:
    return live is not None and version_key(wanted) < version_key(live)


def release_name(version: str, when: datetime) -> str:
    return f"{version}-{when.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def parse_release(name: str | None) -> tuple[str | None, str | None]:
    m = _NAME.match(name or "")
    return (m["version"], m["stamp"]) if m else (None, None)


def batches(hosts: list[str], serial: int) -> list[list[str]]:
    """Ansible's ``serial: N`` batches (N <= 0: one batch of every host)."""
    if serial <= 0 or serial >= len(hosts):
        return [list(hosts)] if hosts else []
    return [hosts[i:i + serial] for i in range(0, len(hosts), serial)]


def batch_failed(failed: int, size: int, max_fail_percentage: float) -> bool:
    """Ansible's rule: the play stops when failures exceed the percentage of the batch."""
    if size == 0:
        return False
    return failed > 0 and (failed * 100.0 / size) > max_fail_percentage


@dataclass
class Risk:
    level: str
    reasons: list[dict[str, Any]] = field(default_factory=list)
    blocking: list[str] = field(default_factory=list)


def assess(facts: dict[str, dict[str, Any]], *, version: str, pending_up: list[str],
           down_steps: dict[str, bool], tarball_bytes: int, backup_max_age_hours: float,
           allow_downgrade: bool,
           database_backups: list[dict[str, Any]] | None = None) -> Risk:
    """Risk level with reasons from per-host probe facts (see ``mhops.releases.probe``).

    Each reason: ``{"code", "level", "host" (or None), "detail"}``. ``blocking`` holds
    reasons no ``--yes`` can override (an unreachable host cannot be upgraded or rolled
    back; a downgrade needs ``--allow-downgrade``; a database backup that failed).
    `database_backups` are the platform databases' backups (see ``backup_reasons``).
    """
    reasons: list[dict[str, Any]] = []
    blocking: list[str] = []

    def add(code: str, level: str, detail: str, host: str | None = None) -> None:
        reasons.append({"code": code, "level": level, "host": host, "detail": detail})

    for host, f in sorted(facts.items()):
        if not f.get("reachable"):
            add("unreachable", HIGH, f.get("error") or "host unreachable", host)
            blocking.append(f"{host}: unreachable ({f.get('error') or '?'})")
            continue
        live = f.get("current_version")
        if live is None:
            add("new_install", MEDIUM, "no release live yet: first deployment here", host)
        elif not f.get("healthy"):
            add("unhealthy_now", HIGH, f"live release {live} is not healthy now: "
                                       f"{f.get('health_detail') or '?'}", host)
        if live is not None and live == version:
            add("same_version", MEDIUM, f"{version} is already live: it is redeployed", host)
        if is_downgrade(live, version):
            if allow_downgrade:
                add("downgrade", HIGH, f"downgrade {live} -> {version} (allowed)", host)
            else:
                add("downgrade", HIGH, f"downgrade {live} -> {version}", host)
                blocking.append(f"{host}: downgrade {live} -> {version} needs --allow-downgrade")
        db_bytes = int(f.get("db_bytes") or 0)
        need = 3 * int(tarball_bytes) + 2 * db_bytes
        free = f.get("disk_free_bytes")
        if free is not None and free < need:
            add("disk_space", HIGH, f"{free} bytes free, {need} needed for the release and "
                                    "the database backup", host)
        if f.get("partial"):
            add("unfinished_unpack", MEDIUM, "unfinished unpack left by an earlier run: "
                                             + ", ".join(f["partial"]), host)
        pending_here = [m for m in pending_up if m not in (f.get("applied") or [])]
        if pending_here and f.get("db_exists"):
            age = f.get("backup_age_hours")
            if age is None or age > backup_max_age_hours:
                add("backup_stale", MEDIUM,
                    ("no database backup" if age is None else
                     f"newest database backup is {age:.1f} h old") +
                    f" (limit {backup_max_age_hours:g} h): one is taken before migrating",
                    host)
    for mid in pending_up:
        if down_steps.get(mid):
            add("migration", MEDIUM, f"migration {mid} pending (has a down step)")
        else:
            add("migration_no_down", HIGH, f"migration {mid} has no down step: rollback "
                                           "restores the database backup")
    more, stops = backup_reasons(database_backups or [], backup_max_age_hours)
    reasons += more
    blocking += stops
    rank = {LOW: 0, MEDIUM: 1, HIGH: 2}
    level = max((r["level"] for r in reasons), key=rank.__getitem__, default=LOW)
    return Risk(level=level, reasons=reasons, blocking=blocking)


def backup_verdict(target: dict[str, Any] | None) -> tuple[bool, str]:
    """Can a ``backup.check`` target's newest backup serve an upgrade, and why (not)?

    Usable means: it exists, its age passed (the check ran with the upgrade's limit as
    RPO), and its checksum and integrity passed. A size anomaly alone does not make a
    fresh, intact backup unusable.
    """
    if not target or not target.get("newest"):
        why = next((i["explanation"] for i in (target or {}).get("items", [])
                    if i.get("check") in ("exists", "reach")), "no backup found")
        return False, why
    items = {i["check"]: i for i in target.get("items", [])}
    for check in ("age", "checksum", "integrity"):
        item = items.get(check)
        if item is None or item.get("status") != "normal":
            what = {"age": "too old", "checksum": "checksum does not match its manifest",
                    "integrity": "empty or truncated"}[check]
            return False, f"newest backup {target['newest']['file']} is {what}" + \
                (f": {item['explanation']}" if item else "")
    return True, f"newest backup {target['newest']['file']} is fresh and intact"


def restore_command(entry: dict[str, Any], path: str) -> str:
    """The shell command that restores `entry` (an mhops_databases entry) from `path`.

    Run on the database host. Passwords never appear: the client reads them from
    ~/.pgpass / ~/.my.cnf (or PGPASSWORD / MYSQL_PWD) as the backup job does.
    """
    q = shlex.quote
    host, db = str(entry.get("host") or "127.0.0.1"), str(entry["database"])
    if entry["engine"] == "postgresql":
        port, user = entry.get("port") or 5432, entry.get("user") or "postgres"
        return (f"pg_restore --clean --if-exists --single-transaction --exit-on-error "
                f"--no-owner -h {q(host)} -p {int(port)} -U {q(user)} -d {q(db)} {q(path)}")
    port, user = entry.get("port") or 3306, entry.get("user") or "root"
    client = f"mariadb -h {q(host)} -P {int(port)} -u {q(user)} {q(db)}"
    for suffix, tool in ((".gz", "gzip"), (".zst", "zstd")):
        if path.endswith(suffix):
            return f"bash -o pipefail -c {q(f'{tool} -dc {q(path)} | {client}')}"
    return f"{client} < {q(path)}"


def backup_reasons(dbs: list[dict[str, Any]], max_age_hours: float
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Risk reasons and blocking reasons for the platform databases' backups.

    Each entry has ``name``, ``host``, ``state`` (fresh, stale, taken or failed),
    ``file``, ``age_hours`` and ``reason``.
    """
    reasons: list[dict[str, Any]] = []
    blocking: list[str] = []
    for d in dbs:
        label = f"database backup {d['name']}"
        if d["state"] == "fresh":
            reasons.append({"code": "database_backup_fresh", "level": LOW, "host": d["host"],
                            "detail": f"{label}: {d['file']}, {d['age_hours']:g} h old "
                                      f"(limit {max_age_hours:g} h)"})
        elif d["state"] == "taken":
            reasons.append({"code": "database_backup_taken", "level": LOW, "host": d["host"],
                            "detail": f"{label} taken before deploying ({d['reason']}): "
                                      f"{d['file']}"})
        elif d["state"] == "stale":
            reasons.append({"code": "database_backup_stale", "level": MEDIUM,
                            "host": d["host"],
                            "detail": f"{label}: {d['reason']} (limit {max_age_hours:g} h): "
                                      "a new one is taken before deploying"})
        else:
            reasons.append({"code": "database_backup_failed", "level": HIGH,
                            "host": d["host"], "detail": f"{label} failed: {d['reason']}"})
            blocking.append(f"{d['host']}: {label} failed ({d['reason']}); no upgrade "
                            "without a backup to return to")
    return reasons, blocking


def triggers() -> list[str]:
    """The conditions that make an upgrade roll back by itself (written into every plan)."""
    return ["deploy_step_failed", "process_not_running", "port_not_listening",
            "health_not_200_within_window", "served_version_mismatch", "new_error_log_lines",
            "timeout", "interrupted", "killed_run_found_by_next_run"]


def host_plan(host: str, facts: dict[str, Any], *, component: str, new_release: str,
              cfg: dict[str, Any], pending_up: list[str],
              database_backups: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """What rolling back `host` means: release, migrations, backups, exact steps/commands.

    A platform database backup is restored only by an operator's decision (it discards
    every write since, payments included): its command is the plan's last, manual step.
    """
    target = facts.get("current")
    app_root = cfg.get("app_root", "")
    applied = list(facts.get("applied") or [])
    steps = []
    if target:
        steps.append(f"ln -sfn releases/{target} {app_root}/.current.tmp && "
                     f"mv -T {app_root}/.current.tmp {app_root}/current")
    else:
        steps.append(f"rm {app_root}/current  # {component} was new on this host")
    for mid in sorted(pending_up, reverse=True):
        if mid not in applied:
            steps.append(f"sqlite3 {cfg.get('database', '')} "
                         f"< {app_root}/releases/{new_release}/migrations/{mid}.down.sql")
    steps.append(f"mv {app_root}/releases/{new_release} {app_root}/archive/{new_release}")
    steps.append(cfg.get("reload", "") if target else cfg.get("stop", ""))
    steps.append(f"verify: process {cfg.get('process', '')}, port {cfg.get('port', '')}, "
                 f"{cfg.get('health_url', '')} -> 200, {cfg.get('version_url', '')} -> "
                 f"{facts.get('current_version')}, no new error lines in {cfg.get('log', '')}")
    dbs = [d for d in database_backups or [] if d.get("name") == cfg.get("backup_database")]
    for d in dbs:
        if d.get("restore_command"):
            steps.append(f"# manual, only if {d['name']} must return to its state before the "
                         f"upgrade (discards later writes): on {d['host']}: "
                         f"{d['restore_command']}")
    return {"host": host, "target": target, "target_version": facts.get("current_version"),
            "failed": new_release, "keep_migrations": applied,
            "backup": (facts.get("backup") or {}).get("path"),
            "backup_note": "taken before migrating (shared/backups/…-before-"
                           f"{new_release}-*.db)" if pending_up else "no migration: none needed",
            "database_backups": [{k: d.get(k) for k in ("name", "host", "engine", "path",
                                                        "sha256", "size", "restore_command")}
                                 for d in dbs],
            "steps": steps}


def modules_changed(old: dict[str, str] | None, new: dict[str, str]) -> dict[str, Any]:
    """Files and top-level modules that differ between two releases ({path: sha256})."""
    if old is None:
        return {"compared_with": None, "modules": sorted({_module(p) for p in new}),
                "added": sorted(new), "changed": [], "removed": []}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(p for p in set(new) & set(old) if new[p] != old[p])
    mods = sorted({_module(p) for p in added + removed + changed})
    return {"compared_with": "previous", "modules": mods, "added": added, "changed": changed,
            "removed": removed}


def _module(path: str) -> str:
    head, sep, _ = path.partition("/")
    return head + "/" if sep else head
