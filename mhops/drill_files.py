"""A drill's side of the backup folder contract, on whichever host holds the backups.

Owns choosing the backup (``latest`` = the newest ``<name>-<UTC stamp>`` in the file
name whose manifest exists, never mtime; a file without a manifest is still being
written), finding its manifest, and the ``<folder>/.in-use`` marks that keep
retention (``mhops_backup_files``) away from a backup a drill is using.

Standard library only and Python 3.8+: the same file is shipped to database hosts as
the ``mhops_drill`` role's module_utils (a symlink), so there is one copy of these rules.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile

FILE = re.compile(r"^(?P<name>.+)-(?P<stamp>\d{8}T\d{6}Z)\.(?P<ext>dump|sql|sql\.gz|sql\.zst)$")
FORMATS = {"dump": "custom", "sql": "sql", "sql.gz": "sql.gz", "sql.zst": "sql.zst"}
MANIFEST_MAX_BYTES = 16 << 20


class BackupNotFound(Exception):
    """The requested backup (or any complete one) is not there: bad input, not a drill failure."""


def parse_name(filename):
    """(logical name, UTC stamp, extension) of a backup file name, or None."""
    m = FILE.match(filename)
    return (m["name"], m["stamp"], m["ext"]) if m else None


def manifest_name(filename):
    parsed = parse_name(filename)
    if parsed is None:
        return filename + ".manifest.json"
    return f"{parsed[0]}-{parsed[1]}.manifest.json"


def pick_latest(filenames, name):
    """The backup of `name` with the newest stamp in its file name whose manifest is listed."""
    present = set(filenames)
    best = None
    for f in filenames:
        parsed = parse_name(f)
        if not parsed or parsed[0] != name or manifest_name(f) not in present:
            continue
        if best is None or parsed[1] > best[0]:
            best = (parsed[1], f)
    return best[1] if best else None


def locate(backup, folder, name):
    """Absolute path of the backup to drill: `backup` as given, or the latest in `folder`."""
    if backup and backup != "latest":
        path = os.path.abspath(os.path.expanduser(backup))
        if not os.path.isfile(path):
            raise BackupNotFound(f"backup file does not exist: {path}")
        return path
    if not folder or not name:
        raise BackupNotFound("no backup folder: set backup_dir on the database entry or "
                             "drill.backup_dir in invoke.yaml")
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise BackupNotFound(f"cannot list the backup folder {folder}: {exc.strerror}") from exc
    latest = pick_latest(names, name)
    if latest is None:
        raise BackupNotFound(f"no complete backup of {name} (file with its manifest) in {folder}")
    return os.path.join(folder, latest)


def manifest_of(path):
    """(path of the manifest next to backup `path`, problem); the caller judges the content."""
    mpath = os.path.join(os.path.dirname(path), manifest_name(os.path.basename(path)))
    if not os.path.isfile(mpath):
        return None, f"no manifest {os.path.basename(mpath)}: the backup is incomplete"
    if os.path.getsize(mpath) > MANIFEST_MAX_BYTES:
        return None, f"manifest {os.path.basename(mpath)} is implausibly large"
    return mpath, ""


def in_use_lines(folder):
    try:
        with open(os.path.join(folder, ".in-use")) as fh:
            return [ln.strip() for ln in fh if ln.strip()]
    except FileNotFoundError:
        return []


def mark(folder, basename):
    """List `basename` in ``<folder>/.in-use`` (another drill may list it too)."""
    _edit(folder, lambda lines: lines + [basename])


def release(folder, basename):
    """Remove one line naming `basename`: only ours, another drill may use the same backup."""
    found = []

    def drop(lines):
        if basename in lines:
            lines.remove(basename)
            found.append(basename)
        return lines
    _edit(folder, drop)
    return bool(found)


def _edit(folder, change):
    path = os.path.join(folder, ".in-use")
    fd = os.open(os.path.join(folder, ".in-use.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines = change(in_use_lines(folder))
        if not lines:
            if os.path.exists(path):
                os.unlink(path)
            return
        tfd, tmp = tempfile.mkstemp(prefix=".in-use.", dir=folder)
        try:
            with os.fdopen(tfd, "w") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    finally:
        os.close(fd)
