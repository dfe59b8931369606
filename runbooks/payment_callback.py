"""Mini-program payment callbacks failing: error lines, clock offset, endpoint health."""

from __future__ import annotations

import re
import time

META = {
    "id": "payment-callback",
    "title": {"zh-CN": "小程序支付回调失败", "en": "Mini-program payment callback failures"},
    "symptoms": {
        "zh-CN": ["患者已付款但订单仍显示待支付", "回调日志中出现验签失败、超时或 5xx",
                  "微信/支付宝/百度多次重发回调通知"],
        "en": ["Patients paid but the order still shows unpaid",
               "Signature failures, timeouts or 5xx in the callback log",
               "WeChat/Alipay/Baidu keep re-sending the callback notification"],
    },
    "classification": {"scope": "hospital", "type": "software", "severity": "clinical"},
    "diagnosis": [
        ("diagnose_callback_errors",
         "统计回调日志最近若干行中的错误行（验签失败、超时、5xx）并给出样例",
         "Count error lines (signature, timeout, 5xx) in the callback log's tail, with samples"),
        ("diagnose_clock",
         "比较主机时钟与控制节点时钟，并读取 chrony 同步状态（时间偏差会使验签失败）",
         "Compare the host clock with the control node and read chrony's state "
         "(clock skew breaks signatures)"),
        ("diagnose_endpoint", "请求回调接口的健康检查地址，记录状态码与耗时",
         "Request the callback endpoint's health URL; status code and latency"),
    ],
    "remediation": [
        ("remediate_clock", "时间偏差超限且有 chrony 时，立即校时（chronyc makestep）",
         "When the clock is off and chrony is present, step it now (chronyc makestep)"),
        ("remediate_restart_service", "回调接口不健康时，用配置的命令重启回调服务",
         "When the endpoint is unhealthy, restart the callback service (configured command)"),
    ],
    "verification": [
        ("verify_callback_healthy", "用 Testinfra 确认回调接口返回 2xx 且时钟偏差在阈值内",
         "With Testinfra: the endpoint answers 2xx and the clock offset is within the limit"),
    ],
    "owner": "支付组 / payments team",
    "reviewed": "2026-11-28",
    "settings": {
        "log": "",                 # the callback log
        "tail_lines": 2000,
        "error_pattern": r"(?i)error|fail|invalid sign|签名|验签|timed? ?out|\b5\d\d\b",
        "errors_warning": 1,
        "errors_critical": 20,
        "samples": 5,
        "health_url": "",          # e.g. http://127.0.0.1:8080/pay/notify/health
        "clock_warning_ms": 1000,
        "clock_critical_ms": 5000,
        "restart": "",             # command restarting the callback service (must detach)
        "health_timeout": 30,
    },
}


def diagnose_callback_errors(c, rb):
    s = rb.settings
    if not s["log"]:
        return rb.result("unknown", rb.text("未配置回调日志", "no callback log configured"))
    res = c.run(f"tail -n {int(s['tail_lines'])} {rb.quote(s['log'])}")
    if not res.ok:
        return rb.result("critical", rb.text(f"无法读取 {s['log']}", f"cannot read {s['log']}"))
    rx = re.compile(s["error_pattern"])
    lines = [ln for ln in res.stdout.splitlines() if rx.search(ln)]
    status = rb.level(len(lines), s["errors_warning"], s["errors_critical"])
    return rb.result(status, rb.text(f"最近 {s['tail_lines']} 行中 {len(lines)} 行错误",
                                     f"{len(lines)} error lines in the last {s['tail_lines']}"),
                     errors=len(lines), samples=lines[-int(s["samples"]):])


def clock_offset_ms(run) -> float:
    """Host clock minus this control node's clock, corrected by half the round trip."""
    before = time.time()
    remote = float(run("date +%s.%N").stdout.strip())
    after = time.time()
    return round((remote - (before + after) / 2) * 1000, 1)


def diagnose_clock(c, rb):
    s = rb.settings
    offset = clock_offset_ms(c.run)
    chrony = c.run("command -v chronyc >/dev/null && chronyc -n tracking").stdout
    rb.facts["offset_ms"], rb.facts["chrony"] = offset, bool(chrony.strip())
    status = rb.level(abs(offset), s["clock_warning_ms"], s["clock_critical_ms"])
    return rb.result(status, rb.text(f"与控制节点时钟偏差 {offset} ms",
                                     f"clock offset to the control node {offset} ms"),
                     offset_ms=offset, chrony=chrony.strip()[:500])


def _health(run, url: str) -> tuple[str, float | None]:
    out = run(f"curl -s -o /dev/null -m 5 -w '%{{http_code}} %{{time_total}}' "
              f"{url}").stdout.split()
    return (out[0], float(out[1])) if len(out) == 2 else ("000", None)


def diagnose_endpoint(c, rb):
    s = rb.settings
    if not s["health_url"]:
        return rb.result("unknown", rb.text("未配置健康检查地址", "no health URL configured"))
    code, seconds = _health(c.run, rb.quote(s["health_url"]))
    rb.facts["healthy"] = code.startswith("2")
    return rb.result("normal" if rb.facts["healthy"] else "critical",
                     f"HTTP {code} {seconds} s", code=code, seconds=seconds)


def remediate_clock(c, rb):
    s = rb.settings
    if abs(rb.facts.get("offset_ms", 0)) < s["clock_warning_ms"]:
        return rb.result("normal", rb.text("时钟正常", "clock fine"))
    if not rb.facts.get("chrony"):
        return rb.result("warning", rb.text("无 chrony，需人工校时",
                                            "no chrony: set the clock by hand"))
    ok = rb.change(rb.text("立即校时", "step the clock now"), "chronyc makestep")
    return rb.result("normal" if ok else "warning", "chronyc makestep")


def remediate_restart_service(c, rb):
    s = rb.settings
    if rb.facts.get("healthy", True):
        return rb.result("normal", rb.text("接口健康，无需重启", "endpoint healthy"))
    if not s["restart"]:
        return rb.result("critical", rb.text("未配置重启命令", "no restart command configured"))
    ok = rb.change(rb.text("重启回调服务", "restart the callback service"), s["restart"])
    return rb.result("normal" if ok else "warning", s["restart"])


def verify_callback_healthy(c, rb):
    s = rb.settings
    state: dict = {}

    def healthy() -> bool:
        state["offset_ms"] = clock_offset_ms(rb.probe)
        if s["health_url"]:
            state["code"], state["seconds"] = _health(rb.probe, rb.quote(s["health_url"]))
        return (not s["health_url"] or state["code"].startswith("2")) and \
            abs(state["offset_ms"]) < s["clock_warning_ms"]

    ok = rb.wait(healthy, s["health_timeout"], 1.0)
    return rb.result("normal" if ok else "critical",
                     f"HTTP {state.get('code', '-')}, {state['offset_ms']} ms", **state)
