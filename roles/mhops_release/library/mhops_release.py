#!/usr/bin/python
# ruff: noqa: UP009, UP017, UP031
# (Runs on managed hosts with Python 3.8+: no 3.10+ syntax or aliases here.)
"""The release layout of one component on one host, in one round trip per step.

Owns the on-host contract of ``invoke upgrade`` / ``invoke rollback``::

    <app_root>/releases/<version>-<YYYYMMDDTHHMMSSZ>/   one folder per release (REVISION inside)
    <app_root>/releases/.<name>.partial/                 a release being unpacked
    <app_root>/shared/{data,logs,config,run,backups}/    linked into each release
    <app_root>/current -> releases/<name>                switched by symlink + rename
    <app_root>/archive/<name>/                           releases that were rolled back
    <app_root>/revisions.log                             append-only JSON lines

Releases are ordered by the UTC stamp in their name and found by reading ``current``
and the revisions log, never by modification time. Migrations are SQL files in the
release (``migrations/<id>.up.sql`` / ``<id>.down.sql``) applied to an SQLite
database, each in its own transaction, remembered in ``mhops_schema_migrations``.

Actions: probe (read-only), unpack, migrate, switch, rollback, cleanup, and activate
(migrate + switch + cleanup in one round trip). The same text
runs as the Ansible module ``mhops_release`` and, for probe, standalone over SSH
(``python3 -`` with ``MHOPS_ARGS = '<json>'`` prepended), printing one JSON object.
Standard library only (Python 3.8+): it runs on the managed hosts.
"""

import datetime
import json
import os
import re
import shutil
import sqlite3
import tarfile
import time
import traceback
import urllib.error
import urllib.request

NAME = re.compile(r"^(?P<version>[A-Za-z0-9_.+~]+)-(?P<stamp>\d{8}T\d{6}Z)$")
SHARED = ("data", "logs", "config", "run", "backups")
MIGRATION = re.compile(r"^(?P<id>[0-9]{4}_[A-Za-z0-9_]+)\.(?P<step>up|down)\.sql$")


class ReleaseError(Exception):
    pass


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_name(name):
    m = NAME.match(name or "")
    return (m.group("version"), m.group("stamp")) if m else (None, None)


def by_stamp(names):
    """Release names oldest first, by the stamp in the name (mtime is never consulted)."""
    return sorted((n for n in names if parse_name(n)[1]), key=lambda n: (parse_name(n)[1], n))


def choose_cleanup(names, keep, protected):
    """(delete, kept): the oldest releases beyond `keep`, never a protected one."""
    if keep < 2:
        raise ReleaseError("keep must be at least 2 (the live release and one to roll back to)")
    ordered = by_stamp(names)
    protected = set(p for p in protected if p)
    kept = [n for n in ordered if n in protected]
    for n in reversed(ordered):
        if n not in protected and len(kept) < keep:
            kept.append(n)
    delete = [n for n in ordered if n not in kept]
    return delete, by_stamp(kept)


def _paths(app_root):
    return {"releases": os.path.join(app_root, "releases"),
            "shared": os.path.join(app_root, "shared"),
            "archive": os.path.join(app_root, "archive"),
            "current": os.path.join(app_root, "current"),
            "revisions": os.path.join(app_root, "revisions.log")}


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_name(app_root):
    try:
        target = os.readlink(_paths(app_root)["current"])
    except OSError:
        return None
    return os.path.basename(target.rstrip("/"))


def read_revisions(app_root):
    try:
        with open(_paths(app_root)["revisions"], encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for ln in lines:
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue  # a line cut by a crash mid-append is skipped, never fatal
    return out


def append_revision(app_root, entry):
    """One JSON line, O_APPEND: the log only ever grows."""
    line = (json.dumps(dict(entry, time=entry.get("time") or now_iso()), sort_keys=True)
            + "\n").encode()
    fd = os.open(_paths(app_root)["revisions"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def releases(app_root):
    try:
        names = os.listdir(_paths(app_root)["releases"])
    except OSError:
        return []
    return by_stamp(n for n in names if not n.startswith("."))


def previous_of(app_root, name, revisions=None):
    """The release `name` replaced when it was last switched to (the rollback target)."""
    present = set(releases(app_root))
    for entry in reversed(revisions if revisions is not None else read_revisions(app_root)):
        if entry.get("release") == name and entry.get("action") == "deploy":
            prev = entry.get("previous")
            if prev in present:
                return prev
            break
    older = [n for n in by_stamp(present) if parse_name(n)[1] < (parse_name(name)[1] or "")]
    return older[-1] if older else None


def read_revision(path):
    try:
        with open(os.path.join(path, "REVISION"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def pid_alive(pidfile):
    try:
        with open(pidfile, encoding="ascii") as fh:
            pid = int(fh.read().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def http_get(url, timeout=3.0):
    if not url:
        return {"status": None, "body": "", "error": "no URL configured"}
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return {"status": resp.status, "body": resp.read(4096).decode("utf-8", "replace")}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read(4096).decode("utf-8", "replace")}
    except Exception as exc:  # refused, timeout, DNS: the service is not answering
        return {"status": None, "body": "", "error": "%s: %s" % (type(exc).__name__, exc)}


def applied_migrations(db_path):
    if not db_path or not os.path.exists(db_path):
        return []
    with sqlite3.connect(db_path, timeout=10) as db:
        have = db.execute("SELECT name FROM sqlite_master WHERE type='table' AND "
                          "name='mhops_schema_migrations'").fetchone()
        if not have:
            return []
        return [r[0] for r in db.execute("SELECT id FROM mhops_schema_migrations ORDER BY id")]


def newest_backup(folder):
    best = None
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for n in names:
        if n.startswith("."):
            continue
        p = os.path.join(folder, n)
        m = re.search(r"(\d{8}T\d{6}Z)", n)
        if not m or not os.path.isfile(p):
            continue
        if best is None or m.group(1) > best[1]:
            best = (p, m.group(1))
    if not best:
        return None
    taken = datetime.datetime.strptime(best[1], "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc)
    age = (datetime.datetime.now(datetime.timezone.utc) - taken).total_seconds()
    return {"path": best[0], "taken_at": taken.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "age_hours": round(age / 3600.0, 3), "size": os.path.getsize(best[0])}


def _free_bytes(path):
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    st = os.statvfs(path or "/")
    return st.f_bavail * st.f_frsize


def _log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# ---------------------------------------------------------------- actions

def probe(p):
    app_root = p["app_root"]
    paths = _paths(app_root)
    cur = current_name(app_root)
    revisions = read_revisions(app_root)
    rels = []
    for n in releases(app_root):
        rev = read_revision(os.path.join(paths["releases"], n))
        rels.append({"name": n, "version": parse_name(n)[0], "deployed_at": rev.get("deployed_at"),
                     "deployed_by": rev.get("deployed_by")})
    try:
        partial = sorted(n for n in os.listdir(paths["releases"]) if n.endswith(".partial"))
    except OSError:
        partial = []
    try:
        archived = sorted(os.listdir(paths["archive"]))
    except OSError:
        archived = []
    prev = previous_of(app_root, cur, revisions) if cur else None
    cur_rev = read_revision(paths["current"]) if cur else {}
    health = http_get(p.get("health_url")) if p.get("health") else None
    served = http_get(p.get("version_url")) if p.get("health") else None
    db = p.get("database") or ""
    return {
        "app_root": app_root,
        "exists": os.path.isdir(app_root),
        "current": cur,
        "current_version": parse_name(cur)[0] if cur else None,
        "current_valid": bool(cur) and os.path.isdir(paths["current"]),
        "current_deployed_at": cur_rev.get("deployed_at"),
        "previous": prev,
        "previous_version": parse_name(prev)[0] if prev else None,
        "releases": rels,
        "partial": partial,
        "archived": archived,
        "revisions_count": len(revisions),
        "last_revision": revisions[-1] if revisions else None,
        "disk_free_bytes": _free_bytes(app_root),
        "database": {"path": db, "exists": bool(db) and os.path.exists(db),
                     "size": os.path.getsize(db) if db and os.path.exists(db) else 0,
                     "applied": applied_migrations(db)},
        "backup": newest_backup(os.path.join(paths["shared"], "backups")),
        "pid": pid_alive(p.get("pidfile") or ""),
        "health": health,
        "served": served,
        "log_size": _log_size(p.get("log") or ""),
    }


def _norm(name):
    while name.startswith("./"):
        name = name[2:]
    return name


def _safe_members(tar):
    """Members without absolute paths, '..' or links leaving the release (tar-slip)."""
    names = [_norm(m.name) for m in tar.getmembers() if _norm(m.name) not in ("", ".")]
    tops = {n.split("/", 1)[0] for n in names}
    strip = ""
    if len(tops) == 1 and any("/" in n for n in names):
        strip = tops.pop() + "/"
    out = []
    for m in tar.getmembers():
        name = _norm(m.name)
        if name in ("", "."):
            continue
        if strip:
            if not name.startswith(strip):
                continue
            name = name[len(strip):]
        if not name:
            continue
        if name.startswith("/") or ".." in name.split("/") or m.islnk() or m.issym() \
                or m.isdev():
            raise ReleaseError("unsafe member in the release tarball: %s" % m.name)
        m.name = name
        out.append(m)
    return out


def unpack(p, check):
    app_root, name = p["app_root"], p["name"]
    paths = _paths(app_root)
    final = os.path.join(paths["releases"], name)
    if not NAME.match(name):
        raise ReleaseError("bad release name %r" % name)
    if os.path.isdir(final):
        return {"changed": False, "release": final}
    if check:
        return {"changed": True, "release": final}
    for d in (paths["releases"], paths["archive"]) + tuple(
            os.path.join(paths["shared"], s) for s in SHARED):
        os.makedirs(d, exist_ok=True)
    partial = os.path.join(paths["releases"], ".%s.partial" % name)
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    with tarfile.open(p["tarball"], "r:*") as tar:
        tar.extractall(partial, members=_safe_members(tar))
    revision = dict(p.get("revision") or {}, release=name, version=parse_name(name)[0],
                    deployed_at=now_iso())
    with open(os.path.join(partial, "REVISION"), "w", encoding="utf-8") as fh:
        json.dump(revision, fh, indent=1, sort_keys=True)
        fh.write("\n")
    for link in SHARED:
        target = os.path.join(partial, link)
        if os.path.lexists(target):
            shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) \
                else os.unlink(target)
        os.symlink(os.path.join("..", "..", "shared", link), target)
    # The final name appears only complete: a killed unpack leaves only `.partial`.
    os.rename(partial, final)
    _fsync_dir(paths["releases"])
    if p.get("remove_tarball"):
        try:
            os.unlink(p["tarball"])
        except OSError:
            pass
    return {"changed": True, "release": final}


def _migration_files(folder):
    out = {}
    try:
        names = os.listdir(folder)
    except OSError:
        return out
    for n in names:
        m = MIGRATION.match(n)
        if m:
            out.setdefault(m.group("id"), {})[m.group("step")] = os.path.join(folder, n)
    return out


def _backup_db(db_path, folder, tag):
    os.makedirs(folder, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = os.path.join(folder, "%s-%s-%s.db" % (os.path.basename(db_path).split(".")[0],
                                                 tag, stamp))
    tmp = os.path.join(folder, ".%s.partial" % os.path.basename(dest))
    src = sqlite3.connect(db_path, timeout=10)
    try:
        out = sqlite3.connect(tmp)
        with out:
            src.backup(out)
        out.close()
    finally:
        src.close()
    os.rename(tmp, dest)
    return dest


def _ensure_table(db):
    db.execute("CREATE TABLE IF NOT EXISTS mhops_schema_migrations "
               "(id TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")


def migrate(p, check):
    """Back up the database, then apply the release's pending up-migrations in order."""
    app_root, name, db_path = p["app_root"], p["name"], p.get("database")
    if not db_path:
        return {"changed": False, "applied": [], "before": [], "backup": None}
    files = _migration_files(os.path.join(_paths(app_root)["releases"], name, "migrations"))
    before = applied_migrations(db_path)
    pending = sorted(i for i in files if i not in before and "up" in files[i])
    backup = None
    if check or not pending and not p.get("backup_always"):
        return {"changed": bool(pending), "applied": pending if check else [], "before": before,
                "backup": None}
    os.makedirs(os.path.dirname(db_path), exist_ok=True)
    if os.path.exists(db_path):
        backup = _backup_db(db_path, os.path.join(_paths(app_root)["shared"], "backups"),
                            "before-" + name)
    db = sqlite3.connect(db_path, timeout=10, isolation_level=None)
    try:
        _ensure_table(db)
        for mid in pending:
            with open(files[mid]["up"], encoding="utf-8") as fh:
                sql = fh.read()
            db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in [s for s in sql.split(";") if s.strip()]:
                    db.execute(stmt)
                db.execute("INSERT INTO mhops_schema_migrations VALUES (?, ?)", (mid, now_iso()))
                db.execute("COMMIT")
            except Exception:
                db.execute("ROLLBACK")
                raise
    finally:
        db.close()
    return {"changed": True, "applied": pending, "before": before, "backup": backup}


def migrate_down(app_root, db_path, keep, backup=None):
    """Reverse every applied migration not in `keep`, newest first, with its down step.

    The down step is looked up in every release and archived release. Without one the
    database is restored from `backup` (the copy taken before the upgrade migrated).
    """
    if not db_path or keep is None or not os.path.exists(db_path):
        return {"reversed": [], "restored": None}
    applied = applied_migrations(db_path)
    extra = sorted((m for m in applied if m not in keep), reverse=True)
    if not extra:
        return {"reversed": [], "restored": None}
    paths = _paths(app_root)
    downs = {}
    for base in (paths["releases"], paths["archive"]):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for n in names:
            for mid, steps in _migration_files(os.path.join(base, n, "migrations")).items():
                if "down" in steps:
                    downs.setdefault(mid, steps["down"])
    missing = [m for m in extra if m not in downs]
    if missing:
        if not backup or not os.path.exists(backup):
            raise ReleaseError("no down step for migration %s and no backup to restore"
                               % ", ".join(missing))
        tmp = db_path + ".restore"
        shutil.copyfile(backup, tmp)
        os.replace(tmp, db_path)
        return {"reversed": [], "restored": backup}
    db = sqlite3.connect(db_path, timeout=10, isolation_level=None)
    try:
        for mid in extra:
            with open(downs[mid], encoding="utf-8") as fh:
                sql = fh.read()
            db.execute("BEGIN IMMEDIATE")
            try:
                for stmt in [s for s in sql.split(";") if s.strip()]:
                    db.execute(stmt)
                db.execute("DELETE FROM mhops_schema_migrations WHERE id = ?", (mid,))
                db.execute("COMMIT")
            except Exception:
                db.execute("ROLLBACK")
                raise
    finally:
        db.close()
    return {"reversed": extra, "restored": None}


def switch_to(app_root, name):
    """Point `current` at releases/<name> (or remove it for None) atomically."""
    paths = _paths(app_root)
    if name is None:
        if os.path.lexists(paths["current"]):
            os.unlink(paths["current"])
            _fsync_dir(app_root)
        return
    target = os.path.join(paths["releases"], name)
    if not os.path.isdir(target):
        raise ReleaseError("release %s does not exist: current is left unchanged" % name)
    tmp = os.path.join(app_root, ".current.%d.tmp" % os.getpid())
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.join("releases", name), tmp)
    # rename(2) replaces the old link in one step: `current` never dangles or vanishes.
    os.replace(tmp, paths["current"])
    _fsync_dir(app_root)


def switch(p, check):
    app_root, name = p["app_root"], p["name"]
    before = current_name(app_root)
    changed = before != name
    if changed and not check:
        switch_to(app_root, name)
        append_revision(app_root, dict(p.get("log_entry") or {}, action="deploy",
                                       release=name, version=parse_name(name)[0],
                                       previous=before))
    return {"changed": changed, "previous": before, "current": name,
            "running": pid_alive(p.get("pidfile") or "") is not None}


def _backup_before(app_root, failed):
    """The database copy `migrate` took just before migrating for release `failed`."""
    if not failed:
        return None
    folder = os.path.join(_paths(app_root)["shared"], "backups")
    try:
        names = sorted(n for n in os.listdir(folder) if "-before-%s-" % failed in n
                       and not n.startswith("."))
    except OSError:
        return None
    return os.path.join(folder, names[-1]) if names else None


def rollback(p, check):
    """Return to `target` (None: no release, the component was new), reverse migrations,
    archive the release that failed. Idempotent: a rerun after a crash finishes the job."""
    app_root = p["app_root"]
    paths = _paths(app_root)
    target, failed = p.get("target"), p.get("failed")
    before = current_name(app_root)
    out = {"changed": False, "previous": before, "current": target, "reversed": [],
           "restored": None, "archived": None, "removed_partial": [],
           "log_size": _log_size(p.get("log") or "")}
    if target and not os.path.isdir(os.path.join(paths["releases"], target)):
        raise ReleaseError("the release to roll back to (%s) is gone" % target)
    if check:
        out["changed"] = before != target
        return out
    if before != target:
        switch_to(app_root, target)
        out["changed"] = True
    keep = p.get("keep_migrations")
    if keep is None and p.get("keep_from_target") and target:
        keep = sorted(_migration_files(os.path.join(paths["releases"], target, "migrations")))
    backup = p.get("backup") or _backup_before(app_root, failed)
    down = migrate_down(app_root, p.get("database"), keep, backup)
    out.update(down)
    out["changed"] = out["changed"] or bool(down["reversed"] or down["restored"])
    if failed and failed != target:
        src = os.path.join(paths["releases"], failed)
        partial = os.path.join(paths["releases"], ".%s.partial" % failed)
        if os.path.isdir(partial):
            shutil.rmtree(partial)
            out["removed_partial"].append(os.path.basename(partial))
            out["changed"] = True
        if os.path.isdir(src):
            os.makedirs(paths["archive"], exist_ok=True)
            dest = os.path.join(paths["archive"], failed)
            if os.path.exists(dest):
                dest += ".%d" % int(time.time())
            os.rename(src, dest)
            out["archived"] = os.path.basename(dest)
            out["changed"] = True
    if out["changed"]:
        append_revision(app_root, dict(p.get("log_entry") or {}, action="rollback",
                                       release=target, version=parse_name(target)[0] if target
                                       else None, previous=before, failed=failed,
                                       reversed=out["reversed"], restored=out["restored"]))
    out["running"] = pid_alive(p.get("pidfile") or "") is not None
    return out


def cleanup(p, check):
    app_root = p["app_root"]
    cur = current_name(app_root)
    protected = [cur, previous_of(app_root, cur) if cur else None] + list(p.get("protect") or [])
    delete, kept = choose_cleanup(releases(app_root), int(p.get("keep") or 5), protected)
    if not check:
        for n in delete:
            # Re-read current just before each delete: never remove the live release.
            if n == current_name(app_root):
                continue
            shutil.rmtree(os.path.join(_paths(app_root)["releases"], n))
    return {"changed": bool(delete), "deleted": delete, "kept": kept, "current": cur}


def activate(p, check):
    """migrate + switch + cleanup in one round trip (the steps after the unpack)."""
    out = {"migrate": migrate(p, check), "switch": switch(p, check)}
    out["cleanup"] = cleanup(p, check) if p.get("keep") else {"deleted": [], "kept": []}
    out["changed"] = any(v.get("changed") for v in out.values())
    out["running"] = out["switch"]["running"]
    return out


ACTIONS = {"unpack": unpack, "migrate": migrate, "switch": switch, "rollback": rollback,
           "cleanup": cleanup, "activate": activate}


def run(p, check=False):
    started = time.time()
    out = probe(p) if p["action"] == "probe" else ACTIONS[p["action"]](p, check)
    out["seconds"] = round(time.time() - started, 3)
    return out


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=dict(
        action=dict(type="str", required=True,
                    choices=["probe", "unpack", "migrate", "switch", "rollback", "cleanup",
                             "activate"]),
        app_root=dict(type="path", required=True),
        name=dict(type="str"),
        tarball=dict(type="path"),
        remove_tarball=dict(type="bool", default=True),
        revision=dict(type="dict", default={}),
        database=dict(type="path"),
        backup=dict(type="path"),
        backup_always=dict(type="bool", default=False),
        target=dict(type="str"),
        failed=dict(type="str"),
        keep_migrations=dict(type="list", elements="str"),
        keep_from_target=dict(type="bool", default=False),
        keep=dict(type="int", default=5),
        protect=dict(type="list", elements="str", default=[]),
        pidfile=dict(type="path"),
        log=dict(type="path"),
        health=dict(type="bool", default=False),
        health_url=dict(type="str"),
        version_url=dict(type="str"),
        log_entry=dict(type="dict", default={}),
    ), supports_check_mode=True)
    try:
        result = run(module.params, module.check_mode)
    except ReleaseError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:
        module.fail_json(msg="mhops_release %s failed: %s: %s" % (
            module.params["action"], type(exc).__name__, exc), exception=traceback.format_exc())
    module.exit_json(**result)


if __name__ == "__main__":
    if "MHOPS_ARGS" in globals():
        _args = json.loads(MHOPS_ARGS)  # noqa: F821 - prepended by the caller
        try:
            print(json.dumps({"ok": True, "result": run(_args)}))
        except Exception as _exc:
            print(json.dumps({"ok": False, "error": "%s: %s" % (type(_exc).__name__, _exc)}))
    else:
        main()
