#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The one read-only probe `invoke backup.check` runs where the backups are.

Owns everything a backup check learns from a host in a single round trip: the
backups of each folder that match a name pattern (size, time, manifest), the
newest one's sha256 and integrity (empty file; a custom-format dump pg_restore
cannot read; a plain, gzip or zstd SQL dump without its tool's completion footer
or with a cut compressed stream), and error lines in the backup job's log.
The judging (age against the RPO, shrink, manifest comparison, Nagios states)
stays with the controller in ``mhops.backup``.

The same text runs three ways: as the Ansible module ``mhops_backup_probe``
(``main()``); standalone as ``python3 -`` whose stdin is ``MHOPS_ARGS = '<json>'``
followed by this file (one JSON object on stdout; what Fabric runs on database
hosts); and imported by ``mhops.backup`` for folders on this machine. Python 3.8+
standard library only; it never changes anything.
"""

import datetime
import fnmatch
import gzip
import hashlib
import json
import os
import re
import subprocess
import time
import zlib

DOCUMENTATION = r"""
---
module: mhops_backup_probe
short_description: Read backup folders and a backup job log for invoke backup.check, read-only
options:
  targets:
    description: Folders to read, each C({name, folder, glob, ours, engine}).
    type: list
    elements: dict
    required: true
  deep:
    description: Read a custom-format dump completely with pg_restore, not only its list.
    type: bool
    default: true
  log:
    description: The backup job's log to scan, C({path, tail_bytes, patterns}), or null.
    type: dict
"""

NORMAL, CRITICAL = "normal", "critical"
EXTS = ("dump", "sql", "sql.gz", "sql.zst")
STAMP = re.compile(r"-(\d{8}T\d{6}Z)\.(?:dump|sql|sql\.gz|sql\.zst)$")
FOOTERS = {"mariadb": b"-- Dump completed", "postgresql": b"-- PostgreSQL database dump complete"}
PG_MAGIC = b"PGDMP"
ENGINES = ("postgresql", "mariadb")


# ------------------------------------------------------------------ pure rules

def has_footer(tail, engine):
    """Whether a plain SQL dump ends with its tool's completion comment.

    mariadb-dump/mysqldump write ``-- Dump completed on ...`` as their last line and
    pg_dump (plain) ``-- PostgreSQL database dump complete``; a dump cut short lacks it.
    Only the last non-blank lines count, so the phrase inside table data does not.
    """
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    want = FOOTERS[engine]
    if engine == "postgresql":
        # pg_dump 15.14+ ends with a \unrestrict line after the footer.
        lines = [ln for ln in lines if not ln.startswith(b"\\unrestrict")]
        return any(ln.startswith(want) for ln in lines[-2:])
    return bool(lines) and lines[-1].startswith(want)


def count_matches(lines, patterns):
    return {name: sum(1 for ln in lines if rx.search(ln)) for name, rx in patterns.items()}


def parse_time(text):
    """An ISO-8601 UTC time from a manifest as epoch seconds, or None."""
    try:
        when = datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def stem_of(name):
    for ext in sorted(EXTS, key=len, reverse=True):
        if name.endswith("." + ext):
            return name[: -len(ext) - 1]
    return name


# ------------------------------------------------------------------ file reading

def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tail_of(path, n=4096):
    with open(path, "rb") as fh:
        fh.seek(max(0, os.path.getsize(path) - n))
        return fh.read()


def _gzip_tail(path, n=4096):
    """Decompress the whole stream (a truncated .gz raises) and keep its last bytes."""
    tail = b""
    with gzip.open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            tail = (tail + block)[-n:]
    return tail


def _zstd_tail(path, n=4096):
    """Decompress with the zstd tool (it exits non-zero on a cut or corrupt frame)."""
    proc = subprocess.Popen(["zstd", "-q", "-d", "-c", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    tail = b""
    for block in iter(lambda: proc.stdout.read(1 << 20), b""):
        tail = (tail + block)[-n:]
    err = proc.stderr.read().decode("utf-8", "replace")
    if proc.wait() != 0:
        raise OSError("zstd: " + " ".join(err.split())[:300])
    return tail


def integrity(path, engine, deep=True):
    """(status, reason): empty, unreadable custom dump, SQL dump without its footer."""
    path = str(path)
    size = os.path.getsize(path)
    if size == 0:
        return CRITICAL, "the file is empty"
    with open(path, "rb") as fh:
        head = fh.read(5)
    if head == PG_MAGIC:
        r = subprocess.run(["pg_restore", "--list", path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
        if r.returncode != 0:
            return CRITICAL, "pg_restore --list cannot read it: " + " ".join(
                r.stderr.split())[:300]
        if deep:
            # --list reads only the table of contents; a full read finds a cut data part.
            r = subprocess.run(["pg_restore", "--file=/dev/null", path], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, universal_newlines=True, timeout=3600)
            if r.returncode != 0:
                return CRITICAL, "pg_restore cannot read the data: " + " ".join(
                    r.stderr.split())[:300]
        return NORMAL, "custom-format dump readable by pg_restore"
    try:
        if path.endswith(".gz"):
            tail = _gzip_tail(path)
        elif path.endswith(".zst"):
            tail = _zstd_tail(path)
        else:
            tail = tail_of(path)
    except (OSError, EOFError, zlib.error) as exc:
        return CRITICAL, "compressed file is truncated or corrupt: %s" % exc
    engines = [engine] if engine else list(ENGINES)
    if any(has_footer(tail, e) for e in engines):
        return NORMAL, "the dump ends with its completion footer"
    want = " or ".join(repr(FOOTERS[e].decode()) for e in engines)
    return CRITICAL, "no completion footer (%s): the dump is truncated or failed" % want


def list_files(folder, glob, ours):
    """Backups in `folder` matching `glob`, oldest first, with their manifests."""
    out = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if (name.startswith(".") or name.endswith(".manifest.json")
                or not fnmatch.fnmatchcase(name, glob) or not os.path.isfile(path)):
            continue
        if ours and not any(name.endswith("." + e) for e in EXTS):
            continue
        st = os.stat(path)
        mpath = os.path.join(folder, stem_of(name) + ".manifest.json")
        manifest, err = None, None
        if os.path.exists(mpath):
            try:
                with open(mpath) as fh:
                    manifest = json.load(fh)
                if not isinstance(manifest, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                manifest, err = None, "manifest unreadable: %s" % exc
        when = parse_time((manifest or {}).get("finished_at")) or st.st_mtime
        m = STAMP.search(name)
        out.append({"file": name, "size": st.st_size, "mtime": st.st_mtime, "when": when,
                    "stamp": m.group(1) if m else "", "manifest": manifest,
                    "manifest_error": err})
    if ours:
        out.sort(key=lambda f: (f["stamp"], f["when"]))
    else:
        out.sort(key=lambda f: (f["when"], f["file"]))
    return out


def probe_target(t, deep):
    folder = t["folder"]
    out = {"name": t["name"], "folder": folder, "exists": os.path.isdir(folder), "files": [],
           "newest": None, "error": None}
    if not out["exists"]:
        return out
    try:
        files = list_files(folder, t.get("glob") or "*", bool(t.get("ours", True)))
    except OSError as exc:
        out["error"] = "cannot read the folder: %s" % exc
        return out
    out["files"] = files
    if files:
        newest = files[-1]
        path = os.path.join(folder, newest["file"])
        engine = t.get("engine") or (newest["manifest"] or {}).get("engine")
        try:
            sha = sha256_of(path) if newest["manifest"] is not None else None
            status, why = integrity(path, engine if engine in ENGINES else None, deep)
        except (OSError, subprocess.SubprocessError) as exc:
            sha, status, why = None, CRITICAL, "cannot read the newest backup: %s" % exc
        out["newest"] = {"file": newest["file"], "sha256": sha,
                         "integrity": {"status": status, "reason": why}}
    return out


def scan_log(log):
    """Lines of the log's last `tail_bytes` that match each pattern: counts and samples."""
    path, n = log["path"], int(log.get("tail_bytes") or 262144)
    patterns = {k: re.compile(v) for k, v in (log.get("patterns") or {}).items()}
    out = {"path": path, "error": None, "counts": {}, "total": 0, "samples": []}
    try:
        raw = tail_of(path, n)
        size = os.path.getsize(path)
    except OSError as exc:
        out["error"] = "backup job log cannot be read (%s)" % (exc.strerror or exc)
        return out
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if size > n and lines:
        lines = lines[1:]  # the first line of the window is probably cut
    out["counts"] = count_matches(lines, patterns)
    out["total"] = sum(out["counts"].values())
    out["samples"] = [ln for ln in lines if any(rx.search(ln) for rx in patterns.values())][-3:]
    return out


def probe(args):
    started = time.time()
    deep = bool(args.get("deep", True))
    return {"targets": [probe_target(t, deep) for t in args.get("targets") or []],
            "log": scan_log(args["log"]) if args.get("log") else None,
            "host_time": started, "seconds": round(time.time() - started, 3)}


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={
        "targets": {"type": "list", "elements": "dict", "required": True},
        "deep": {"type": "bool", "default": True},
        "log": {"type": "dict"},
    }, supports_check_mode=True)
    module.exit_json(changed=False, **probe(module.params))


if __name__ == "__main__":
    if "MHOPS_ARGS" in globals():
        print(json.dumps(probe(json.loads(MHOPS_ARGS))))  # noqa: F821 - prepended by caller
    else:
        main()
