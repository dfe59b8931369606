"""Unattended inspections: the cron file (or systemd timer) on the control node.

Owns what ``invoke schedule.install/show/remove`` write: a file in /etc/cron.d (the
machines here have no systemd as PID 1) or a systemd service + timer pair, running
``invoke inspect`` from this checkout with its output appended to a log file. The
inspection's own lock keeps overlapping runs apart; cron itself schedules.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from mhops.errors import MhopsError
from mhops.state import atomic_write

REPO = Path(__file__).resolve().parent.parent
MARK = "# Managed by mhops: invoke schedule.install / schedule.remove"
KINDS = ("cron", "systemd")
_ITEM = r"(\*|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?"
_FIELD = re.compile(rf"^{_ITEM}(,{_ITEM})*$")
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
_NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(),
          4: "sun mon tue wed thu fri sat".split()}


@dataclass(frozen=True)
class Plan:
    """What will be written where."""

    files: dict[Path, str]


def check_cron(expr: str) -> str:
    """Validate a 5-field cron expression (or @daily-style macro); return it normalised."""
    expr = " ".join(expr.split())
    if expr in ("@hourly", "@daily", "@weekly", "@monthly", "@reboot"):
        return expr
    fields = expr.split(" ")
    if len(fields) != 5:
        raise MhopsError(f"schedule {expr!r}: need 5 cron fields "
                         "(minute hour day-of-month month day-of-week)")
    for i, f in enumerate(fields):
        if not _FIELD.match(f):
            raise MhopsError(f"schedule {expr!r}: field {i + 1} {f!r} is not valid cron syntax")
        lo, hi = _RANGES[i]
        for token in re.findall(r"[0-9A-Za-z]+", f.split("/")[0]):
            if token.isdigit():
                if not lo <= int(token) <= hi:
                    raise MhopsError(f"schedule {expr!r}: field {i + 1} value {token} "
                                     f"outside {lo}-{hi}")
            elif token.lower() not in _NAMES.get(i, ()):
                raise MhopsError(f"schedule {expr!r}: field {i + 1} name {token!r} not allowed")
    return expr


def _command(invoke_args: list[str], log: Path) -> str:
    invoke = Path(sys.executable).parent / "invoke"
    args = " ".join(shlex.quote(a) for a in invoke_args)
    return (f"cd {shlex.quote(str(REPO))} && {shlex.quote(str(invoke))} inspect {args}"
            f" >> {shlex.quote(str(log))} 2>&1").replace("  ", " ")


def plan(*, kind: str, when: str, user: str, log: Path, invoke_args: list[str],
         cron_file: Path, systemd_dir: Path) -> Plan:
    if kind not in KINDS:
        raise MhopsError(f"unknown schedule kind {kind!r}; valid: {', '.join(KINDS)}")
    if not re.fullmatch(r"[a-z_][a-z0-9_-]*", user):
        raise MhopsError(f"user {user!r} is not a valid account name")
    if kind == "cron":
        if "." in cron_file.name:
            # cron ignores /etc/cron.d files whose names contain a dot
            raise MhopsError(f"cron file name {cron_file.name!r} must not contain a dot")
        text = (f"{MARK}\nSHELL=/bin/sh\nPATH=/usr/local/bin:/usr/bin:/bin\nMAILTO=\"\"\n"
                f"{check_cron(when)} {user} {_command(invoke_args, log)}\n")
        return Plan({cron_file: text})
    service = (f"{MARK}\n[Unit]\nDescription=mhops scheduled inspection\n"
               f"After=network-online.target\n\n[Service]\nType=oneshot\nUser={user}\n"
               f"ExecStart=/bin/sh -c {shlex.quote(_command(invoke_args, log))}\n")
    timer = (f"{MARK}\n[Unit]\nDescription=mhops scheduled inspection\n\n[Timer]\n"
             f"OnCalendar={_calendar(when)}\nPersistent=true\n\n[Install]\n"
             "WantedBy=timers.target\n")
    return Plan({systemd_dir / "mhops-inspect.service": service,
                 systemd_dir / "mhops-inspect.timer": timer})


def _calendar(when: str) -> str:
    """A systemd OnCalendar= value for a simple cron expression (numbers and *)."""
    expr = check_cron(when)
    if expr.startswith("@"):
        return expr[1:]
    minute, hour, dom, month, dow = expr.split(" ")
    if not all(re.fullmatch(r"\*|[0-9]+(,[0-9]+)*", f) for f in (minute, hour, dom, month)) \
            or dow != "*":
        raise MhopsError(f"schedule {when!r}: for systemd give numbers or * "
                         "(no ranges, steps or day-of-week); or write OnCalendar yourself")
    return f"*-{month}-{dom} {hour}:{minute}:00"


def install(p: Plan, log: Path) -> list[Path]:
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
    for path, text in p.files.items():
        if path.exists() and MARK not in path.read_text():
            raise MhopsError("exists and is not managed by mhops; not overwriting",
                             path=str(path))
        # cron refuses group/world-writable files in /etc/cron.d
        atomic_write(path, text.encode(), mode=0o644)
        if path.read_text() != text:
            raise MhopsError("written content does not read back the same", path=str(path))
    return list(p.files)


def show(paths: list[Path]) -> dict[Path, str | None]:
    return {p: (p.read_text() if p.exists() else None) for p in paths}


def remove(paths: list[Path]) -> list[Path]:
    removed = []
    for p in paths:
        if p.exists():
            if MARK not in p.read_text():
                raise MhopsError("is not managed by mhops; not removing", path=str(p))
            p.unlink()
            removed.append(p)
    return removed
