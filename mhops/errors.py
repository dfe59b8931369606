"""Errors that end a run as failed (exit 3): bad input or an internal fault (a pure leaf).

A message names the file, and the line where one is known, so an operator can
fix the input without reading a traceback.
"""

from __future__ import annotations


class MhopsError(Exception):
    """The run itself failed: nothing was written, exit code 3."""

    exit_code = 3

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None):
        self.path, self.line = path, line
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class LockedError(MhopsError):
    """Another run holds the lock for the same state."""
