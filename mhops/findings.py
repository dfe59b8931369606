"""Turn one host's raw collector output into classified check results (pure logic).

Owns which results an inspection reports for each part of the collector's JSON
(CPU, memory, filesystems, clock, processes, services, ports, HTTP, TLS, logs)
and how each is judged. Thresholds and wording come from ``thresholds``.
"""

from __future__ import annotations

from typing import Any

from mhops import thresholds as th
from mhops.thresholds import CRITICAL, NORMAL, UNKNOWN, WARNING, Result, classify, flag

_TEXT = {
    "zh-CN": {
        "running": "运行中", "stopped": "未运行", "listening": "正在监听", "closed": "未监听",
        "none_unexpected": "无", "no_swap": "未配置交换分区", "no_clock_tool": "未发现时间同步工具，未检查",
        "unsynced": "时间未同步", "synced": "已同步", "days": "天",
        "cursor_reset": "日志游标丢失（日志已轮转并删除），本次从当前文件开头计数，可能有遗漏",
        "backlog": "日志积压超过单次读取上限，剩余部分下次巡检继续读取",
        "no_syslog": "未找到系统日志来源（无 journald、syslog、messages、kern.log）",
        "unverified": "证书未通过校验", "matches": "条匹配",
    },
    "en": {
        "running": "running", "stopped": "not running", "listening": "listening",
        "closed": "not listening", "none_unexpected": "none", "no_swap": "no swap configured",
        "no_clock_tool": "no time synchronisation tool found; not checked",
        "unsynced": "clock not synchronised", "synced": "synchronised", "days": "days",
        "cursor_reset": "log cursor lost (rotated and deleted); counted from the start of the "
                        "current file, lines may be missing",
        "backlog": "log backlog exceeds the per-run limit; the rest is read next time",
        "no_syslog": "no system log source found (no journald, syslog, messages, kern.log)",
        "unverified": "certificate not verified", "matches": "matches",
    },
}


def _t(lang: str) -> dict[str, str]:
    return _TEXT.get(lang, _TEXT["en"])


def unreachable(error: str, lang: str) -> list[Result]:
    return [flag("reachable", False, error, lang=lang)]


def collector_failed(error: str, lang: str) -> list[Result]:
    return [flag("collector", False, error, lang=lang)]


def classify_host(raw: dict[str, Any], thr: dict[str, dict[str, float]],
                  lang: str = "zh-CN") -> list[Result]:
    """All results for one host, in a stable order."""
    t = _t(lang)
    out: list[Result] = []
    cpu = raw.get("cpu") or {}
    out.append(classify("cpu_percent", cpu.get("percent"), thr, lang=lang))
    cores = cpu.get("cores") or 0
    load1 = cpu.get("load1")
    per_core = round(load1 / cores, 2) if load1 is not None and cores else None
    out.append(classify("load_per_core", per_core, thr, lang=lang,
                        target=f"load1={load1} cores={cores}"))
    mem = raw.get("memory") or {}
    out.append(classify("memory_percent", mem.get("percent"), thr, lang=lang))
    if mem.get("swap_total_kb"):
        out.append(classify("swap_percent", mem.get("swap_percent"), thr, lang=lang))
    else:
        out.append(Result("swap_percent", "", NORMAL, explanation=t["no_swap"]))
    for fs in raw.get("filesystems") or []:
        target = fs.get("mount", "")
        if fs.get("error"):
            out.append(flag("filesystem", False, fs["error"], target=target, lang=lang))
            continue
        out.append(classify("disk_percent", fs.get("used_percent"), thr, lang=lang,
                            target=target))
        if fs.get("inodes_used_percent") is not None:
            out.append(classify("inode_percent", fs["inodes_used_percent"], thr, lang=lang,
                                target=target))
    up = raw.get("uptime_seconds")
    out.append(Result("uptime", "", NORMAL if up is not None else UNKNOWN,
                      value=round(up / 86400, 2) if up is not None else None,
                      unit=t["days"]))
    out.extend(_clock(raw.get("clock") or {}, thr, lang))
    for p in raw.get("processes") or []:
        n = p.get("count", 0)
        out.append(flag("process", n > 0, f"{n} × /{p.get('match')}/",
                        target=p.get("name", ""), value=n, lang=lang))
    for s in raw.get("services") or []:
        running = bool(s.get("running"))
        detail = s.get("detail") or (t["running"] if running else t["stopped"])
        out.append(flag("service", running, f"{detail} ({s.get('method')})",
                        target=s.get("name", ""), lang=lang))
    for p in raw.get("ports") or []:
        ok = bool(p.get("listening"))
        out.append(flag("port", ok, t["listening"] if ok else t["closed"],
                        target=str(p.get("port")), lang=lang))
    unexpected = raw.get("unexpected_ports") or []
    out.append(flag("unexpected_ports", not unexpected,
                    ", ".join(map(str, unexpected)) or t["none_unexpected"],
                    bad=WARNING, value=len(unexpected), lang=lang))
    for h in raw.get("http") or []:
        out.extend(_http(h, thr, lang))
    for c in raw.get("tls") or []:
        out.extend(_tls(c, thr, lang))
    for log in raw.get("logs") or []:
        out.extend(_log(log, thr, lang))
    for err in raw.get("errors") or []:
        out.append(flag("collector", False, str(err), bad=WARNING, lang=lang))
    return out


def _clock(clock: dict[str, Any], thr: dict, lang: str) -> list[Result]:
    t = _t(lang)
    if clock.get("error"):
        return [flag("clock_sync", False, clock["error"], bad=WARNING, lang=lang)]
    if not clock.get("source"):
        return [Result("clock_sync", "", UNKNOWN, explanation=t["no_clock_tool"])]
    out = []
    if clock.get("offset_ms") is not None:
        out.append(classify("clock_offset_ms", abs(clock["offset_ms"]), thr, lang=lang,
                            target=clock["source"]))
    synced = clock.get("synchronized")
    if synced is not None:
        out.append(flag("clock_sync", synced, t["synced"] if synced else t["unsynced"],
                        target=clock["source"], bad=WARNING, lang=lang))
    return out


def _http(h: dict[str, Any], thr: dict, lang: str) -> list[Result]:
    target = f"{h.get('name')} {h.get('url')}"
    if not h.get("ok"):
        why = h.get("error") or f"HTTP {h.get('status')}"
        return [flag("http", False, why, target=target, value=h.get("status"), lang=lang)]
    return [flag("http", True, f"HTTP {h.get('status')}", target=target,
                 value=h.get("status"), lang=lang),
            classify("http_latency_ms", h.get("latency_ms"), thr, target=target, lang=lang)]


def _tls(c: dict[str, Any], thr: dict, lang: str) -> list[Result]:
    target = f"{c.get('name')} {c.get('host')}:{c.get('port')}"
    if c.get("days_left") is None:
        return [flag("tls", False, c.get("error") or "no certificate", target=target,
                     lang=lang)]
    out = [classify("tls_days_left", round(c["days_left"], 1), thr, target=target, lang=lang)]
    if not c.get("verified"):
        why = f"{_t(lang)['unverified']}: {c.get('error') or ''}".rstrip(": ")
        out.append(flag("tls_verify", False, why, target=target, bad=WARNING, lang=lang))
    return out


def _log(log: dict[str, Any], thr: dict, lang: str) -> list[Result]:
    t = _t(lang)
    target = log.get("path") or log.get("source") or log.get("kind", "")
    if log.get("error"):
        # A configured log that is missing is bad input and stops the run before this;
        # what remains here is a system log source that does not exist on this host.
        text = t["no_syslog"] if log.get("path") is None else str(log["error"])
        return [Result("log", target, UNKNOWN, explanation=text)]
    out = []
    for name, n in sorted((log.get("counts") or {}).items()):
        res = classify("log_matches", n, thr, target=f"{target} [{name}]", lang=lang,
                       check="log_matches")
        res.explanation = f"{n} {t['matches']} — {res.explanation}"
        samples = (log.get("samples") or {}).get(name) or []
        if samples:
            res.extra["samples"] = list(samples)
        out.append(res)
    if log.get("cursor_reset"):
        out.append(flag("log", False, t["cursor_reset"], target=target, bad=WARNING,
                        lang=lang))
    if log.get("backlog"):
        out.append(flag("log", False, t["backlog"], target=target, bad=WARNING, lang=lang))
    return out


def host_status(results: list[Result]) -> str:
    return th.worst([r.status for r in results])


ABNORMAL = (WARNING, CRITICAL)
