"""Disk nearly full: find the largest logs and temp files, compress or remove, verify."""

from __future__ import annotations

import fnmatch
import time

META = {
    "id": "disk-full",
    "title": {"zh-CN": "磁盘空间即将用满", "en": "Disk nearly full"},
    "symptoms": {
        "zh-CN": ["巡检报告磁盘使用率超过阈值", "应用写日志失败、上传报错“No space left on device”",
                  "数据库或消息中心因磁盘满而停止写入"],
        "en": ["The inspection reports disk usage over the threshold",
               "Applications fail to write logs or uploads: \"No space left on device\"",
               "The database or message center stops writing because the disk is full"],
    },
    "classification": {"scope": "department", "type": "server", "severity": "operations"},
    "diagnosis": [
        ("diagnose_usage", "用 df 查看该文件系统的使用率并与阈值比较",
         "Read the filesystem's usage with df and compare it with the thresholds"),
        ("diagnose_largest_files", "在日志和临时目录中找出最大的日志和临时文件",
         "Find the largest log and temp files in the configured folders"),
    ],
    "remediation": [
        ("remediate_compress_logs",
         "压缩已轮转的日志；对正在写入的大日志做 copytruncate 轮转并压缩",
         "Compress rotated logs; rotate big active logs by copy-and-truncate, compressed"),
        ("remediate_remove_temp", "删除超过保留天数的临时文件",
         "Remove temp files older than the retention"),
    ],
    "verification": [
        ("verify_space_freed", "用 Testinfra 重新读取使用率，确认空间已释放且低于阈值",
         "Re-read the usage with Testinfra: space freed and below the threshold"),
    ],
    "owner": "运维组 / ops team",
    "reviewed": "2026-11-28",
    "settings": {
        "mount": "/",                       # filesystem (any path on it) to check
        "paths": ["/var/log", "/tmp"],      # folders searched for logs and temp files
        "warning_percent": 80,
        "critical_percent": 90,
        "min_size_kb": 1024,                # smaller files are not worth touching
        "top": 20,
        "log_globs": ["*.log", "*.log.[0-9]*", "*.out", "*.log-[0-9]*"],
        "temp_globs": ["*.tmp", "*.temp", "*.swp", "core.[0-9]*"],
        "temp_age_days": 7,
        "active_log_min_mb": 50,            # an active log at least this big is rotated
    },
}


def _usage(c, rb, mount: str) -> dict:
    out = c.run(f"df -P -k {rb.quote(mount)} | tail -n 1").stdout.split()
    total, used, avail = (int(x) * 1024 for x in out[1:4])
    return {"mount": out[5], "total": total, "used": used, "available": avail,
            "percent": round(100.0 * used / max(1, used + avail), 1)}


def diagnose_usage(c, rb):
    s = rb.settings
    u = _usage(c, rb, s["mount"])
    rb.facts["before"] = u
    status = rb.level(u["percent"], s["warning_percent"], s["critical_percent"])
    return rb.result(status, rb.text(
        f"{u['mount']} 已用 {u['percent']}%（可用 {u['available'] // 1048576} MB）",
        f"{u['mount']} {u['percent']}% used ({u['available'] // 1048576} MB free)"), **u)


def _kind(path: str, s: dict) -> str | None:
    name = path.rsplit("/", 1)[-1]
    if name.endswith((".gz", ".xz", ".bz2", ".zst")):
        return None
    if any(fnmatch.fnmatch(name, g) for g in s["temp_globs"]):
        return "temp"
    if any(fnmatch.fnmatch(name, g) for g in s["log_globs"]):
        rotated = not name.endswith((".log", ".out"))
        return "rotated_log" if rotated else "active_log"
    return None


def diagnose_largest_files(c, rb):
    s = rb.settings
    folders = " ".join(rb.quote(p) for p in s["paths"])
    res = c.run(f"find {folders} -xdev -type f -size +{int(s['min_size_kb'])}k "
                "-printf '%s\\t%T@\\t%p\\n' 2>/dev/null | sort -rn | head -n "
                f"{int(s['top']) * 5}")
    now = time.time()
    files = []
    for line in res.stdout.splitlines():
        size, mtime, path = line.split("\t", 2)
        kind = _kind(path, s)
        if kind:
            files.append({"path": path, "size": int(size), "kind": kind,
                          "age_days": round((now - float(mtime)) / 86400, 1)})
    files = files[: int(s["top"])]
    rb.facts["files"] = files
    total = sum(f["size"] for f in files)
    return rb.result("normal", rb.text(
        f"{len(files)} 个可处理的大文件，共 {total // 1048576} MB",
        f"{len(files)} large log/temp files, {total // 1048576} MB in all"), files=files)


def remediate_compress_logs(c, rb):
    s, done = rb.settings, 0
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for f in rb.facts.get("files", []):
        q = rb.quote(f["path"])
        if f["kind"] == "rotated_log":
            done += rb.change(rb.text(f"压缩已轮转日志 {f['path']}", f"compress {f['path']}"),
                              f"gzip -f {q}")
        elif f["kind"] == "active_log" and f["size"] >= s["active_log_min_mb"] * 1048576:
            target = rb.quote(f"{f['path']}.{stamp}.gz")
            # copytruncate keeps the writer's open file handle valid
            done += rb.change(rb.text(f"轮转并压缩正在写入的日志 {f['path']}",
                                      f"rotate (copytruncate) and compress {f['path']}"),
                              f"gzip -c {q} > {target} && : > {q}")
    return rb.result("normal", rb.text(f"处理 {done} 个日志", f"{done} logs handled"))


def remediate_remove_temp(c, rb):
    s, done = rb.settings, 0
    for f in rb.facts.get("files", []):
        if f["kind"] == "temp" and f["age_days"] >= s["temp_age_days"]:
            done += rb.change(rb.text(f"删除临时文件 {f['path']}（{f['age_days']} 天）",
                                      f"remove temp file {f['path']} ({f['age_days']} days)"),
                              f"rm -f {rb.quote(f['path'])}")
    return rb.result("normal", rb.text(f"删除 {done} 个临时文件", f"{done} temp files removed"))


def verify_space_freed(c, rb):
    s, before = rb.settings, rb.facts["before"]
    out = rb.probe(f"df -P -k {rb.quote(s['mount'])} | tail -n 1").stdout.split()
    used, avail = int(out[2]) * 1024, int(out[3]) * 1024
    percent = round(100.0 * used / max(1, used + avail), 1)
    freed = before["used"] - used
    status = rb.level(percent, s["warning_percent"], s["critical_percent"])
    if freed <= 0:
        status = "critical"
    return rb.result(status, rb.text(
        f"释放 {freed // 1024} KB，{out[5]} 现已用 {percent}%",
        f"{freed // 1024} KB freed, {out[5]} now {percent}% used"),
        freed=freed, percent=percent, used=used)
