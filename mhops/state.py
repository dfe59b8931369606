"""Control-node state that must survive between runs: log cursors and run locks.

Owns the layout of the state folder (``cursors/<host>.json``, the same files the
``mhops_inspect`` role reads and writes under plain ansible-playbook), atomic
writes of those files, and the advisory lock that stops two runs writing the same
cursors at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mhops.errors import LockedError, MhopsError


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write via a temp file in the same folder and rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with _quiet():
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _quiet() -> Iterator[None]:
    try:
        yield
    except OSError:
        pass


def cursor_path(state_dir: Path, host: str) -> Path:
    return Path(state_dir) / "cursors" / f"{host}.json"


def load_cursors(state_dir: Path, host: str) -> dict[str, Any]:
    path = cursor_path(state_dir, host)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise MhopsError(f"cursor file is unreadable or corrupt ({exc}); move it aside to "
                         "start that host's log counting afresh", path=str(path)) from exc
    if not isinstance(data, dict):
        raise MhopsError("cursor file does not hold a mapping", path=str(path))
    return data


def save_cursors(state_dir: Path, host: str, cursors: dict[str, Any]) -> None:
    data = json.dumps(cursors, sort_keys=True, indent=1).encode()
    atomic_write(cursor_path(state_dir, host), data)


@contextmanager
def locked(state_dir: Path, name: str) -> Iterator[Path]:
    """Hold ``<state_dir>/<name>.lock`` for the duration, or raise LockedError at once."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = state_dir / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise LockedError(f"another {name} run is in progress ({holder}); "
                              "wait for it to finish", path=str(path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}".encode(), 0)
        yield path
    finally:
        os.close(fd)
