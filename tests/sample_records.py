"""Records for the notification and export tests: a real inspection record built by
mhops.inspect.build_record, and a drill record of the shape mhops.drill writes, both
with a planted fake ID number and planted secrets in the places a careless exporter
would copy (explanations, targets, log samples, the failure reason)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from mhops import inspect
from mhops import thresholds as th
from mhops.inventory import Host, Selection

FAKE_ID = "11010119900307123X"
VAULT_SECRET = "PlantedVaultValue-7Qz"     # a literal secret the Redactor is told about
KV_SECRET = "hunter2-planted-kv"          # caught by the password=... rule alone

RAW = {
    "hostname": "web01", "kernel": "6.1", "collected_at": "2026-11-28T04:00:00Z",
    "duration_ms": 230,
    "cpu": {"percent": 12.5, "iowait_percent": 0.1, "cores": 2, "load1": 0.5, "load5": 0.4,
            "load15": 0.3},
    "memory": {"total_kb": 1000, "available_kb": 500, "percent": 50.0, "swap_total_kb": 0,
               "swap_free_kb": 0, "swap_percent": 0.0},
    "filesystems": [
        {"mount": "/", "device": "/dev/vda", "fstype": "ext4", "size_kb": 100, "avail_kb": 3,
         "used_percent": 97.0, "inodes_total": 10, "inodes_used_percent": 10.0, "error": None},
        {"mount": f"/data/\"{FAKE_ID}\\x", "device": "/dev/vdb", "fstype": "ext4",
         "size_kb": 100, "avail_kb": 15, "used_percent": 85.0, "inodes_total": 10,
         "inodes_used_percent": 10.0, "error": None}],
    "uptime_seconds": 86400,
    "clock": {"source": None, "synchronized": None, "offset_ms": None, "error": None},
    "processes": [{"name": "api", "match": "gunicorn", "count": 0, "pids": []}],
    "services": [], "listening": [], "ports": [{"port": 8000, "listening": True}],
    "unexpected_ports": [], "http": [], "tls": [],
    "logs": [{"path": "/var/log/app.log", "kind": "app", "source": "file",
              "counts": {"error": 2},
              "samples": {"error": [f"ERROR patient {FAKE_ID} {VAULT_SECRET}",
                                    f"ERROR password={KV_SECRET} failed"]},
              "bytes_read": 10, "lines_read": 2, "rotated": False, "cursor_reset": False,
              "backlog": False, "error": None}],
    "cursors": {}, "errors": [],
}


def inspection_record(lang: str = "zh-CN", tmp_path="/tmp") -> dict:
    """Host web01: disk critical, a second disk warning, a process down, log errors;
    host web02 unreachable with the planted values in its error text."""
    host = Host(name="web01", groups=("api", "wechat"), vars={})
    down = Host(name="web02", groups=("api",), vars={})
    sel = Selection(sources=("inventory/x.yml",), limit="api", hosts=(host, down))
    plans = {"web01": ({}, th.DEFAULT_THRESHOLDS), "web02": ({}, th.DEFAULT_THRESHOLDS)}
    collected = {
        "web01": inspect.Collected("web01", copy.deepcopy(RAW)),
        "web02": inspect.Collected(
            "web02", None, unreachable=True,
            error=f"Connection refused for {FAKE_ID} password={KV_SECRET} {VAULT_SECRET}")}
    opts = inspect.Options(inventory=["inventory/x.yml"], records_dir=tmp_path,
                           state_dir=tmp_path, lang=lang, operator="张工")
    started = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
    record = inspect.build_record(sel, plans, collected, opts, started)
    record["headline"] = f"2 hosts, 1 unreachable ({VAULT_SECRET})"
    return record


def drill_record(outcome: str = "failed") -> dict:
    """A drill record as mhops.drill.build_record writes it (failed at the row counts)."""
    bad = outcome == "failed"
    return {
        "schema_version": 1, "kind": "drill", "run_id": "20261128T040000Z-drill", "lang": "en",
        "time": {"started_utc": "2026-11-28T04:00:00Z", "finished_utc": "2026-11-28T04:01:05Z",
                 "started_local": "2026-11-28T12:00:00+08:00",
                 "finished_local": "2026-11-28T12:01:05+08:00", "timezone": "Asia/Shanghai",
                 "duration_s": 65.2},
        "operator": "tester",
        "backup": {"path": "/var/backups/mhops/his/his-20261128T030000Z.dump",
                   "file": "his-20261128T030000Z.dump", "name": "his", "engine": "postgresql"},
        "steps": [
            {"step": "check_file", "started_utc": "2026-11-28T04:00:00Z", "duration_s": 0.2,
             "status": "ok", "detail": ""},
            {"step": "restore", "started_utc": "2026-11-28T04:00:01Z", "duration_s": 40.1,
             "status": "ok", "detail": ""},
            {"step": "verify", "started_utc": "2026-11-28T04:00:41Z", "duration_s": 3.0,
             "status": "failed" if bad else "ok",
             "detail": f"patients: 9 rows, expected 10 ({FAKE_ID} password={KV_SECRET})"
             if bad else ""},
            {"step": "teardown", "started_utc": "2026-11-28T04:00:44Z", "duration_s": 1.0,
             "status": "ok", "detail": ""}],
        "verification": {
            "instance": {"status": "ok"},
            "tables": [{"table": "patients", "expected": 10, "actual": 9 if bad else 10,
                        "status": "failed" if bad else "ok"},
                       {"table": "departments", "expected": 5, "actual": 5, "status": "ok"}],
            "canary": {"table": "mhops_canary", "id": "abc", "present": True, "status": "ok"},
            "checksums": [{"table": "departments", "status": "unknown",
                           "reason": "source unreachable"}],
            "smoke": {"rows": 3, "min_rows": 1, "status": "ok"}},
        "rto": {"seconds": 44.3, "target_seconds": 3600, "status": "ok"},
        "rpo": {"seconds": 3600.0, "target_seconds": 86400, "status": "ok",
                "backup_taken_at": "2026-11-28T03:00:00Z"},
        "teardown": {"instance_stopped": True, "folder_removed": True},
        "outcome": outcome,
        "reason": f"row counts differ ({VAULT_SECRET})" if bad else None,
        "interrupted": False, "exit_code": {"failed": 2, "warning": 1, "passed": 0}[outcome],
        "ops_revision": "abc",
    }


def leaks(text: str) -> list[str]:
    return [n for n in (FAKE_ID, VAULT_SECRET, KV_SECRET) if n in text]
