"""Thresholds and classification of inspection results (a pure leaf).

Owns the catalogue of threshold keys, their validation (unknown key, wrong type,
negative value, warning/critical in the wrong order), the mapping of a measured
value to normal / warning / critical / unknown with a short explanation, the
suggested resolution for each abnormal check, and the exit-code rule.
Imports nothing of the project.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

NORMAL, WARNING, CRITICAL, UNKNOWN = "normal", "warning", "critical", "unknown"
STATUSES = (NORMAL, WARNING, CRITICAL, UNKNOWN)
# "unknown" means a check could not be measured here by design (no time-sync tool, no
# system log source): it is shown in the record but must not page anyone on every run.
_RANK = {NORMAL: 0, UNKNOWN: 0, WARNING: 1, CRITICAL: 2}

EXIT_OK, EXIT_WARNING, EXIT_CRITICAL, EXIT_FAILED = 0, 1, 2, 3


@dataclass(frozen=True)
class Limit:
    """One threshold key: its unit and whether a higher value is worse."""

    unit: str
    higher_is_worse: bool = True


LIMITS: dict[str, Limit] = {
    "cpu_percent": Limit("%"),
    "load_per_core": Limit(""),
    "memory_percent": Limit("%"),
    "swap_percent": Limit("%"),
    "disk_percent": Limit("%"),
    "inode_percent": Limit("%"),
    "clock_offset_ms": Limit("ms"),
    "http_latency_ms": Limit("ms"),
    "tls_days_left": Limit("d", higher_is_worse=False),
    "log_matches": Limit(""),
}

DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "cpu_percent": {"warning": 80, "critical": 95},
    "load_per_core": {"warning": 1.5, "critical": 3},
    "memory_percent": {"warning": 85, "critical": 95},
    "swap_percent": {"warning": 50, "critical": 80},
    "disk_percent": {"warning": 80, "critical": 90},
    "inode_percent": {"warning": 80, "critical": 90},
    "clock_offset_ms": {"warning": 500, "critical": 2000},
    "http_latency_ms": {"warning": 1000, "critical": 3000},
    "tls_days_left": {"warning": 30, "critical": 7},
    "log_matches": {"warning": 1, "critical": 50},
}


class ThresholdError(ValueError):
    """A threshold setting that cannot be used: `key` is its dotted path."""

    def __init__(self, key: str, reason: str):
        self.key, self.reason = key, reason
        super().__init__(f"{key}: {reason}")


def validate(raw: Any, where: str = "thresholds") -> dict[str, dict[str, float]]:
    """Return a checked copy of a thresholds mapping or raise ThresholdError."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ThresholdError(where, "must be a mapping of check -> {warning, critical}, "
                                    f"got {type(raw).__name__}")
    checked: dict[str, dict[str, float]] = {}
    for key, levels in raw.items():
        if key not in LIMITS:
            raise ThresholdError(f"{where}.{key}", f"unknown threshold key {key!r}; valid keys: "
                                 + ", ".join(sorted(LIMITS)))
        if not isinstance(levels, dict):
            raise ThresholdError(f"{where}.{key}", "must be a mapping with warning and/or "
                                 f"critical, got {type(levels).__name__}")
        out: dict[str, float] = {}
        for level, value in levels.items():
            if level not in ("warning", "critical"):
                raise ThresholdError(f"{where}.{key}.{level}", f"unknown level {level!r}; "
                                     "valid levels: critical, warning")
            # bool is an int subclass; `true` in YAML is a typo, not a threshold.
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ThresholdError(f"{where}.{key}.{level}", "must be a number, "
                                     f"got {type(value).__name__} {value!r}")
            if math.isnan(value) or value < 0:
                raise ThresholdError(f"{where}.{key}.{level}", f"must not be negative, got {value}")
            out[level] = float(value)
        checked[key] = out
    return checked


def validate_flat(raw: Any, defaults: dict[str, float], where: str,
                  int_keys: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
    """Merge a flat {key: number} mapping over `defaults`; refuse unknown keys, bad values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ThresholdError(where, f"must be a mapping, got {type(raw).__name__}")
    out = dict(defaults)
    for key, value in raw.items():
        if key not in defaults:
            raise ThresholdError(f"{where}.{key}", "unknown threshold; valid keys: "
                                 + ", ".join(sorted(defaults)))
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or math.isnan(value) or value < 0:
            raise ThresholdError(f"{where}.{key}", f"must be a non-negative number, got {value!r}")
        out[key] = int(value) if key in int_keys else float(value)
    return out


def merge(*layers: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Combine threshold layers level by level; later layers win.

    After merging, warning and critical must be in the right order for the
    direction of the check, else a per-host override silently disables a level.
    """
    merged: dict[str, dict[str, float]] = {}
    for layer in layers:
        for key, levels in layer.items():
            merged.setdefault(key, {}).update(levels)
    for key, levels in merged.items():
        if "warning" in levels and "critical" in levels:
            w, c = levels["warning"], levels["critical"]
            if LIMITS[key].higher_is_worse and c < w:
                raise ThresholdError(key, f"critical ({c:g}) is below warning ({w:g})")
            if not LIMITS[key].higher_is_worse and c > w:
                raise ThresholdError(key, f"critical ({c:g}) is above warning ({w:g}); "
                                     "for this check a lower value is worse")
    return merged


@dataclass
class Result:
    """One check on one host, as it appears in the record."""

    check: str
    target: str
    status: str
    value: Any = None
    unit: str = ""
    warning: float | None = None
    critical: float | None = None
    explanation: str = ""
    resolution: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in ("check", "target", "status", "value", "unit",
                                           "warning", "critical", "explanation", "resolution")}
        d.update(self.extra)
        return d


_WORDS = {
    "zh-CN": {"critical": "严重阈值", "warning": "警告阈值", "within": "在阈值内",
              "unmeasured": "无法测量"},
    "en": {"critical": "critical threshold", "warning": "warning threshold",
           "within": "within thresholds", "unmeasured": "could not be measured"},
}


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".") if isinstance(v, float) else str(v)


def classify(key: str, value: float | None, thresholds: dict[str, dict[str, float]],
             *, target: str = "", lang: str = "zh-CN", check: str | None = None) -> Result:
    """Classify one measured value against the thresholds for `key`."""
    limit = LIMITS[key]
    levels = thresholds.get(key, {})
    w, c = levels.get("warning"), levels.get("critical")
    words = _WORDS.get(lang, _WORDS["en"])
    res = Result(check=check or key, target=target, status=NORMAL, value=value,
                 unit=limit.unit, warning=w, critical=c)
    if value is None:
        res.status, res.explanation = UNKNOWN, words["unmeasured"]
    else:
        def worse(th: float | None) -> bool:
            if th is None:
                return False
            return value >= th if limit.higher_is_worse else value <= th
        op = "≥" if limit.higher_is_worse else "≤"
        shown = f"{_fmt(value)}{limit.unit}"
        if worse(c):
            res.status = CRITICAL
            res.explanation = f"{shown} {op} {_fmt(c)}{limit.unit} ({words['critical']})"
        elif worse(w):
            res.status = WARNING
            res.explanation = f"{shown} {op} {_fmt(w)}{limit.unit} ({words['warning']})"
        else:
            res.explanation = f"{shown} ({words['within']})"
    if res.status in (WARNING, CRITICAL):
        res.resolution = resolution(key, lang)
    return res


def flag(check: str, ok: bool | None, explanation: str, *, target: str = "",
         bad: str = CRITICAL, value: Any = None, lang: str = "zh-CN") -> Result:
    """A yes/no check (process running, port listening): ok -> normal, None -> unknown."""
    status = NORMAL if ok else (UNKNOWN if ok is None else bad)
    res = Result(check=check, target=target, status=status, value=value,
                 explanation=explanation)
    if status in (WARNING, CRITICAL):
        res.resolution = resolution(check, lang)
    return res


_RESOLUTIONS: dict[str, tuple[str, str]] = {
    "cpu_percent": ("查看占用 CPU 最高的进程（top/ps），确认是否为异常任务或流量高峰；必要时扩容或限流。",
                    "Find the top CPU consumers (top/ps); stop runaway jobs or add capacity."),
    "load_per_core": ("检查运行队列和 I/O 等待（vmstat、iostat），排查阻塞进程或磁盘瓶颈。",
                      "Check the run queue and I/O wait (vmstat, iostat) for blocked processes."),
    "memory_percent": ("查看内存占用最高的进程，检查是否存在内存泄漏；在业务低峰重启相关服务。",
                       "Find the largest processes and check for leaks; restart off-peak."),
    "swap_percent": ("交换分区使用过高，说明内存不足：排查内存占用并考虑增加内存。",
                     "Heavy swap use means memory pressure: find the consumers, add memory."),
    "disk_percent": ("清理或压缩大日志和临时文件（invoke runbook disk-full --host 主机），"
                     "确认日志轮转生效，必要时扩容。",
                     "Compress or remove large logs and temp files "
                     "(invoke runbook disk-full --host HOST), check log rotation, grow the disk."),
    "inode_percent": ("查找小文件过多的目录（如会话、缓存目录）并清理。",
                      "Find directories with many small files (sessions, caches) and clean them."),
    "clock_offset_ms": ("时间偏差会导致微信/支付宝支付回调失败：检查 chrony/NTP 同步状态并校时。",
                        "Clock skew breaks WeChat/Alipay payment callbacks: check chrony/NTP."),
    "clock_sync": ("启用并检查 chrony/NTP 时间同步服务。",
                   "Enable and check the chrony/NTP time synchronisation service."),
    "http_latency_ms": ("检查网关与后端服务的响应时间、数据库慢查询和连接池。",
                        "Check gateway and backend response times, slow queries, pools."),
    "http": ("检查服务进程与网关配置，查看应用日志中的错误并重启故障服务。",
             "Check the service and gateway, read the application log, restart if needed."),
    "tls_days_left": ("证书即将过期：执行证书续期流程并重新加载网关。",
                      "The certificate expires soon: renew it and reload the gateway."),
    "tls": ("无法完成 TLS 握手：检查证书链、端口和网关配置。",
            "The TLS handshake failed: check the certificate chain, port and gateway."),
    "log_matches": ("查看样例日志行定位错误原因，必要时按故障流程登记处理。",
                    "Read the sample lines to find the cause; open an incident if needed."),
    "log": ("日志读取异常（游标丢失或积压），请确认日志轮转配置并人工核对该时段日志。",
            "Log reading was incomplete (cursor lost or backlog); check rotation and review it."),
    "process": ("进程未运行：查看其日志确定原因后重启（invoke runbook service-down --host 主机）。",
                "The process is not running: read its log, then restart it "
                "(invoke runbook service-down --host HOST)."),
    "service": ("服务未运行：查看服务日志确定原因后重启（invoke runbook service-down --host 主机）。",
                "The service is down: read its log, then restart it "
                "(invoke runbook service-down --host HOST)."),
    "port": ("端口未监听：确认对应服务已启动并绑定正确地址。",
             "The port is not listening: check that its service is up and bound correctly."),
    "unexpected_ports": ("发现未登记的监听端口：确认其用途，不需要的服务应关闭，或登记到允许列表。",
                         "Unlisted listening ports: identify them; close or add to the allowlist."),
    "filesystem": ("文件系统状态无法读取（可能是挂载卡死）：检查 NFS/存储连接。",
                   "The filesystem could not be read (a hung mount?): check NFS/storage."),
    "reachable": ("主机不可达：检查网络、SSH 服务和主机电源状态。",
                  "The host is unreachable: check the network, sshd and power."),
    "collector": ("巡检采集失败：查看错误信息，检查主机 Python 环境和权限。",
                  "The collector failed: read the error, check Python and permissions."),
}


def resolution(check: str, lang: str = "zh-CN") -> str:
    """Suggested resolution text for an abnormal check, in the record's language."""
    pair = _RESOLUTIONS.get(check)
    if pair is None:
        return ""
    return pair[0] if lang == "zh-CN" else pair[1]


def for_host(text: str, host: str) -> str:
    """A resolution naming a runbook command, with the actual host filled in."""
    return text.replace("--host HOST", f"--host {host}").replace("--host 主机", f"--host {host}")


def worst(statuses: list[str] | tuple[str, ...]) -> str:
    """The overall status of a set of results; unknown only when nothing was measured."""
    if statuses and all(s == UNKNOWN for s in statuses):
        return UNKNOWN
    return max((s for s in statuses if s != UNKNOWN), key=_RANK.__getitem__, default=NORMAL)


def exit_code(statuses: list[str], unreachable: int = 0) -> int:
    """0 all normal, 1 warnings, 2 critical or any host unreachable (unknown is neutral)."""
    if unreachable or CRITICAL in statuses:
        return EXIT_CRITICAL
    if WARNING in statuses:
        return EXIT_WARNING
    return EXIT_OK
