"""High load: load per core, top processes, and the trend from inspection records."""

from __future__ import annotations

META = {
    "id": "high-load",
    "title": {"zh-CN": "主机负载过高", "en": "High load on a host"},
    "symptoms": {
        "zh-CN": ["巡检报告 CPU 使用率或每核负载超过阈值", "页面和接口响应变慢",
                  "SSH 登录与命令执行迟缓"],
        "en": ["The inspection reports CPU use or load per core over the threshold",
               "Pages and APIs respond slowly", "SSH logins and commands are sluggish"],
    },
    "classification": {"scope": "department", "type": "server", "severity": "experience"},
    "diagnosis": [
        ("diagnose_load", "读取 1/5/15 分钟负载与 CPU 核数，计算每核负载",
         "Read the 1/5/15-minute load and the cores; load per core"),
        ("diagnose_top_processes", "列出 CPU 与内存占用最高的进程",
         "List the processes using the most CPU and memory"),
        ("diagnose_trend", "从巡检记录读取该主机近几天的 CPU 与负载趋势（是突发还是持续增长）",
         "Read the host's CPU and load trend from recent inspection records (spike or growth)"),
    ],
    "remediation": [
        ("remediate_renice", "对匹配配置模式的非关键高占用进程降低优先级（renice）",
         "Lower the priority (renice) of busy non-critical processes matching the pattern"),
    ],
    "verification": [
        ("verify_load", "用 Testinfra 重新读取负载，确认每核负载回落到阈值以下",
         "With Testinfra, read the load again: load per core below the threshold"),
    ],
    "owner": "运维组 / ops team",
    "reviewed": "2026-11-28",
    "settings": {
        "warning_per_core": 1.5,
        "critical_per_core": 3.0,
        "top": 10,
        "trend_days": 7,
        "renice_match": "",       # regex of commands that may be reniced (e.g. report jobs)
        "renice_min_cpu": 50.0,   # only processes above this %CPU
        "renice_to": 10,
        "settle_seconds": 60,
    },
}


def load_per_core(run) -> dict:
    load = run("cat /proc/loadavg").stdout.split()
    cores = int(run("nproc").stdout.strip() or 1)
    one, five, fifteen = (float(x) for x in load[:3])
    return {"load1": one, "load5": five, "load15": fifteen, "cores": cores,
            "per_core": round(one / cores, 2)}


def diagnose_load(c, rb):
    s = rb.settings
    u = load_per_core(c.run)
    status = rb.level(u["per_core"], s["warning_per_core"], s["critical_per_core"])
    return rb.result(status, rb.text(
        f"负载 {u['load1']}/{u['load5']}/{u['load15']}，{u['cores']} 核，每核 {u['per_core']}",
        f"load {u['load1']}/{u['load5']}/{u['load15']}, {u['cores']} cores, "
        f"{u['per_core']} per core"), **u)


def diagnose_top_processes(c, rb):
    res = c.run("ps -eo pid=,user=,pcpu=,pmem=,etimes=,comm=,args= --sort=-pcpu | "
                f"head -n {int(rb.settings['top'])}")
    rows = []
    for line in res.stdout.splitlines():
        f = line.split(None, 6)
        if len(f) >= 6:
            rows.append({"pid": int(f[0]), "user": f[1], "cpu": float(f[2]), "mem": float(f[3]),
                         "seconds": int(f[4]), "comm": f[5], "args": (f[6] if len(f) > 6
                                                                         else "")[:200]})
    rb.facts["top"] = rows
    shown = ", ".join(f"{r['comm']}({r['pid']}) {r['cpu']}%" for r in rows[:5])
    return rb.result("normal", shown, processes=rows)


def diagnose_trend(c, rb):
    t = rb.inspections(float(rb.settings["trend_days"]))
    cpu, load = t["cpu"], t["load"]
    if not load["enough"] and not cpu["enough"]:
        return rb.result("normal", rb.text(f"巡检记录不足（{t['records']} 份），无趋势",
                                           f"too few inspections ({t['records']}): no trend"),
                         **t)
    return rb.result("normal", rb.text(
        f"{t['records']} 份巡检：CPU 每周 {cpu['per_week']}，每核负载每周 {load['per_week']}",
        f"{t['records']} inspections: CPU {cpu['per_week']}/week, load per core "
        f"{load['per_week']}/week"), **t)


def remediate_renice(c, rb):
    import re

    s = rb.settings
    if not s["renice_match"]:
        return rb.result("warning", rb.text("未配置可降级的进程，需人工处理",
                                            "no renice pattern configured: handle by hand"))
    rx, done = re.compile(s["renice_match"]), 0
    for p in rb.facts.get("top", []):
        if p["cpu"] >= s["renice_min_cpu"] and rx.search(p["args"] or p["comm"]):
            done += rb.change(rb.text(f"降低 {p['comm']}({p['pid']}) 的优先级",
                                      f"lower the priority of {p['comm']}({p['pid']})"),
                              f"renice -n {int(s['renice_to'])} -p {int(p['pid'])}")
    return rb.result("normal", rb.text(f"降级 {done} 个进程", f"{done} processes reniced"))


def verify_load(c, rb):
    s = rb.settings
    state: dict = {}

    def calm() -> bool:
        state.update(load_per_core(rb.probe))
        return state["per_core"] < s["warning_per_core"]

    ok = rb.wait(calm, s["settle_seconds"], 5.0)
    status = "normal" if ok else rb.level(state["per_core"], s["warning_per_core"],
                                          s["critical_per_core"])
    return rb.result(status, rb.text(f"每核负载 {state['per_core']}",
                                     f"load per core {state['per_core']}"), **state)
