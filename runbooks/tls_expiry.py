"""TLS certificate close to expiry: report, run the configured renewal hook, verify."""

from __future__ import annotations

from datetime import UTC, datetime

META = {
    "id": "tls-expiry",
    "title": {"zh-CN": "TLS 证书即将过期", "en": "TLS certificate close to expiry"},
    "symptoms": {
        "zh-CN": ["巡检报告证书剩余天数低于阈值", "小程序或浏览器提示证书过期、不安全",
                  "微信/支付宝回调因证书问题失败"],
        "en": ["The inspection reports few days left on a certificate",
               "The mini-program or browser warns of an expired, insecure certificate",
               "WeChat/Alipay callbacks fail on the certificate"],
    },
    "classification": {"scope": "hospital", "type": "server", "severity": "clinical"},
    "diagnosis": [
        ("diagnose_expiry", "用 openssl 读取各端点和证书文件的到期时间，计算剩余天数",
         "Read each endpoint's and certificate file's expiry with openssl; days left"),
    ],
    "remediation": [
        ("remediate_renew", "执行配置的证书续期钩子，然后执行重载命令（如重载网关）",
         "Run the configured renewal hook, then the reload command (e.g. reload the gateway)"),
    ],
    "verification": [
        ("verify_new_expiry", "用 Testinfra 重新读取证书，确认新的到期时间晚于阈值",
         "With Testinfra, read the certificates again: the new expiry is beyond the threshold"),
    ],
    "owner": "运维组 / ops team",
    "reviewed": "2026-11-28",
    "settings": {
        "endpoints": [],        # [{host, port, servername}]
        "cert_files": [],       # PEM files on the host
        "warning_days": 30,
        "critical_days": 7,
        "renew": "",            # renewal hook, e.g. certbot renew --cert-name app
        "reload": "",           # e.g. nginx -s reload
        "renew_timeout": 300,
    },
}


def _targets(rb) -> list[tuple[str, str]]:
    q = rb.quote
    out = []
    for e in rb.settings["endpoints"]:
        name = e.get("servername") or e["host"]
        where = f"{e['host']}:{e.get('port', 443)}"
        out.append((where, f"echo | openssl s_client -connect {q(where)} -servername {q(name)}"
                           " 2>/dev/null | openssl x509 -noout -enddate"))
    for f in rb.settings["cert_files"]:
        out.append((f, f"openssl x509 -noout -enddate -in {q(f)}"))
    return out


def read_expiry(run, rb) -> dict[str, float | None]:
    """Days left per endpoint or file (None when unreadable); `run` is c.run or rb.probe."""
    now = datetime.now(UTC)
    days = {}
    for name, command in _targets(rb):
        text = run(command).stdout.strip()
        if not text.startswith("notAfter="):
            days[name] = None
            continue
        end = datetime.strptime(text.split("=", 1)[1].replace(" GMT", ""),
                                "%b %d %H:%M:%S %Y").replace(tzinfo=UTC)
        days[name] = round((end - now).total_seconds() / 86400, 1)
    return days


def _status(rb, days: dict) -> str:
    s = rb.settings
    worst = "normal"
    order = ["normal", "warning", "critical"]
    for d in days.values():
        level = "critical" if d is None else rb.level(d, s["warning_days"], s["critical_days"],
                                                      higher_is_worse=False)
        worst = max(worst, level, key=order.index)
    return worst


def diagnose_expiry(c, rb):
    if not _targets(rb):
        return rb.result("unknown", rb.text("未配置证书", "no certificates configured"))
    days = read_expiry(c.run, rb)
    rb.facts["before"] = days
    shown = ", ".join(f"{k}: {v}" for k, v in days.items())
    return rb.result(_status(rb, days), rb.text(f"剩余天数 {shown}", f"days left {shown}"),
                     days=days)


def remediate_renew(c, rb):
    s = rb.settings
    if not s["renew"]:
        return rb.result("critical", rb.text("未配置续期钩子", "no renewal hook configured"))
    ok = rb.change(rb.text("执行证书续期钩子", "run the renewal hook"), s["renew"],
                   timeout=int(s["renew_timeout"]))
    if ok and s["reload"]:
        ok = rb.change(rb.text("重载使用证书的服务", "reload the services using it"), s["reload"])
    if ok:
        return rb.result("normal", rb.text("续期完成", "renewed"))
    return rb.result("warning", rb.text("续期未完成", "not renewed"))


def verify_new_expiry(c, rb):
    days = read_expiry(rb.probe, rb)
    shown = ", ".join(f"{k}: {v}" for k, v in days.items())
    return rb.result(_status(rb, days), rb.text(f"续期后剩余天数 {shown}",
                                                f"days left after renewal {shown}"), days=days)
