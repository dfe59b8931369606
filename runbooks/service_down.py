"""A service or process down: diagnose from its log, restart it, verify its health."""

from __future__ import annotations

import re
import shlex

META = {
    "id": "service-down",
    "title": {"zh-CN": "服务或进程停止运行", "en": "Service or process down"},
    "symptoms": {
        "zh-CN": ["巡检报告进程或服务未运行、端口未监听（服务挂了、宕机）",
                  "网关返回 502/503，患者端页面打不开",
                  "健康检查地址无响应"],
        "en": ["The inspection reports a process or service not running, a port not listening",
               "The gateway answers 502/503; the patient app does not load",
               "The health URL does not answer"],
    },
    "classification": {"scope": "department", "type": "software", "severity": "clinical"},
    "diagnosis": [
        ("diagnose_process", "按 pidfile 或进程匹配检查服务是否在运行",
         "Check whether the service runs (pidfile or process match)"),
        ("diagnose_log", "读取服务日志最后几行，找出停止原因（错误、异常、OOM）",
         "Read the last lines of the service log for the cause (errors, exceptions, OOM)"),
    ],
    "remediation": [
        ("remediate_restart", "用配置的启动命令重启服务",
         "Restart the service with its configured start command"),
    ],
    "verification": [
        ("verify_running", "用 Testinfra 确认进程在运行、端口在监听、健康检查返回 2xx",
         "With Testinfra: the process runs, the port listens, the health URL answers 2xx"),
    ],
    "owner": "运维组 / ops team",
    "reviewed": "2026-11-28",
    "settings": {
        "name": "app",
        "pidfile": "",                # a pidfile, or:
        "process": "",                # a pgrep -f pattern
        "start": "",                  # the command that starts it (must detach)
        "log": "",                    # its log
        "log_lines": 30,
        "error_pattern": r"(?i)error|exception|fatal|traceback|killed|out of memory",
        "port": 0,                    # a TCP port it listens on (127.0.0.1), 0 = none
        "health_url": "",
        "start_timeout": 30,          # seconds for the verification to see it healthy
    },
}


def alive_command(pidfile: str) -> str:
    """Prints the pid when the pidfile's process lives; a zombie (exited, not yet reaped
    by its parent) answers kill -0 but is dead."""
    q = shlex.quote(pidfile)
    return (f"test -r {q} && pid=$(cat {q}) && st=$(ps -o stat= -p \"$pid\") && "
            "case \"$st\" in Z*) ;; *) echo \"$pid\" ;; esac")


def _pids(run, rb) -> list[int]:
    s = rb.settings
    if s["pidfile"]:
        res = run(alive_command(s["pidfile"]))
    elif s["process"]:
        res = run(f"pgrep -f -- {rb.quote(s['process'])}")
    else:
        raise ValueError("service-down needs the setting pidfile or process")
    return [int(x) for x in res.stdout.split() if x.isdigit()]


def diagnose_process(c, rb):
    pids = _pids(c.run, rb)
    rb.facts["pids"] = pids
    name = rb.settings["name"]
    if pids:
        return rb.result("normal", rb.text(f"{name} 运行中（pid {pids}）",
                                           f"{name} running (pid {pids})"), pids=pids)
    return rb.result("critical", rb.text(f"{name} 未运行", f"{name} is not running"), pids=[])


def diagnose_log(c, rb):
    s = rb.settings
    if not s["log"]:
        return rb.result("unknown", rb.text("未配置日志", "no log configured"))
    res = c.run(f"tail -n {int(s['log_lines'])} {rb.quote(s['log'])}")
    if not res.ok:
        return rb.result("unknown", rb.text(f"无法读取日志 {s['log']}",
                                            f"cannot read the log {s['log']}"))
    rx = re.compile(s["error_pattern"])
    errors = [ln for ln in res.stdout.splitlines() if rx.search(ln)]
    rb.facts["log_errors"] = errors[-10:]
    return rb.result("normal", rb.text(f"最近 {s['log_lines']} 行中 {len(errors)} 行错误",
                                       f"{len(errors)} error lines in the last "
                                       f"{s['log_lines']}"), errors=errors[-10:])


def remediate_restart(c, rb):
    s = rb.settings
    if rb.facts.get("pids"):
        return rb.result("normal", rb.text("服务在运行，无需重启", "running: no restart needed"))
    if not s["start"]:
        return rb.result("critical", rb.text("未配置启动命令", "no start command configured"))
    ok = rb.change(rb.text(f"启动 {s['name']}", f"start {s['name']}"), s["start"])
    return rb.result("normal" if ok else "warning",
                     rb.text("已执行启动命令", "start command run") if ok else
                     rb.text("未启动", "not started"))


def verify_running(c, rb):
    s, host = rb.settings, rb.testinfra
    state: dict = {}

    def healthy() -> bool:
        state.update(process=bool(_pids(rb.probe, rb)), port=None, health=None)
        if s["port"]:
            state["port"] = host.socket(f"tcp://127.0.0.1:{int(s['port'])}").is_listening
        if s["health_url"]:
            code = rb.probe(f"curl -s -o /dev/null -m 5 -w '%{{http_code}}' "
                            f"{rb.quote(s['health_url'])}").stdout.strip()
            state["health"] = code.startswith("2")
        state["ok"] = (state["process"] and state["port"] is not False
                       and state["health"] is not False)
        return state["ok"]

    ok = rb.wait(healthy, s["start_timeout"], 0.5)
    yes, no = rb.text("正常", "ok"), rb.text("异常", "FAILED")

    def word(v):
        return "-" if v is None else (yes if v else no)
    return rb.result("normal" if ok else "critical", rb.text(
        f"进程 {word(state['process'])}，端口 {word(state['port'])}，"
        f"健康检查 {word(state['health'])}",
        f"process {word(state['process'])}, port {word(state['port'])}, "
        f"health {word(state['health'])}"), **state)
