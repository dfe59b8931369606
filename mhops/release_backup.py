"""The platform database backup an upgrade stands on (risk assessment, step 1).

Owns one question for ``mhops.releases``: is each database a component names
(``backup_database``: the name of an ``mhops_databases`` entry anywhere in the
inventory) backed up recently and intact? ``backup.check`` answers it with the
upgrade's age limit as RPO (checksum and integrity included); when the answer is no
and the upgrade goes ahead, ``backup.run`` takes one. Both write their own records,
which the upgrade record references. What this returns names the file, its sha256
and the command that restores it, for the written rollback plan.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhops import backup
from mhops import release_plan as rp
from mhops.errors import MhopsError
from mhops.inventory import Host


@dataclass
class Settings:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    max_age_hours: float
    backup_dir: str = "/var/backups/mhops"
    keep: int = 7
    compress: str = "none"
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    forks: int = 10
    vault_password_file: str | None = None
    echo: Callable[[str], None] = field(default=print)


def wanted(hosts: dict[str, Host], cfgs: dict[str, dict[str, Any]], component: str
           ) -> dict[str, tuple[str | None, int | None]]:
    """{database name: where the first component setting naming it was written}."""
    out: dict[str, tuple[str | None, int | None]] = {}
    for h, cfg in cfgs.items():
        name = cfg.get("backup_database")
        if name and name not in out:
            out[str(name)] = hosts[h].where(f"mhops_release_components.{component}")
    return out


def _prefixed(echo: Callable[[str], None]) -> Callable[[str], None]:
    return lambda line: echo(f"  [backup] {line}")


def check(s: Settings, names: dict[str, tuple[str | None, int | None]]
          ) -> list[dict[str, Any]]:
    """One entry per (database, host): state fresh or stale, the newest file and why."""
    if not names:
        return []
    try:
        located = backup.locate(s.inventory, list(names), s.vault_password_file)
    except MhopsError as exc:
        path, line = next(iter(names.values()))
        raise MhopsError(f"backup_database: {exc}", path=path, line=line) from exc
    out = backup.check(backup.CheckOptions(
        records_dir=s.records_dir, inventory=s.inventory, databases=list(names),
        backup_dir=s.backup_dir, rpo_hours={"warning": s.max_age_hours,
                                            "critical": s.max_age_hours},
        forks=s.forks, lang=s.lang, operator=s.operator, timezone=s.timezone,
        vault_password_file=s.vault_password_file, echo=_prefixed(s.echo)))
    targets = {(t["host"], t["name"]): t for t in out.record["targets"]}
    result = []
    for h, entry in located:
        t = targets.get((h.name, entry["name"]))
        fresh, why = rp.backup_verdict(t)
        newest = (t or {}).get("newest") or {}
        sha = next((i.get("value") for i in (t or {}).get("items", [])
                    if i["check"] == "checksum"), None)
        path = str(Path(t["folder"]) / newest["file"]) if newest else None
        result.append({
            "name": entry["name"], "host": h.name, "engine": entry["engine"],
            "database": entry["database"], "state": "fresh" if fresh else "stale",
            "reason": why, "file": newest.get("file"), "path": path,
            "sha256": sha if fresh else None, "size": newest.get("size"),
            "age_hours": newest.get("age_hours"),
            "restore_command": rp.restore_command(entry, path) if fresh and path else None,
            "check_run_id": out.record_dir.name, "backup_run_id": None, "entry": entry})
    return result


def take(s: Settings, dbs: list[dict[str, Any]]) -> None:
    """Back up every stale entry of `dbs` with ``backup.run``; update them in place."""
    stale = [d for d in dbs if d["state"] == "stale"]
    if not stale:
        return
    try:
        out = backup.run(backup.RunOptions(
            inventory=s.inventory, records_dir=s.records_dir, state_dir=s.state_dir,
            limit=",".join(sorted({d["host"] for d in stale})),
            databases=sorted({d["name"] for d in stale}), backup_dir=s.backup_dir,
            keep=s.keep, compress=s.compress, lang=s.lang, operator=s.operator,
            timezone=s.timezone, forks=s.forks, vault_password_file=s.vault_password_file,
            echo=_prefixed(s.echo)))
    except MhopsError as exc:
        for d in stale:
            d.update(state="failed", reason=f"backup.run: {exc}")
        return
    got = {(e["host"], e["name"]): e for e in out.record["backups"]}
    for d in stale:
        e = got.get((d["host"], d["name"]))
        d["backup_run_id"] = out.record_dir.name
        if not e or e["outcome"] != "ok" or not e.get("file"):
            d.update(state="failed", reason=(e or {}).get("error") or "no backup was written")
            continue
        path = str(Path(e["folder"]) / e["file"])
        d.update(state="taken", file=e["file"], path=path, sha256=e["sha256"], size=e["size"],
                 age_hours=0.0, restore_command=rp.restore_command(d["entry"], path))


def public(dbs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries as the records carry them (without the inventory entry itself)."""
    return [{k: v for k, v in d.items() if k != "entry"} for d in dbs]
