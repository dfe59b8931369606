"""What releases know about hosts and artifacts: component settings, probes, tarballs.

Owns reading a component's settings from the inventory (``mhops_release_components``
per host, checked with file and line on error), the read-only probe of each host's
release layout over Fabric (the ``mhops_release`` module run standalone, one round
trip per host), and reading a release tarball on the control node (its
``release.json``, file hashes and migrations).
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from pathlib import Path
from typing import Any

from mhops import release_plan as rp
from mhops import remote
from mhops.errors import MhopsError
from mhops.inventory import Host, Selection

REPO = Path(__file__).resolve().parent.parent
MODULE = REPO / "roles" / "mhops_release" / "library" / "mhops_release.py"
REQUIRED = ("app_root", "health_url", "version_url", "port", "pidfile", "start", "reload",
            "stop")
OPTIONAL = ("address", "process", "log", "database", "services", "error_pattern",
            "expected_downtime_s", "backup_database")
_MIGRATION = re.compile(r"^migrations/(?P<id>[0-9]{4}_[A-Za-z0-9_]+)\.(?P<step>up|down)\.sql$")


def settings(host: Host, component: str) -> dict[str, Any] | None:
    """The component's checked settings on `host`, or None when the host does not run it."""
    allc = host.vars.get("mhops_release_components") or {}
    path, line = host.where("mhops_release_components")
    if not isinstance(allc, dict):
        raise MhopsError(f"host {host.name}: mhops_release_components must be a mapping",
                         path=path, line=line)
    cfg = allc.get(component)
    if cfg is None:
        return None
    p, ln = host.where(f"mhops_release_components.{component}")
    p, ln = (p, ln) if p else (path, line)
    if not isinstance(cfg, dict):
        raise MhopsError(f"host {host.name}: component {component} must be a mapping",
                         path=p, line=ln)
    problems = [f"{k} is missing" for k in REQUIRED if cfg.get(k) in (None, "")]
    unknown = set(cfg) - set(REQUIRED) - set(OPTIONAL)
    if unknown:
        problems.append(f"unknown keys {', '.join(sorted(unknown))}")
    if cfg.get("app_root") and not str(cfg["app_root"]).startswith("/"):
        problems.append("app_root must be an absolute path")
    if problems:
        raise MhopsError(f"host {host.name}: component {component}: " + "; ".join(problems),
                         path=p, line=ln)
    out = dict(cfg)
    out.setdefault("address", "127.0.0.1")
    out.setdefault("process", "")
    out.setdefault("services", [component])
    out["port"] = int(out["port"])
    return out


def component_hosts(selection: Selection, component: str) -> list[tuple[Host, dict]]:
    chosen = [(h, c) for h in selection.hosts if (c := settings(h, component)) is not None]
    if not chosen:
        raise MhopsError(f"no selected host runs component {component!r} (hosts: "
                         f"{', '.join(selection.names)}; set mhops_release_components)")
    return chosen


def components(selection: Selection) -> list[str]:
    return sorted({c for h in selection.hosts
                   for c in (h.vars.get("mhops_release_components") or {})})


def probe(chosen: list[tuple[Host, dict]], *, health: bool = True, forks: int = 50,
          connect_timeout: int = 10) -> dict[str, dict[str, Any]]:
    """Each host's release facts (see the module's ``probe``) plus reachable/error."""
    source = MODULE.read_text()
    cfgs = {h.name: c for h, c in chosen}

    def command(h: Host):
        c = cfgs[h.name]
        args = {"action": "probe", "app_root": c["app_root"], "pidfile": c["pidfile"],
                "log": c.get("log") or "", "database": c.get("database") or "",
                "health": health, "health_url": c["health_url"], "version_url": c["version_url"]}
        return (remote.python_command(h),
                f"MHOPS_ARGS = {json.dumps(json.dumps(args))}\n" + source, 60)

    res = remote.run_many([h for h, _ in chosen], command, forks=forks,
                          connect_timeout=connect_timeout)
    out: dict[str, dict[str, Any]] = {}
    for h, _ in chosen:
        r = res[h.name]
        facts: dict[str, Any] = {"reachable": r.status != remote.UNREACHABLE}
        try:
            got = json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else {}
        except ValueError:
            got = {}
        if not got.get("ok"):
            facts["reachable"] = False
            facts["error"] = got.get("error") or r.error or "probe gave no answer"
            out[h.name] = facts
            continue
        f = got["result"]
        facts.update(f)
        hl, served = f.get("health") or {}, f.get("served") or {}
        facts["healthy"] = hl.get("status") == 200
        facts["health_detail"] = f"HTTP {hl.get('status')}" if hl.get("status") else \
            (hl.get("error") or "no answer")
        try:
            facts["served_version"] = json.loads(served.get("body") or "{}").get("version")
        except ValueError:
            facts["served_version"] = None
        db = f.get("database") or {}
        facts["applied"] = db.get("applied") or []
        facts["db_exists"] = bool(db.get("exists"))
        facts["db_bytes"] = db.get("size") or 0
        facts["backup_age_hours"] = (f.get("backup") or {}).get("age_hours")
        out[h.name] = facts
    return out


def tarball_path(artifacts_dir: Path, component: str, version: str) -> Path:
    return Path(artifacts_dir) / f"{component}-{version}.tar.gz"


def read_tarball(path: Path) -> dict[str, Any]:
    """release.json, {file: sha256}, migrations {id: {up, down}}, size and sha256 of a tarball."""
    path = Path(path)
    if not path.is_file():
        raise MhopsError("release tarball not found", path=str(path))
    files: dict[str, str] = {}
    meta: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            names = [m.name[2:] if m.name.startswith("./") else m.name for m in members]
            tops = {n.split("/", 1)[0] for n in names}
            strip = tops.pop() + "/" if len(tops) == 1 and all("/" in n for n in names) else ""
            for m, name in zip(members, names, strict=True):
                data = tar.extractfile(m).read()
                rel = name[len(strip):] if strip else name
                files[rel] = hashlib.sha256(data).hexdigest()
                if rel == "release.json":
                    meta = json.loads(data)
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise MhopsError(f"release tarball is unreadable: {exc}", path=str(path)) from exc
    migrations: dict[str, dict[str, bool]] = {}
    for rel in files:
        m = _MIGRATION.match(rel)
        if m:
            migrations.setdefault(m["id"], {})[m["step"]] = True
    return {"path": str(path), "meta": meta, "files": files, "migrations": migrations,
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def check_version(version: str) -> None:
    if not rp.valid_version(version):
        raise MhopsError(f"bad version {version!r}: use letters, digits and . _ + ~ only")
