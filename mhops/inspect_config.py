"""Inspection settings per host: role defaults under inventory variables, checked.

Owns turning a host's ``mhops_inspect_*`` variables (over the role's
``defaults/main.yml``) into the collector's arguments and the host's merged
thresholds, and rejecting bad input with the file and line it came from.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.inventory import Host

ROLE_DEFAULTS = Path(__file__).resolve().parent.parent / "roles/mhops_inspect/defaults/main.yml"
P = "mhops_inspect_"

# collector argument -> expected type(s); the variable is mhops_inspect_<argument>.
_ARGS: dict[str, tuple[type, ...]] = {
    "cpu_sample_seconds": (int, float),
    "command_timeout": (int, float),
    "processes": (list,),
    "services": (list,),
    "ports": (list,),
    "ports_allowed": (list,),
    "http": (list,),
    "tls": (list,),
    "logs": (list,),
    "system_logs": (str, list),
    "system_log_patterns": (dict,),
    "initial_position": (str,),
    "max_samples": (int,),
    "max_read_bytes": (int,),
}


@lru_cache(maxsize=1)
def role_defaults() -> dict[str, Any]:
    with open(ROLE_DEFAULTS, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


class _Checker:
    def __init__(self, host: Host):
        self.host = host

    def fail(self, key: str, message: str) -> MhopsError:
        path, line = self.host.where(key)
        if path is None:  # a nested key without its own origin: use its variable's
            path, line = self.host.where(key.split(".")[0].split("[")[0])
        return MhopsError(f"host {self.host.name}: {key}: {message}", path=path, line=line)

    def regex(self, key: str, value: Any) -> None:
        if not isinstance(value, str):
            raise self.fail(key, f"must be a regular expression string, got {value!r}")
        try:
            re.compile(value)
        except re.error as exc:
            raise self.fail(key, f"invalid regular expression {value!r}: {exc}") from None

    def mapping_list(self, key: str, items: list, required: tuple[str, ...]) -> None:
        for i, item in enumerate(items):
            k = f"{key}[{i}]"
            if not isinstance(item, dict):
                raise self.fail(k, f"must be a mapping with {', '.join(required)}, got {item!r}")
            for r in required:
                if not item.get(r):
                    raise self.fail(k, f"missing {r!r}")


def collector_args(host: Host) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The collector's arguments and merged thresholds for `host`, or MhopsError."""
    defaults = role_defaults()
    v = host.vars
    chk = _Checker(host)
    known = {P + a for a in _ARGS} | {P + s for s in (
        "thresholds", "threshold_overrides", "timeout", "state_dir", "cursor_commit")}
    for key in v:
        if key.startswith(P) and key not in known:
            raise chk.fail(key, "unknown setting; valid: " + ", ".join(sorted(known)))
    args: dict[str, Any] = {}
    for arg, types in _ARGS.items():
        key = P + arg
        value = v.get(key, defaults.get(key))
        if isinstance(value, bool) or not isinstance(value, types):
            raise chk.fail(key, f"must be {' or '.join(t.__name__ for t in types)}, "
                                f"got {type(value).__name__} {value!r}")
        if isinstance(value, (int, float)) and value < 0:
            raise chk.fail(key, f"must not be negative, got {value}")
        args[arg] = value
    _check_lists(chk, args)
    try:
        merged = th.merge(
            th.DEFAULT_THRESHOLDS,
            th.validate(v.get(P + "thresholds", defaults.get(P + "thresholds")),
                        P + "thresholds"),
            th.validate(v.get(P + "threshold_overrides"), P + "threshold_overrides"),
        )
    except th.ThresholdError as exc:
        key = exc.key if exc.key.startswith(P) else P + "thresholds." + exc.key
        raise chk.fail(key, exc.reason) from None
    timeout = v.get(P + "timeout", defaults.get(P + "timeout"))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise chk.fail(P + "timeout", f"must be a positive number, got {timeout!r}")
    args["_timeout"] = timeout
    return args, merged


def _port(value: Any) -> bool:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return not isinstance(value, bool) and isinstance(value, int) and 0 < value < 65536


def _check_lists(chk: _Checker, a: dict[str, Any]) -> None:
    chk.mapping_list(P + "processes", a["processes"], ("name", "match"))
    for i, p in enumerate(a["processes"]):
        chk.regex(f"{P}processes[{i}].match", p["match"])
    for i, s in enumerate(a["services"]):
        if not isinstance(s, str) or not s:
            raise chk.fail(f"{P}services[{i}]", f"must be a service name, got {s!r}")
    for i, port in enumerate(a["ports"]):
        if not _port(port):
            raise chk.fail(f"{P}ports[{i}]", f"must be a TCP port 1-65535, got {port!r}")
    for i, port in enumerate(a["ports_allowed"]):
        lo, _, hi = str(port).partition("-")
        if not (_port(port) or (isinstance(port, str) and _port(lo) and _port(hi)
                                and int(lo) <= int(hi))):
            raise chk.fail(f"{P}ports_allowed[{i}]",
                           f"must be a TCP port or a range like '32768-60999', got {port!r}")
    chk.mapping_list(P + "http", a["http"], ("name", "url"))
    for i, h in enumerate(a["http"]):
        if not str(h["url"]).startswith(("http://", "https://")):
            raise chk.fail(f"{P}http[{i}].url", f"must be an http(s) URL, got {h['url']!r}")
    chk.mapping_list(P + "tls", a["tls"], ("name", "host"))
    chk.mapping_list(P + "logs", a["logs"], ("path", "patterns"))
    for i, log in enumerate(a["logs"]):
        if not str(log["path"]).startswith("/"):
            raise chk.fail(f"{P}logs[{i}].path", f"must be an absolute path, got {log['path']!r}")
        if not isinstance(log["patterns"], dict):
            raise chk.fail(f"{P}logs[{i}].patterns", "must map a pattern name to a regex")
        for name, rx in log["patterns"].items():
            chk.regex(f"{P}logs[{i}].patterns.{name}", rx)
    for name, rx in a["system_log_patterns"].items():
        chk.regex(f"{P}system_log_patterns.{name}", rx)
    sl = a["system_logs"]
    if isinstance(sl, str) and sl not in ("auto", "none"):
        raise chk.fail(P + "system_logs", f"must be auto, none or a list of paths, got {sl!r}")
    if a["initial_position"] not in ("start", "end"):
        raise chk.fail(P + "initial_position",
                       f"must be start or end, got {a['initial_position']!r}")
