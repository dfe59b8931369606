#!/usr/bin/python
"""Backup files on the database host: publish a finished dump, apply retention.

Owns the on-disk contract shared with restore drills: ``<dir>/<name>-<ts>.<ext>``
published by rename only after an fsync, then ``<stem>.manifest.json`` written
atomically last (a file without a manifest is incomplete), and retention that
keeps the newest good backups and every backup named in ``<dir>/.in-use``.
Runs on the database host (Python 3.8+, standard library only).
"""

import hashlib
import json
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: mhops_backup_files
short_description: Publish a finished backup with its manifest, or apply retention
options:
  action: {type: str, required: true, choices: [publish, retention]}
  temp: {type: path, description: finished dump under its temporary name (publish)}
  final: {type: path, description: final path of the dump (publish)}
  manifest: {type: dict, description: manifest fields known before publishing}
  dir: {type: path, description: the database's backup folder (retention)}
  name: {type: str, description: the database's logical name (retention)}
  keep: {type: int, default: 7, description: good backups to keep (at least 1)}
  assume_new: {type: bool, default: false, description: plan as if one more good backup existed}
"""

STAMP = r"\d{8}T\d{6}Z"
EXTS = ("dump", "sql", "sql.gz")


def _fsync_path(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(temp, final, manifest):
    """fsync the dump, rename it into place, then write its manifest atomically."""
    if os.path.exists(final):
        raise ValueError(f"refusing to overwrite existing backup {final}")
    size = os.path.getsize(temp)
    if size == 0:
        raise ValueError(f"the dump tool wrote an empty file {temp}")
    os.chmod(temp, 0o600)  # patient data: the dump tools follow the umask
    _fsync_path(temp)
    sha = _sha256(temp)
    os.rename(temp, final)
    folder = os.path.dirname(final)
    _fsync_path(folder)
    manifest = dict(manifest, file=os.path.basename(final), sha256=sha, size=size)
    stem = os.path.basename(final)
    for ext in EXTS:
        if stem.endswith("." + ext):
            stem = stem[: -len(ext) - 1]
            break
    target = os.path.join(folder, stem + ".manifest.json")
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".manifest.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.rename(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(folder)
    return manifest, target


def list_backups(folder, name):
    """Every ``<name>-<ts>.<ext>`` in `folder`: (stamp, file, manifest or None, good)."""
    rx = re.compile(r"^{}-({})\.({})$".format(re.escape(name), STAMP,
                                          "|".join(re.escape(e) for e in EXTS)))
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        m = rx.match(entry)
        if not m:
            continue
        path = os.path.join(folder, entry)
        mpath = os.path.join(folder, f"{name}-{m.group(1)}.manifest.json")
        manifest, good = None, False
        try:
            with open(mpath) as fh:
                manifest = json.load(fh)
            good = (manifest.get("file") == entry
                    and manifest.get("size") == os.path.getsize(path))
        except (OSError, ValueError, AttributeError):
            manifest = None
        found.append({"stamp": m.group(1), "file": entry, "path": path,
                      "manifest": mpath if manifest is not None else None, "good": good})
    return found


def read_in_use(folder):
    try:
        with open(os.path.join(folder, ".in-use")) as fh:
            return {line.strip() for line in fh if line.strip() and not line.startswith("#")}
    except FileNotFoundError:
        return set()


def retention_plan(backups, keep, in_use, assume_new=False):
    """Which good backups to delete: beyond the `keep` newest, never the newest good one,
    never one named in `in_use` (by file, stem or manifest name). Incomplete or
    mismatched backups are left alone for an operator to look at."""
    keep = max(1, int(keep))
    good = sorted((b for b in backups if b["good"]), key=lambda b: b["stamp"], reverse=True)
    slots = keep - 1 if assume_new else keep
    delete = []
    for i, b in enumerate(good):
        stem = b["file"].split(".", 1)[0]
        names = {b["file"], stem, stem + ".manifest.json"}
        if i == 0 or i < slots or names & in_use:
            continue
        delete.append(b)
    return delete


def retention(module, folder, name, keep, assume_new):
    backups = list_backups(folder, name)
    in_use = read_in_use(folder)
    delete = retention_plan(backups, keep, in_use, assume_new)
    if not module.check_mode:
        for b in delete:
            # Manifest first: an interrupted delete leaves an incomplete backup, never a
            # manifest pointing at nothing.
            if b["manifest"]:
                os.unlink(b["manifest"])
            os.unlink(b["path"])
        if delete:
            _fsync_path(folder)
    gone = {b["file"] for b in delete}
    return {
        "deleted": sorted(gone),
        "kept": [b["file"] for b in backups if b["good"] and b["file"] not in gone],
        "in_use": sorted(in_use),
        "incomplete": [b["file"] for b in backups if not b["good"]],
        "changed": bool(delete),
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ["publish", "retention"]},
            "temp": {"type": "path"},
            "final": {"type": "path"},
            "manifest": {"type": "dict", "default": {}},
            "dir": {"type": "path"},
            "name": {"type": "str"},
            "keep": {"type": "int", "default": 7},
            "assume_new": {"type": "bool", "default": False},
        },
        required_if=[("action", "publish", ("temp", "final")),
                     ("action", "retention", ("dir", "name"))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["action"] == "publish":
            if module.check_mode:
                module.exit_json(changed=True, manifest={}, path=p["final"])
            manifest, target = publish(p["temp"], p["final"], p["manifest"])
            module.exit_json(changed=True, manifest=manifest, manifest_path=target,
                             path=p["final"])
        module.exit_json(**retention(module, p["dir"], p["name"], p["keep"], p["assume_new"]))
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
