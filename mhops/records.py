"""Run records: the JSON, Markdown and HTML the hospital reads.

Owns the run-folder layout (``<records>/<YYYYMMDDTHHMMSSZ>-<kind>/record.{json,md,html}``),
rendering through the Jinja2 templates and label files in ``reports/``, redaction of
the whole record before anything is rendered or written, and the atomic publish
(a hidden temp folder renamed into place, so a crash or a full disk leaves no
partial run folder). Also records provenance: the ops repo's git revision.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml

from mhops.errors import MhopsError
from mhops.redact import Redactor

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "reports"
LANGS = ("zh-CN", "en")


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def local_iso(dt: datetime, tz: str) -> str:
    """The same instant in the hospital's time zone (falls back to the machine's)."""
    try:
        from zoneinfo import ZoneInfo
        return dt.astimezone(ZoneInfo(tz)).isoformat()
    except Exception:  # no tz database: the machine's local time is still useful
        return dt.astimezone().isoformat()


@dataclass
class Outcome:
    """What a recorded run returns to its task: the exit code and the record it wrote."""

    exit_code: int
    record_dir: Path | None
    record: dict[str, Any]


def parse_time(text: Any) -> datetime | None:
    """An ISO-8601 time as written in records and manifests ('Z' or an offset); naive = UTC."""
    if not text:
        return None
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def time_block(started: datetime, finished: datetime, tz: str) -> dict[str, Any]:
    """A run's start and end in UTC and in the hospital's time zone."""
    return {"started_utc": iso(started), "finished_utc": iso(finished),
            "started_local": local_iso(started, tz), "finished_local": local_iso(finished, tz),
            "timezone": tz, "duration_s": round((finished - started).total_seconds(), 1)}


def operator_name(configured: str = "") -> str:
    """执行人: from config or flag, else $MHOPS_OPERATOR, else the login name."""
    return configured or os.environ.get("MHOPS_OPERATOR") or getpass.getuser()


def run_id(kind: str, started: datetime) -> str:
    return f"{started.astimezone(UTC):%Y%m%dT%H%M%SZ}-{kind}"


def ops_revision() -> str:
    """The ops repo's commit, marked dirty when the working tree differs from it."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if dirty else rev


@cache
def labels(lang: str) -> dict[str, Any]:
    """Labels for `lang`: ``i18n/<lang>.yml`` plus one file per record kind in ``<lang>.d/``."""
    if lang not in LANGS:
        raise MhopsError(f"unknown language {lang!r}; valid: {', '.join(LANGS)}")
    merged: dict[str, Any] = {}
    base = TEMPLATES / "i18n"
    for path in [base / f"{lang}.yml", *sorted((base / f"{lang}.d").glob("*.yml"))]:
        with open(path, encoding="utf-8") as fh:
            for key, value in (yaml.safe_load(fh) or {}).items():
                if isinstance(value, dict) and isinstance(merged.get(key), dict):
                    merged[key] = {**merged[key], **value}
                else:
                    merged[key] = value
    return merged


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                            default_for_string=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["num"] = lambda v: (f"{v:.2f}".rstrip("0").rstrip(".")
                                    if isinstance(v, float) else ("" if v is None else v))
    env.filters["mdcell"] = lambda v: str("" if v is None else v).replace("|", "\\|").replace(
        "\n", " ")
    return env


def render(kind: str, record: dict[str, Any], fmt: str) -> str:
    """Render a (redacted) record with ``reports/<kind>.<fmt>.j2``."""
    lang = record.get("lang", "zh-CN")
    return _env().get_template(f"{kind}.{fmt}.j2").render(r=record, L=labels(lang))


def write_run(records_dir: Path, kind: str, record: dict[str, Any],
              redactor: Redactor | None = None) -> Path:
    """Redact, render and publish one run folder atomically; return its path."""
    redactor = redactor or Redactor()
    clean = redactor.obj(record)
    files = {
        "record.json": json.dumps(clean, ensure_ascii=False, indent=2, sort_keys=False) + "\n",
        "record.md": render(kind, clean, "md"),
        "record.html": render(kind, clean, "html"),
    }
    records_dir = Path(records_dir)
    records_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = Path(tempfile.mkdtemp(prefix=f".{clean['run_id']}.", dir=records_dir))
    try:
        for name, text in files.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        final = records_dir / clean["run_id"]
        n = 1
        while final.exists():  # two runs in the same second keep both records
            n += 1
            final = records_dir / f"{clean['run_id']}-{n}"
        os.chmod(tmp, 0o700)
        os.rename(tmp, final)
        fd = os.open(records_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
