"""Run records for the report tests and bench/report.py, in the real schemas.

Inspection records are built the way ``mhops.inspect`` builds them: a collector's raw
output per host (the shape ``library/mhops_collect.py`` returns) is classified by
``mhops.findings.classify_host`` and published with ``mhops.records.write_run``, so the
JSON, Markdown and HTML sheets have the size and content of real ones. Records of the
kinds other helpers are adding (fault, upgrade, ...) are written as a tool would that
does not redact: record.json plus hand-made sheets, so the reports' own redaction is
what keeps planted identifiers and secrets out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from mhops import findings, records
from mhops import thresholds as th

MOUNTS = ("/", "/boot", "/var", "/var/log", "/data")
SERVICES = ("nginx", "his-api", "filebeat", "chronyd")
PORTS = (22, 80, 443, 8080, 9100)
PATTERNS = ("error", "timeout", "oom")


def raw_host(name: str, day: int, tweak: dict[str, Any] | None = None) -> dict[str, Any]:
    """A host's collector output for `day`, steady and plausible unless tweaked."""
    t = tweak or {}
    seed = sum(map(ord, name))
    disks = {m: 20.0 + (seed % 7) * 3 + i * 5 + 0.1 * day for i, m in enumerate(MOUNTS)}
    disks.update(t.get("disk", {}))
    counts = {p: 0 for p in PATTERNS}
    counts.update(t.get("logs", {}))
    samples = {p: [f"2026-10-01T08:00:00 {p.upper()} request /api/v1/appointments failed "
                   f"after 3000 ms (trace {seed:06d}{i})" for i in range(min(n, 3))]
               for p, n in counts.items() if n}
    return {
        "hostname": name, "kernel": "6.1.0-28-amd64", "collected_at": None,
        "duration_ms": 900 + seed % 200,
        "cpu": {"percent": t.get("cpu", 10.0 + (seed + day) % 25), "cores": 8,
                "load1": round(0.4 + ((seed + day) % 10) / 10, 2)},
        "memory": {"percent": t.get("memory", 40.0 + (seed % 20) + (day % 3)),
                   "swap_total_kb": 4194304, "swap_percent": 1.5},
        "filesystems": [{"mount": m, "used_percent": round(v, 2),
                         "inodes_used_percent": round(v / 4, 2)} for m, v in disks.items()],
        "uptime_seconds": (30 + day) * 86400,
        "clock": {"source": "chronyc", "offset_ms": 0.4, "synchronized": True},
        "processes": [{"name": s, "match": s, "count": 1 if s not in t.get("down", ()) else 0}
                      for s in SERVICES[:3]],
        "services": [{"name": s, "running": s not in t.get("down", ()), "method": "pgrep",
                      "detail": None} for s in SERVICES],
        "ports": [{"port": p, "listening": True} for p in PORTS],
        "unexpected_ports": [],
        "http": [{"name": "health", "url": f"http://{name}:8080/actuator/health", "ok": True,
                  "status": 200, "latency_ms": 35 + seed % 40},
                 {"name": "wechat-api", "url": f"https://{name}/api/ping", "ok": True,
                  "status": 200, "latency_ms": 60 + seed % 30}],
        "tls": [{"name": "portal", "host": name, "port": 443, "days_left": 200 - day,
                 "verified": True}],
        "logs": [{"path": f"/var/log/his/{svc}.log", "counts": counts if i == 0 else
                  {p: 0 for p in PATTERNS}, "samples": samples if i == 0 else {}}
                 for i, svc in enumerate(("api", "gateway", "message-center"))],
    }


def inspection_record(when: datetime, hosts: list[str], day: int,
                      tweaks: dict[str, dict[str, Any]] | None = None, *,
                      resolution: str | None = None, lang: str = "zh-CN") -> dict[str, Any]:
    """One inspection record built as ``mhops.inspect.build_record`` builds it."""
    thr = th.merge(th.DEFAULT_THRESHOLDS)
    out, events, content, statuses = [], [], [], []
    for name in hosts:
        raw = raw_host(name, day, (tweaks or {}).get(name))
        raw["collected_at"] = records.iso(when + timedelta(seconds=5))
        results = findings.classify_host(raw, thr, lang)
        status = findings.host_status(results)
        entry = {"host": name, "groups": ["api"], "reachable": True, "status": status,
                 "error": None, "results": [r.as_dict() for r in results]}
        entry.update({k: raw[k] for k in ("hostname", "kernel", "collected_at", "duration_ms")})
        out.append(entry)
        for r in results:
            statuses.append(r.status)
            if r.check not in content:
                content.append(r.check)
            if r.status in findings.ABNORMAL:
                events.append({"host": name, "check": r.check, "target": r.target,
                               "status": r.status, "explanation": r.explanation,
                               "resolution": r.resolution,
                               "samples": r.extra.get("samples", [])})
    counts = {s: statuses.count(s) for s in th.STATUSES}
    return {
        "schema_version": 1, "kind": "inspection", "run_id": records.run_id("inspection", when),
        "lang": lang, "status": th.worst([h["status"] for h in out]),
        "exit_code": th.exit_code(statuses, 0),
        "time": records.time_block(when, when + timedelta(seconds=40), "Asia/Shanghai"),
        "operator": "值班工程师",
        "headline": f"{len(hosts)} 台主机，异常 {len(events)} 项",
        "scope": {"inventory": ["inventory/hospital"], "limit": None, "hosts": list(hosts),
                  "groups": {"api": list(hosts)}},
        "content": content, "hosts": out,
        "summary": {"hosts_total": len(out), "hosts_unreachable": 0, "counts": counts,
                    "by_host": [{"host": h["host"], "status": h["status"],
                                 **{s: sum(1 for r in h["results"] if r["status"] == s)
                                    for s in th.STATUSES}} for h in out]},
        "events": events, "feedback": {"notified": ["值班: 张工"], "note": None},
        "resolution": resolution, "ops_revision": "0123456789ab", "transport": "fabric",
    }


def write_inspections(folder: Path, start: datetime, days: int, hosts: list[str], *,
                      skip: Callable[[int], bool] = lambda d: False,
                      tweaks: Callable[[int], dict[str, dict[str, Any]]] = lambda d: {},
                      resolution: Callable[[int], str | None] = lambda d: None) -> list[Path]:
    """A daily inspection of `hosts` at 00:30 UTC (08:30 in Shanghai) for `days` days."""
    out = []
    for day in range(days):
        if skip(day):
            continue
        when = start + timedelta(days=day, minutes=30)
        rec = inspection_record(when, hosts, day, tweaks(day), resolution=resolution(day))
        out.append(records.write_run(folder, "inspection", rec))
    return out


def base(kind: str, when: datetime, status: str = "normal", headline: str = "",
         **extra: Any) -> dict[str, Any]:
    return {"schema_version": 1, "kind": kind, "run_id": records.run_id(kind, when),
            "lang": "zh-CN", "status": status, "exit_code": {"normal": 0, "warning": 1}.get(
                status, 2),
            "time": records.time_block(when, when + timedelta(minutes=5), "Asia/Shanghai"),
            "operator": "运维 李工", "headline": headline, **extra}


def write_raw(folder: Path, rec: dict[str, Any], sheet: str | None = None) -> Path:
    """A record as a tool that does not redact would leave it (json, and sheets if given)."""
    d = Path(folder) / rec["run_id"]
    d.mkdir(parents=True)
    (d / "record.json").write_text(json.dumps(rec, ensure_ascii=False, indent=1))
    if sheet is not None:
        (d / "record.md").write_text(f"# {rec['kind']}\n\n{sheet}\n")
        (d / "record.html").write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
                                       f"</head><body><h1>{rec['kind']}</h1><p>{sheet}</p>"
                                       f"</body></html>\n")
    return d


def incident(iid: str, title: str, severity: str, reported: datetime,
             resolved: datetime | None, sla_met: bool | None) -> dict[str, Any]:
    return {"id": iid, "title": title, "scope": "his-api", "type": "应用故障",
            "severity": severity, "priority": "P1" if severity == "严重" else "P3",
            "reported_utc": records.iso(reported),
            "acknowledged_utc": records.iso(reported + timedelta(minutes=5)),
            "resolved_utc": records.iso(resolved) if resolved else None,
            "sla": {"met": sla_met, "breached_by_s": None if sla_met in (True, None) else 1800,
                    "target_s": 14400}}
