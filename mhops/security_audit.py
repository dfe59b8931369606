"""Security audit: ``invoke security.audit`` from host selection to exit code.

Owns the audit run: read each host's ``mhops_security_audit_*`` settings (over the
role's defaults, falling back to the group's inspection settings for allowed ports and
TLS endpoints), hold the audit lock, run the one collector per host (Fabric, or the
``mhops_security_audit`` role through ansible-runner), judge every check normal /
warning / critical / unknown with value, threshold, explanation and suggested
resolution, write the ``security_audit`` record, and only then commit the auth-log
cursors (``<state>/security_audit/cursors/<host>.json``), so the next audit counts only
new lines and a failed run is simply counted again.

Auth log parsing is ``mhops.authlog``; pending updates are ``mhops.pkgupdates`` (the
same parser ``invoke patch`` plans with).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from mhops import authlog, pkgupdates, records, remote, state
from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.inventory import Host, select
from mhops.redact import Redactor
from mhops.thresholds import CRITICAL, NORMAL, UNKNOWN, WARNING, Result

REPO = Path(__file__).resolve().parent.parent
COLLECTOR = REPO / "library" / "mhops_security_audit.py"
ROLE_DEFAULTS = REPO / "roles" / "mhops_security_audit" / "defaults" / "main.yml"
P = "mhops_security_audit_"
SCHEMA_VERSION = 1
KIND = "security_audit"
TRANSPORTS = ("fabric", "ansible")
TLS_VERSIONS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")

# key -> (warning, critical, higher_is_worse)
DEFAULT_LEVELS: dict[str, tuple[float, float, bool]] = {
    "failed_logins": (10, 100, True),
    "sudo_failures": (1, 10, True),
    "security_updates": (1, 20, True),
    "world_writable": (1, 50, True),
    "antivirus_age_hours": (48, 168, True),
    "tls_days_left": (30, 7, False),
}

_TYPES: dict[str, tuple[type, ...]] = {
    "auth_logs": (str, list), "initial_position": (str,), "max_read_bytes": (int,),
    "max_lines": (int,), "login_allowlist": (list,), "bruteforce": (dict,),
    "ports_allowed": (list, type(None)), "sshd_expect": (dict,), "sshd_config": (str,),
    "firewall_required": (bool,), "antivirus_required": (bool,), "app_dirs": (list,),
    "max_files": (int,), "tls": (list, type(None)), "tls_min_version": (str,),
    "apt_options": (list,), "thresholds": (dict,), "command_timeout": (int, float),
    "timeout": (int, float), "state_dir": (str,), "cursor_commit": (bool,), "args": (dict,),
}


# ---------------------------------------------------------------- settings


@lru_cache(maxsize=1)
def role_defaults() -> dict[str, Any]:
    with open(ROLE_DEFAULTS, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


@dataclass
class Settings:
    args: dict[str, Any]        # what the collector receives
    allowlist: list             # networks
    bruteforce: tuple[int, float]
    ports_allowed: list[str]
    sshd_expect: dict[str, list[str]]
    firewall_required: bool
    antivirus_required: bool
    tls_min_version: str
    levels: dict[str, tuple[float, float, bool]]
    timeout: float


def _fail(host: Host, key: str, message: str) -> MhopsError:
    path, line = host.where(key)
    return MhopsError(f"host {host.name}: {key}: {message}", path=path, line=line)


def host_settings(host: Host) -> Settings:
    """The checked settings of `host`, or MhopsError naming the file and line."""
    from mhops.inspect_config import collector_args

    d, v = role_defaults(), host.vars
    for key in v:
        if key.startswith(P) and key[len(P):] not in _TYPES:
            raise _fail(host, key, "unknown setting; valid: "
                        + ", ".join(P + k for k in sorted(_TYPES)))
    s: dict[str, Any] = {}
    for name, types in _TYPES.items():
        value = v.get(P + name, d.get(P + name))
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise _fail(host, P + name, f"must be {' or '.join(t.__name__ for t in types)}, "
                                        f"got {value!r}")
        s[name] = value
    if s["initial_position"] not in ("start", "end"):
        raise _fail(host, P + "initial_position", "must be start or end")
    if s["tls_min_version"] not in TLS_VERSIONS:
        raise _fail(host, P + "tls_min_version", f"must be one of {', '.join(TLS_VERSIONS)}")
    try:
        nets = authlog.networks(s["login_allowlist"])
    except ValueError as exc:
        raise _fail(host, P + "login_allowlist", str(exc)) from None
    bf = s["bruteforce"]
    if set(bf) - {"failures", "window_s"} or not all(
            isinstance(bf.get(k), (int, float)) and not isinstance(bf.get(k), bool)
            and bf[k] > 0 for k in ("failures", "window_s")):
        raise _fail(host, P + "bruteforce", "must be {failures: N > 0, window_s: S > 0}")
    for i, path in enumerate(s["app_dirs"]):
        if not str(path).startswith("/"):
            raise _fail(host, f"{P}app_dirs[{i}]", f"must be an absolute path, got {path!r}")
    levels = dict(DEFAULT_LEVELS)
    for key, lv in s["thresholds"].items():
        if key not in levels or not isinstance(lv, dict) or set(lv) - {"warning", "critical"}:
            raise _fail(host, P + "thresholds", f"{key}: valid keys {', '.join(levels)}, "
                                                "each {warning: N, critical: N}")
        w, c, hi = levels[key]
        for lvl, val in lv.items():
            if isinstance(val, bool) or not isinstance(val, (int, float)) or val < 0:
                raise _fail(host, P + "thresholds", f"{key}.{lvl} must be a number >= 0")
        levels[key] = (lv.get("warning", w), lv.get("critical", c), hi)
    inspect_args, _ = collector_args(host)
    ports = s["ports_allowed"]
    if ports is None:
        ports = [*inspect_args["ports"], *inspect_args["ports_allowed"]]
    tls = s["tls"] if s["tls"] is not None else inspect_args["tls"]
    args = {"auth_logs": s["auth_logs"], "initial_position": s["initial_position"],
            "max_read_bytes": s["max_read_bytes"], "max_lines": s["max_lines"],
            "app_dirs": list(s["app_dirs"]), "max_files": s["max_files"], "tls": list(tls),
            "apt_options": list(s["apt_options"]), "sshd_config": s["sshd_config"],
            "command_timeout": s["command_timeout"]}
    return Settings(args=args, allowlist=nets,
                    bruteforce=(int(bf["failures"]), float(bf["window_s"])),
                    ports_allowed=[str(p) for p in ports],
                    sshd_expect={k.lower(): [str(x).lower() for x in vals]
                                 for k, vals in s["sshd_expect"].items()},
                    firewall_required=s["firewall_required"],
                    antivirus_required=s["antivirus_required"],
                    tls_min_version=s["tls_min_version"], levels=levels,
                    timeout=float(s["timeout"]))


# ---------------------------------------------------------------- judging (pure)

def _words(lang: str) -> dict[str, str]:
    return records.labels(lang)["security_words"]


def _fix(check: str, lang: str) -> str:
    return records.labels(lang)["security_fix"].get(check, "")


def _res(check: str, status: str, lang: str, **kw: Any) -> Result:
    r = Result(check=check, target=kw.pop("target", ""), status=status, **kw)
    if status in (WARNING, CRITICAL):
        r.resolution = _fix(kw.get("extra", {}).get("fix", check), lang) or _fix(check, lang)
    r.extra.pop("fix", None)
    return r


def _level(key: str, value: float | None, levels: dict, lang: str, check: str,
           target: str = "", unit: str = "", text: str = "", **extra: Any) -> Result:
    w, c, hi = levels[key]

    def worse(limit: float) -> bool:
        return value >= limit if hi else value <= limit
    if value is None:
        status = UNKNOWN
    elif worse(c):
        status = CRITICAL
    elif worse(w):
        status = WARNING
    else:
        status = NORMAL
    return _res(check, status, lang, target=target, value=value, unit=unit, warning=w,
                critical=c, explanation=text, extra=dict(extra, fix=key))


def judge(raw: dict[str, Any], st: Settings, lang: str = "zh-CN") -> tuple[list[Result],
                                                                             dict[str, Any]]:
    """All results for one host, and the login details kept in the record."""
    w = _words(lang)
    out: list[Result] = []
    now = records.parse_time(raw.get("collected_at"))
    offset = timedelta(seconds=int(raw.get("utc_offset_s") or 0))
    year = int(raw.get("year") or (now.year if now else 1970))
    events: list[authlog.AuthEvent] = []
    logs = raw.get("auth") or []
    if not logs:
        out.append(_res("auth_log", UNKNOWN, lang, explanation=w["no_log"]))
    for log in logs:
        if log.get("error"):
            out.append(_res("auth_log", CRITICAL, lang, target=log["path"],
                            explanation=log["error"]))
            continue
        events += authlog.parse(log.get("lines") or [], year, offset, now)
        notes = [w[word] for key, word in (("cursor_reset", "reset"), ("truncated", "truncated"))
                 if log.get(key)]
        if notes:
            out.append(_res("auth_log", WARNING, lang, target=log["path"],
                            explanation="; ".join(notes)))
    sources = authlog.by_source(events)
    failed = sum(r["failed"] for r in sources)
    accepted = sum(r["accepted"] for r in sources)
    out.append(_level("failed_logins", failed if logs else None, st.levels, lang,
                      "failed_logins", text=f"{failed} {w['failed']} ({w['since']}), "
                      f"{sum(1 for r in sources if r['failed'])} {w['sources']}",
                      by_source=[r for r in sources if r["failed"]][:50]))
    found = authlog.bursts(events, *st.bruteforce)
    out.append(_res("bruteforce", (WARNING if found else NORMAL) if logs else UNKNOWN, lang,
                    value=len(found), target=f"≥{st.bruteforce[0]}/{st.bruteforce[1]:g}s",
                    explanation=f"{len(found)} {w['bursts']}" + (
                        ": " + ", ".join(f"{b['source']} ({b['failures']})"
                                         for b in found[:10]) if found else ""),
                    extra={"bursts": found[:50]}))
    out.append(_res("successful_logins", NORMAL if logs else UNKNOWN, lang, value=accepted,
                    explanation=f"{accepted} {w['logins']} ({w['since']})",
                    extra={"by_source": [r for r in sources if r["accepted"]][:50]}))
    if st.allowlist:
        bad = authlog.outside(events, st.allowlist)
        n = sum(b["logins"] for b in bad)
        out.append(_res("logins_outside_allowlist", CRITICAL if bad else NORMAL, lang, value=n,
                        explanation=f"{n} {w['outside']}" + (
                            ": " + ", ".join(b["source"] for b in bad[:10]) if bad else ""),
                        extra={"logins": bad[:50]}))
    else:
        out.append(_res("logins_outside_allowlist", UNKNOWN, lang,
                        explanation=w["no_allowlist"]))
    sudo = authlog.sudo_failures(events)
    n_sudo = sum(s["count"] for s in sudo)
    out.append(_level("sudo_failures", n_sudo if logs else None, st.levels, lang,
                      "sudo_failures", text=f"{n_sudo} {w['sudo']} ({w['since']})",
                      failures=sudo[:50]))
    out.append(_ports(raw, st, lang, w))
    out += _sshd(raw.get("sshd") or {}, st, lang, w)
    out.append(_updates(raw.get("updates") or {}, st, lang, w))
    out.append(_firewall(raw.get("firewall") or {}, st, lang, w))
    out.append(_antivirus(raw.get("antivirus") or {}, st, lang, w))
    out.append(_world_writable(raw.get("world_writable") or {}, st, lang, w))
    for t in raw.get("tls") or []:
        out += _tls(t, st, lang, w)
    details = {"by_source": sources[:100], "bursts": found[:50], "sudo_failures": sudo[:50]}
    return out, details


def _port_allowed(port: int, allowed: list[str]) -> bool:
    for item in allowed:
        lo, _, hi = str(item).partition("-")
        if lo.isdigit() and (int(lo) <= port <= int(hi or lo)):
            return True
    return False


def _ports(raw, st: Settings, lang, w) -> Result:
    ports = sorted({p["port"] for p in raw.get("listening") or []})
    bad = [p for p in ports if not _port_allowed(p, st.ports_allowed)]
    return _res("listening_ports", WARNING if bad else NORMAL, lang, value=len(bad),
                target=",".join(map(str, bad[:30])),
                explanation=(f"{w['unexpected']}: {', '.join(map(str, bad[:30]))}" if bad
                             else w["expected"]),
                extra={"listening": ports, "allowed": st.ports_allowed})


def _sshd(sshd, st: Settings, lang, w) -> list[Result]:
    if not sshd.get("source"):
        return [_res("sshd", UNKNOWN, lang, explanation=w["not_installed"])]
    values = {str(k).lower(): str(v).lower() for k, v in sshd.get("settings") or []}
    out = []
    for key, allowed in st.sshd_expect.items():
        value = values.get(key)
        if value is None and key == "protocol":
            out.append(_res("sshd", NORMAL, lang, target=key, value="2",
                            explanation=w["not_listed"]))
            continue
        ok = value in allowed
        status = NORMAL if ok else (CRITICAL if key == "permitrootlogin" and value == "yes"
                                    else WARNING)
        out.append(_res("sshd", status if value is not None else UNKNOWN, lang, target=key,
                        value=value, explanation=f"{key} {value} ({w['allowed']}: "
                        f"{', '.join(allowed)}; {sshd['source']})"))
    return out


def _updates(up, st: Settings, lang, w) -> Result:
    if not up.get("manager"):
        return _res("security_updates", UNKNOWN, lang, explanation=w["no_manager"])
    if up.get("error"):
        return _res("security_updates", UNKNOWN, lang, explanation=up["error"])
    if up["manager"] == "apt":
        ups = pkgupdates.parse_apt_simulation(up.get("simulation") or "")
    else:
        ups = pkgupdates.parse_dnf_check_update(
            up.get("simulation") or "", pkgupdates.parse_dnf_security(up.get("security_list")
                                                                     or ""))
    s = pkgupdates.summarize(ups)
    names = [u.name for u in ups if u.security and u.action in ("upgrade", "install")]
    return _level("security_updates", s["security"], st.levels, lang, "security_updates",
                  target=up["manager"], text=f"{s['security']} {w['pending']} / {s['total']}",
                  packages=names[:100])


def _firewall(fw, st: Settings, lang, w) -> Result:
    tools = fw.get("tools") or []
    if fw.get("active"):
        status, text = NORMAL, f"{w['fw_ok']}: {fw.get('detail')}"
    elif not st.firewall_required:
        status, text = UNKNOWN, w["fw_optional"]
    else:
        status, text = CRITICAL, (w["fw_inactive"] if tools else w["no_fw"])
    return _res("firewall", status, lang, target=",".join(tools), value=fw.get("rules"),
                explanation=text)


def _antivirus(av, st: Settings, lang, w) -> Result:
    if not st.antivirus_required:
        return _res("antivirus", UNKNOWN, lang, value=av.get("signature_age_hours"),
                    explanation=w["av_optional"])
    if not av.get("present"):
        return _res("antivirus", CRITICAL, lang, explanation=w["av_missing"])
    age = av.get("signature_age_hours")
    if age is None:
        return _res("antivirus", CRITICAL, lang, explanation=w["av_no_sig"])
    return _level("antivirus_age_hours", age, st.levels, lang, "antivirus", unit="h",
                  text=f"{age} {w['hours']}")


def _world_writable(ww, st: Settings, lang, w) -> Result:
    if not st.args["app_dirs"]:
        return _res("world_writable", UNKNOWN, lang, explanation=w["no_dirs"])
    paths = ww.get("paths") or []
    r = _level("world_writable", len(paths), st.levels, lang, "world_writable",
               target=", ".join(st.args["app_dirs"]),
               text=f"{len(paths)} {w['found']}" + (
                   "; " + "; ".join(ww["errors"][:3]) if ww.get("errors") else ""),
               samples=[f"{p['mode']} {p['path']}" for p in paths[:20]])
    return r


def _tls(t, st: Settings, lang, w) -> list[Result]:
    target = f"{t.get('name')} {t.get('host')}:{t.get('port')}"
    if t.get("error"):
        return [_res("tls", CRITICAL, lang, target=target, explanation=t["error"])]
    out = [_level("tls_days_left", t.get("days_left"), st.levels, lang, "tls_days_left",
                  target=target, unit="d",
                  text=f"{t.get('days_left')} {w['days']} ({t.get('not_after')})")]
    floor = TLS_VERSIONS.index(st.tls_min_version)
    protocols = t.get("protocols") or {}
    old = [v for v in TLS_VERSIONS[:floor] if protocols.get(v)]
    accepted = [v for v in TLS_VERSIONS if protocols.get(v)]
    out.append(_res("tls_protocols", WARNING if old else NORMAL, lang, target=target,
                    value=", ".join(accepted),
                    explanation=(f"{w['accepts']}: {', '.join(old)}" if old
                                 else f"{w['min_ok']} {', '.join(accepted)}"),
                    extra={"protocols": protocols}))
    return out


# ---------------------------------------------------------------- the run


@dataclass
class Options:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    limit: str | None = None
    transport: str = "fabric"
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    forks: int = 50
    connect_timeout: int = 10
    vault_password_file: str | None = None
    echo: Callable[[str], None] = print
    notified: list[str] = field(default_factory=list)


@dataclass
class Collected:
    host: str
    raw: dict[str, Any] | None
    error: str = ""
    unreachable: bool = False
    seconds: float = 0.0


def cursor_dir(state_dir: Path) -> Path:
    """The audit's own cursor folder: inspection cursors of the same host are separate."""
    return Path(state_dir) / KIND


def run(opts: Options) -> records.Outcome:
    if opts.transport not in TRANSPORTS:
        raise MhopsError(f"unknown transport {opts.transport!r}; valid: {', '.join(TRANSPORTS)}")
    records.labels(opts.lang)
    started = records.utc_now()
    selection = select(opts.inventory, opts.limit, opts.vault_password_file)
    settings = {h.name: host_settings(h) for h in selection.hosts}
    redactor = Redactor(secrets=selection.secrets)
    with state.locked(opts.state_dir, KIND):
        cursors = {h.name: state.load_cursors(cursor_dir(opts.state_dir), h.name)
                   for h in selection.hosts}
        progress = _progress(settings, opts)
        if opts.transport == "fabric":
            collected = _via_fabric(selection.hosts, settings, cursors, opts, redactor,
                                    progress)
        else:
            collected = _via_ansible(selection.hosts, settings, opts, redactor, progress)
        record = build_record(selection, settings, collected, opts, started)
        run_dir = records.write_run(opts.records_dir, KIND, record, redactor)
        for name, c in collected.items():
            if c.raw is not None and isinstance(c.raw.get("cursors"), dict):
                state.save_cursors(cursor_dir(opts.state_dir), name, c.raw["cursors"])
    names = records.labels(opts.lang)["statuses"]
    for row in record["summary"]["by_host"]:
        opts.echo(f"{row['host']:<20} {names[row['status']]:<9} " + " ".join(
            f"{names[s]}={row[s]}" for s in th.STATUSES))
    opts.echo(redactor.text(record["headline"]))
    opts.echo(str(run_dir))
    return records.Outcome(record["exit_code"], run_dir, record)


def _progress(settings: dict[str, Settings], opts: Options) -> Callable[[Collected], None]:
    """One line per host as its result arrives: status and its abnormal checks."""
    names = records.labels(opts.lang)["statuses"]
    checks = records.labels(opts.lang)["security_checks"]
    done: list[str] = []

    def show(c: Collected) -> None:
        done.append(c.host)
        if c.raw is not None:
            results = judge(c.raw, settings[c.host], opts.lang)[0]
            status = th.worst([r.status for r in results])
            bad = sorted({checks.get(r.check, r.check) for r in results
                          if r.status in (WARNING, CRITICAL)})
            detail = ", ".join(bad)
        else:
            status, detail = CRITICAL, c.error
        opts.echo(f"[{len(done)}/{len(settings)}] {c.host:<20} {names[status]:<8} "
                  f"{c.seconds:5.1f}s  {detail}")
    return show


def _payload(args: dict[str, Any]) -> str:
    return f"MHOPS_ARGS = {json.dumps(json.dumps(args))}\n" + COLLECTOR.read_text()


def _via_fabric(hosts, settings, cursors, opts: Options, redactor,
                progress: Callable[[Collected], None]) -> dict[str, Collected]:
    out: dict[str, Collected] = {}

    def command_for(h: Host) -> tuple[str, str, float]:
        args = dict(settings[h.name].args, cursors=cursors[h.name])
        return remote.python_command(h), _payload(args), settings[h.name].timeout

    def done(o: remote.RemoteOutcome) -> None:
        c = Collected(o.host, None, error=redactor.text(o.error), seconds=o.seconds,
                      unreachable=o.status == remote.UNREACHABLE)
        if o.status == remote.OK:
            try:
                c.raw = redactor.obj(json.loads(o.stdout))
            except ValueError:
                c.error = redactor.text(f"collector printed no JSON: {o.stdout[-300:]!r}")
        out[o.host] = c
        progress(c)

    remote.run_many(list(hosts), command_for, forks=opts.forks,
                    connect_timeout=opts.connect_timeout, on_done=done)
    return out


def _via_ansible(hosts, settings, opts: Options, redactor,
                 progress: Callable[[Collected], None]) -> dict[str, Collected]:
    from mhops import runner

    out: dict[str, Collected] = {}
    t0 = time.monotonic()

    def on_host(o: runner.HostOutcome) -> None:
        c = Collected(o.host, None, seconds=time.monotonic() - t0,
                      unreachable=o.status == runner.UNREACHABLE)
        if o.status == runner.OK:
            c.raw = {k: v for k, v in o.result.items() if k not in ("invocation", "changed")}
        else:
            c.error = o.message
        out[o.host] = c
        progress(c)

    runner.run_playbook(
        "playbooks/security_audit.yml", inventory=opts.inventory, limit=opts.limit,
        extravars={"mhops_security_audit_cursor_commit": False,
                   "mhops_security_audit_state_dir":
                       str(cursor_dir(Path(opts.state_dir).resolve())),
                   "mhops_security_audit_args": {n: s.args for n, s in settings.items()}},
        forks=opts.forks, task_action="mhops_security_audit", redactor=redactor,
        on_host=on_host, envvars={"ANSIBLE_TIMEOUT": str(opts.connect_timeout)})
    for h in hosts:
        out.setdefault(h.name, Collected(h.name, None, error="no result from Ansible"))
    return out


def build_record(selection, settings, collected: dict[str, Collected], opts: Options,
                 started) -> dict[str, Any]:
    lang = opts.lang
    hosts_out, events, content, statuses = [], [], [], []
    for h in selection.hosts:
        c = collected.get(h.name) or Collected(h.name, None, error="no result")
        details: dict[str, Any] = {}
        if c.raw is not None:
            results, details = judge(c.raw, settings[h.name], lang)
        elif c.unreachable:
            results = [_res("reachable", CRITICAL, lang, explanation=c.error)]
        else:
            results = [_res("collector", CRITICAL, lang, explanation=c.error)]
        status = th.worst([r.status for r in results])
        hosts_out.append({"host": h.name, "groups": list(h.groups),
                          "reachable": not c.unreachable, "status": status,
                          "error": c.error or None,
                          "hostname": (c.raw or {}).get("hostname"),
                          "collected_at": (c.raw or {}).get("collected_at"),
                          "duration_ms": (c.raw or {}).get("duration_ms"),
                          "results": [r.as_dict() for r in results], "logins": details})
        for r in results:
            statuses.append(r.status)
            if r.check not in content:
                content.append(r.check)
            if r.status in (WARNING, CRITICAL):
                events.append({"host": h.name, "check": r.check, "target": r.target,
                               "status": r.status, "explanation": r.explanation,
                               "resolution": r.resolution,
                               "samples": r.extra.get("samples", [])})
    unreachable = sum(1 for c in collected.values() if c.unreachable)
    by_host = []
    for e in hosts_out:
        counts = {s: sum(1 for r in e["results"] if r["status"] == s) for s in th.STATUSES}
        by_host.append({"host": e["host"], "status": e["status"], **counts})

    def total(check: str, key: str = "value") -> int:
        return sum(int(r.get(key) or 0) for e in hosts_out for r in e["results"]
                   if r["check"] == check and isinstance(r.get(key), (int, float)))
    counts = {s: statuses.count(s) for s in th.STATUSES}
    headline = records.labels(lang)["security_audit"]["headline"].format(
        hosts=len(hosts_out), critical=counts[CRITICAL], warning=counts[WARNING],
        failed=total("failed_logins"), bursts=total("bruteforce"),
        updates=total("security_updates"))
    finished = records.utc_now()
    return {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "run_id": records.run_id(KIND, started), "lang": lang,
        "status": th.worst([e["status"] for e in hosts_out]),
        "exit_code": th.exit_code(statuses, unreachable),
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "headline": headline,
        "scope": {"inventory": list(selection.sources), "limit": selection.limit,
                  "hosts": selection.names, "groups": selection.groups},
        "content": content,
        "hosts": hosts_out,
        "summary": {"hosts_total": len(hosts_out), "hosts_unreachable": unreachable,
                    "counts": counts, "by_host": by_host},
        "events": events,
        "feedback": {"notified": list(opts.notified)},
        "ops_revision": records.ops_revision(),
        "transport": opts.transport,
    }


def cases(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One test case per host and check, for JUnit/Prometheus/notification exporters.

    Each is ``{suite, host, name, status, value, message}`` with ``status`` one of
    normal/warning/critical/unknown; a warning or critical case is a failure.
    """
    out = []
    for h in record.get("hosts") or []:
        for r in h.get("results") or []:
            name = r["check"] + (f" {r['target']}" if r.get("target") else "")
            out.append({"suite": record.get("kind", KIND), "host": h["host"], "name": name,
                        "status": r["status"], "value": r.get("value"),
                        "message": " ".join(filter(None, (r.get("explanation"),
                                                          r.get("resolution"))))})
    return out
