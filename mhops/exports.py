"""Machine-readable copies of a run record for the tools users already have.

Owns ``--junit FILE`` (JUnit XML for CI pipelines) and ``--prom-textfile DIR``
(``<DIR>/mhops_<kind>.prom`` for node_exporter's textfile collector): checking both
destinations before a run starts, redacting the record again (the caller may hold the
unredacted in-memory record), and writing each file atomically (temp file + rename in
the same folder; the temp name does not end in ``.prom``, so node_exporter never reads
a half-written file). Formats live in the ``junitprom`` leaf.

Works from any record with the inspection-like ``hosts[].results[]`` shape or the
drill shape: upgrade and security.audit call :func:`write_junit` / :func:`write_prom`
(or :func:`publish`) the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhops import junitprom
from mhops.errors import MhopsError
from mhops.redact import Redactor
from mhops.state import atomic_write


@dataclass(frozen=True)
class Targets:
    """Where a run's machine-readable outputs go (None: not wanted)."""

    junit: Path | None = None
    prom_dir: Path | None = None

    def check(self) -> None:
        """Refuse unusable destinations before the run, so a finished run never loses them."""
        if self.junit is not None:
            parent = Path(self.junit).parent
            if Path(self.junit).is_dir():
                raise MhopsError("--junit must name a file, not a folder", path=str(self.junit))
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise MhopsError("--junit: the folder does not exist or is not writable",
                                 path=str(parent))
        if self.prom_dir is not None:
            d = Path(self.prom_dir)
            if not d.is_dir() or not os.access(d, os.W_OK | os.X_OK):
                raise MhopsError("--prom-textfile: the folder does not exist or is not "
                                 "writable", path=str(d))


def prom_path(record: dict[str, Any], prom_dir: Path) -> Path:
    return Path(prom_dir) / f"mhops_{junitprom.kind_slug(record.get('kind'))}.prom"


def write_junit(record: dict[str, Any], path: Path,
                redactor: Redactor | None = None) -> Path:
    """Write the record as JUnit XML to `path` (atomically, mode 0644); return the path."""
    clean = (redactor or Redactor()).obj(record)
    atomic_write(Path(path), junitprom.junit_xml(clean).encode("utf-8"), mode=0o644)
    return Path(path)


def write_prom(record: dict[str, Any], prom_dir: Path,
               redactor: Redactor | None = None) -> Path:
    """Write ``<prom_dir>/mhops_<kind>.prom`` (atomically, 0644 for node_exporter)."""
    clean = (redactor or Redactor()).obj(record)
    path = prom_path(clean, prom_dir)
    atomic_write(path, junitprom.prom_text(clean).encode("utf-8"), mode=0o644)
    return path


def written_record(record_dir: Path | None, record: dict[str, Any]) -> dict[str, Any]:
    """The record as written (redacted with the run's own secrets), else the in-memory one."""
    if record_dir is not None:
        try:
            return json.loads((Path(record_dir) / "record.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            pass
    return record


def publish(outcome, targets: Targets, echo=print) -> list[Path]:
    """Write the outputs `targets` asks for from a finished run's Outcome."""
    if targets.junit is None and targets.prom_dir is None:
        return []
    record = written_record(outcome.record_dir, outcome.record)
    written = []
    if targets.junit is not None:
        written.append(write_junit(record, targets.junit))
    if targets.prom_dir is not None:
        written.append(write_prom(record, targets.prom_dir))
    for p in written:
        echo(str(p))
    return written
