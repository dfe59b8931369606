#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The one read-only collector an mhops inspection runs on each host.

Owns everything an inspection learns from a host in a single round trip: CPU,
memory, filesystems, uptime, clock synchronisation, processes, services,
listening TCP ports, HTTP and TLS probes, and pattern counts in logs since the
previous run (with the rotation-safe log cursors that make "since" exact).

The same text runs two ways:

* as the Ansible module ``mhops_collect`` (``main()``), and
* standalone over SSH: ``python3 -`` whose stdin is ``MHOPS_ARGS = '<json>'``
  followed by this file; one JSON object is printed on stdout.

It runs on the managed host, so it uses only the Python 3.8+ standard library,
and it never changes the host: it reads files and /proc and runs read-only
commands. Failures of single checks are reported inside the result.
"""

import collections
import copy
import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

try:
    import bz2
except ImportError:  # a trimmed Python build; .bz2 rotations are then just not recognised
    bz2 = None
try:
    import lzma
except ImportError:
    lzma = None


DOCUMENTATION = r"""
---
module: mhops_collect
short_description: Gather everything an mhops inspection needs from one host, read-only
description:
  - Collects CPU, memory, filesystem, uptime, clock, process, service, listening-port,
    HTTP, TLS and log-pattern information in one pass and returns it as one result.
  - Log patterns are counted only in lines added since the previous run, using the
    I(cursors) returned by that run; rotation (rename, dateext, compression) and
    copytruncate are followed so that no line is counted twice or lost.
  - Never changes the host. Failures of single checks are reported in the result.
  - The same file also runs standalone as C(python3 -) with C(MHOPS_ARGS) prepended.
version_added: "1.0.0"
author: mhops
options:
  cpu_sample_seconds:
    description: Seconds over which CPU use is sampled; the sample overlaps the other checks.
    type: float
    default: 0.2
  command_timeout:
    description: Upper bound in seconds for any command or network probe.
    type: float
    default: 5
  processes:
    description:
      - Processes to count, each C({name, match}); I(match) is a regular expression searched in
        the command line (NUL bytes as spaces) and in the process name (comm).
    type: list
    elements: dict
    default: []
  services:
    description:
      - Service names. Checked with one C(systemctl is-active) call when systemd is PID 1,
        otherwise as a process whose name or argv[0] base name equals the service name.
    type: list
    elements: str
    default: []
  ports:
    description: TCP ports that must be listening.
    type: list
    elements: int
    default: []
  ports_allowed:
    description:
      - Listening TCP ports that are fine but not required.
      - Each item is a port or a range such as C(32768-60999).
    type: list
    elements: raw
    default: []
  http:
    description:
      - HTTP probes, each C({name, url, expect_status=200, timeout=5}). Redirects are not
        followed and proxies from the environment are not used.
    type: list
    elements: dict
    default: []
  tls:
    description: TLS certificate probes, each C({name, host, port=443, server_name=host}).
    type: list
    elements: dict
    default: []
  logs:
    description:
      - "Log files, each C({path, kind=app, patterns={name: regex}})."
    type: list
    elements: dict
    default: []
  system_logs:
    description:
      - C(auto) (journald when present, else the first of /var/log/syslog, /var/log/messages
        that exists, else /var/log/kern.log), C(none), or a list of paths (C(journal) means
        journald).
    type: raw
    default: auto
  system_log_patterns:
    description: Patterns counted in system logs (name to regular expression).
    type: dict
  cursors:
    description: The I(cursors) returned by the previous run, unchanged.
    type: dict
    default: {}
  initial_position:
    description: Where counting starts the first time a log is seen.
    type: str
    choices: [start, end]
    default: start
  max_samples:
    description: Most recent matching lines kept per pattern per log (each cut to 400 characters).
    type: int
    default: 3
  max_read_bytes:
    description: Bytes read per log per run; the rest is read by the next run (C(backlog)).
    type: int
    default: 67108864
  fs_exclude_types:
    description: Filesystem types not reported (pseudo filesystems by default); / is always kept.
    type: list
    elements: str
notes:
  - Supports check mode; it changes nothing.
  - Rotated files are looked for next to the log (C(log.N), C(log-DATE), optionally C(.gz),
    C(.bz2), C(.xz)); logrotate C(olddir) is not followed.
"""

EXAMPLES = r"""
- name: Inspect one host
  mhops_collect:
    processes:
      - {name: api, match: "gunicorn .*api:app"}
    services: [nginx]
    ports: [443]
    ports_allowed: [22]
    http:
      - {name: api, url: "http://127.0.0.1:8080/health"}
    tls:
      - {name: gateway, host: gw.hospital.example}
    logs:
      - path: /var/log/app/api.log
        patterns: {error: "ERROR|Exception", timeout: "timed out"}
    cursors: "{{ previous_cursors | default({}) }}"
  register: inspection
"""

RETURN = r"""
collector_version:
  description: Version of the result layout.
  returned: always
  type: int
  sample: 1
hostname:
  description: Host name.
  returned: always
  type: str
kernel:
  description: Kernel release.
  returned: always
  type: str
collected_at:
  description: UTC time of the run, ISO 8601 with Z.
  returned: always
  type: str
duration_ms:
  description: Wall time of the run in milliseconds.
  returned: always
  type: int
cpu:
  description: C({percent, iowait_percent, cores, load1, load5, load15}).
  returned: always
  type: dict
memory:
  description: C({total_kb, available_kb, percent, swap_total_kb, swap_free_kb, swap_percent}).
  returned: always
  type: dict
filesystems:
  description: >-
    C({mount, device, fstype, size_kb, avail_kb, used_percent, inodes_total,
    inodes_used_percent, error}) per real filesystem.
  returned: always
  type: list
  elements: dict
uptime_seconds:
  description: Seconds since boot.
  returned: always
  type: float
clock:
  description: >-
    C({source, synchronized, offset_ms, error}); I(source) is chronyc, timedatectl, ntpq or null
    when no tool exists. A positive offset means the local clock is behind.
  returned: always
  type: dict
processes:
  description: C({name, match, count, pids}) per configured process (at most 5 pids).
  returned: always
  type: list
  elements: dict
services:
  description: C({name, method, running, detail}) per configured service.
  returned: always
  type: list
  elements: dict
listening:
  description: C({port, address, family}) per listening TCP socket.
  returned: always
  type: list
  elements: dict
ports:
  description: C({port, listening}) per required port.
  returned: always
  type: list
  elements: dict
unexpected_ports:
  description: Listening ports neither required nor allowed, sorted.
  returned: always
  type: list
  elements: int
http:
  description: C({name, url, status, latency_ms, ok, error}) per probe.
  returned: always
  type: list
  elements: dict
tls:
  description: C({name, host, port, not_after, days_left, verified, error}) per probe.
  returned: always
  type: list
  elements: dict
logs:
  description: >-
    C({path, kind, source, counts, samples, bytes_read, lines_read, rotated, cursor_reset,
    backlog, error}) per log; system logs have kind C(system).
  returned: always
  type: list
  elements: dict
cursors:
  description: Cursors to pass to the next run (by log path, C(journal) for journald).
  returned: always
  type: dict
errors:
  description: Anything else that went wrong.
  returned: always
  type: list
  elements: str
"""


COLLECTOR_VERSION = 1
HEAD_BYTES = 4096
SAMPLE_CHARS = 400
READ_CHUNK = 1 << 20
PROBE_WORKERS = 8
# Joins wait this much longer than command_timeout so a probe's own timeout, with its
# clearer message, normally fires first.
JOIN_GRACE = 0.5
EMPTY_SHA1 = hashlib.sha1(b"").hexdigest()
JOURNAL_KEY = "journal"
SYSTEM_LOG_FILES = ("/var/log/syslog", "/var/log/messages", "/var/log/kern.log")
DEFAULT_SYSTEM_PATTERNS = {"error": r"(?i)\b(error|fail(ed|ure)?|panic|oom|segfault)\b"}
DEFAULT_FS_EXCLUDE = [
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "securityfs",
    "pstore", "bpf", "debugfs", "tracefs", "configfs", "fusectl", "mqueue", "hugetlbfs",
    "autofs", "binfmt_misc", "rpc_pipefs", "nsfs", "efivarfs", "selinuxfs", "ramfs",
    "rootfs", "nfsd", "devfs", "sockfs", "pipefs", "usbfs", "squashfs", "overlay",
    "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal", "fuse.snapfuse",
]

DEFAULTS = {
    "cpu_sample_seconds": 0.2,
    "command_timeout": 5.0,
    "processes": [],
    "services": [],
    "ports": [],
    "ports_allowed": [],
    "http": [],
    "tls": [],
    "logs": [],
    "system_logs": "auto",
    "system_log_patterns": DEFAULT_SYSTEM_PATTERNS,
    "cursors": {},
    "initial_position": "start",
    "max_samples": 3,
    "max_read_bytes": 64 * 1024 * 1024,
    "fs_exclude_types": DEFAULT_FS_EXCLUDE,
}


# ---------------------------------------------------------------------------
# small helpers


def _describe(exc):
    if isinstance(exc, (socket.timeout, TimeoutError, subprocess.TimeoutExpired)):
        return "timed out"
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return _describe(exc.reason) if isinstance(exc.reason, BaseException) else str(exc.reason)
    text = str(exc)
    return "%s: %s" % (type(exc).__name__, text) if text else type(exc).__name__


def _utc_iso(epoch):
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _pct(part, whole):
    return round(100.0 * part / whole, 2) if whole else 0.0


def _run(cmd, timeout):
    """Run a read-only command; returns (rc, stdout, stderr). Raises on timeout."""
    env = dict(os.environ, LC_ALL="C", LANG="C")
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=max(0.1, timeout), env=env,
                          universal_newlines=True, errors="replace")
    return proc.returncode, proc.stdout, proc.stderr


class _Job(object):
    """fn(*args) on another thread; failed(why) builds the result if it raises or hangs."""

    def __init__(self, fn, args, failed):
        self.fn, self.args, self.failed = fn, args, failed
        self.done = threading.Event()
        self.result = None

    def run(self):
        try:
            self.result = self.fn(*self.args)
        except Exception as exc:  # reported through the result, never raised
            self.result = self.failed(_describe(exc))
        finally:
            self.done.set()

    def outcome(self):
        return self.result if self.done.is_set() else self.failed("timed out")


class _Runner(object):
    """Runs jobs on daemon threads so a hung probe or mount can never hold up the exit."""

    def __init__(self, jobs, workers):
        self.jobs = list(jobs)
        self._next = 0
        self._lock = threading.Lock()
        for _ in range(min(workers, len(self.jobs))):
            thread = threading.Thread(target=self._work)
            thread.daemon = True
            thread.start()

    def _work(self):
        while True:
            with self._lock:
                if self._next >= len(self.jobs):
                    return
                job = self.jobs[self._next]
                self._next += 1
            job.run()

    def wait(self, deadline):
        for job in self.jobs:
            job.done.wait(max(0.0, deadline - time.monotonic()))
        return [job.outcome() for job in self.jobs]


# ---------------------------------------------------------------------------
# arguments


def _as_list(value, name):
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError("%s must be a list" % name)


def _port_range(item):
    """A port or 'low-high' as an inclusive (low, high) pair."""
    low, _, high = str(item).partition("-")
    return (int(low), int(high or low))


def _coerce(key, value):
    if key in ("cpu_sample_seconds", "command_timeout"):
        value = float(value)
        return max(0.0, value) if key == "cpu_sample_seconds" else max(0.1, value)
    if key in ("max_samples", "max_read_bytes"):
        return max(0 if key == "max_samples" else 1, int(value))
    if key == "ports":
        return [int(p) for p in _as_list(value, key)]
    if key == "ports_allowed":
        return [_port_range(p) for p in _as_list(value, key)]
    if key in ("processes", "http", "tls", "logs"):
        return _as_list(value, key)
    if key in ("services", "fs_exclude_types"):
        return [str(s) for s in _as_list(value, key)]
    if key in ("system_log_patterns", "cursors"):
        if not isinstance(value, dict):
            raise ValueError("%s must be a mapping" % key)
        return value
    if key == "initial_position":
        if value not in ("start", "end"):
            raise ValueError("initial_position must be start or end")
        return value
    if key == "system_logs":
        if value in ("auto", "none"):
            return value
        if isinstance(value, str):
            return [value]
        return [str(p) for p in _as_list(value, key)]
    return value


def _settings(args, errors):
    cfg = {}
    args = args or {}
    for key, default in DEFAULTS.items():
        value = args.get(key)
        if value is None:
            cfg[key] = copy.deepcopy(default)
            continue
        try:
            cfg[key] = _coerce(key, value)
        except (TypeError, ValueError) as exc:
            errors.append("argument %s: %s; using the default" % (key, exc))
            cfg[key] = copy.deepcopy(default)
    return cfg


# ---------------------------------------------------------------------------
# CPU, memory, uptime


def _cpu_times():
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    values = [int(v) for v in fields[1:9]]
    values += [0] * (8 - len(values))
    # user nice system idle iowait irq softirq steal; guest time is already inside user.
    return sum(values), values[3], values[4]


def _cpu(first, second):
    total = second[0] - first[0]
    idle = second[1] - first[1]
    iowait = second[2] - first[2]
    load = os.getloadavg()
    return {
        "percent": round(100.0 * (total - idle - iowait) / total, 2) if total > 0 else 0.0,
        "iowait_percent": round(100.0 * iowait / total, 2) if total > 0 else 0.0,
        "cores": os.cpu_count(),
        "load1": round(load[0], 2),
        "load5": round(load[1], 2),
        "load15": round(load[2], 2),
    }


def _memory():
    info = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2:
                info[parts[0].rstrip(":")] = int(parts[1])
    total = info.get("MemTotal", 0)
    available = info.get("MemAvailable")
    if available is None:  # kernels before 3.14
        available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
    swap_total = info.get("SwapTotal", 0)
    swap_free = info.get("SwapFree", 0)
    return {
        "total_kb": total,
        "available_kb": available,
        "percent": _pct(total - available, total),
        "swap_total_kb": swap_total,
        "swap_free_kb": swap_free,
        "swap_percent": _pct(swap_total - swap_free, swap_total),
    }


def _uptime():
    with open("/proc/uptime") as fh:
        return round(float(fh.read().split()[0]), 2)


# ---------------------------------------------------------------------------
# filesystems


def _unescape_mount(text):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def _mounts(exclude):
    by_mount = collections.OrderedDict()
    with open("/proc/self/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) < 3:
                continue
            device, mount, fstype = (_unescape_mount(p) for p in parts[:3])
            by_mount.pop(mount, None)  # a later mount hides an earlier one
            by_mount[mount] = (device, fstype)
    excluded = set(exclude)
    out = []
    for mount in sorted(by_mount):
        device, fstype = by_mount[mount]
        if fstype in excluded and mount != "/":
            continue
        out.append({"mount": mount, "device": device, "fstype": fstype})
    return out


def _statvfs(entry):
    st = os.statvfs(entry["mount"])
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    out = dict(entry)
    out.update({
        "size_kb": st.f_blocks * st.f_frsize // 1024,
        "avail_kb": avail // 1024,
        "used_percent": _pct(used, used + avail),
        "inodes_total": st.f_files,
        "inodes_used_percent": _pct(st.f_files - st.f_ffree, st.f_files) if st.f_files else None,
        "error": None,
    })
    return out


def _fs_failed(entry, why):
    out = dict(entry)
    out.update({"size_kb": None, "avail_kb": None, "used_percent": None, "inodes_total": None,
                "inodes_used_percent": None, "error": "statvfs " + why})
    return out


def _fs_runner(cfg):
    # statvfs on a hung NFS mount never returns: one daemon thread per mount.
    jobs = [_Job(_statvfs, (e,), lambda why, e=e: _fs_failed(e, why))
            for e in _mounts(cfg["fs_exclude_types"])]
    return _Runner(jobs, len(jobs))


# ---------------------------------------------------------------------------
# clock


def _clock(timeout, deadline):
    tried = []

    def budget():
        return max(0.1, min(timeout, deadline - time.monotonic()))

    chronyc = shutil.which("chronyc")
    if chronyc:
        try:
            rc, out, err = _run([chronyc, "-c", "tracking"], budget())
            fields = out.strip().splitlines()[0].split(",") if out.strip() else []
            if rc == 0 and len(fields) >= 14:
                return {"source": "chronyc",
                        "synchronized": fields[13].strip() != "Not synchronised",
                        "offset_ms": round(float(fields[4]) * 1000.0, 3), "error": None}
            tried.append("chronyc: " + (err.strip() or out.strip() or "exit %d" % rc))
        except Exception as exc:
            tried.append("chronyc: " + _describe(exc))
    timedatectl = shutil.which("timedatectl")
    # Without systemd as PID 1 timedatectl cannot answer: that is "no tool", not a fault.
    if timedatectl and os.path.isdir("/run/systemd/system"):
        try:
            rc, out, err = _run([timedatectl, "show", "-p", "NTPSynchronized", "--value"],
                                budget())
            value = out.strip()
            if rc == 0 and value in ("yes", "no"):
                return {"source": "timedatectl", "synchronized": value == "yes",
                        "offset_ms": None, "error": None}
            tried.append("timedatectl: " + (err.strip() or value or "exit %d" % rc))
        except Exception as exc:
            tried.append("timedatectl: " + _describe(exc))
    ntpq = shutil.which("ntpq")
    if ntpq:
        try:
            rc, out, err = _run([ntpq, "-c", "rv 0 leap,offset"], budget())
            found = dict(re.findall(r"(\w+)=([^,\s]+)", out))
            if rc == 0 and "offset" in found:
                leap = found.get("leap")  # 11 is the alarm state: not synchronised
                return {"source": "ntpq",
                        "synchronized": None if leap is None else leap not in ("11", "3"),
                        "offset_ms": round(float(found["offset"]), 3), "error": None}
            tried.append("ntpq: " + (err.strip() or out.strip() or "exit %d" % rc))
        except Exception as exc:
            tried.append("ntpq: " + _describe(exc))
    return {"source": None, "synchronized": None, "offset_ms": None,
            "error": "; ".join(tried) if tried else None}


# ---------------------------------------------------------------------------
# processes and services


def _process_table():
    me = os.getpid()
    table = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as fh:
                state = fh.read().rsplit(b")", 1)[-1].split()[:1]
            if state in ([b"Z"], [b"X"]):  # a defunct "api" is not a running api
                continue
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                raw = fh.read()
            with open("/proc/%s/comm" % entry, "rb") as fh:
                comm = fh.read().decode("utf-8", "replace").rstrip("\n")
        except OSError:  # exited while we looked, or hidden by hidepid
            continue
        argv0 = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        cmdline = raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        table.append({"pid": int(entry), "comm": comm, "cmdline": cmdline, "argv0": argv0})
    return table


def _processes(specs, table, errors):
    out = []
    for spec in specs:
        if isinstance(spec, str):
            spec = {"name": spec, "match": spec}
        name = str(spec.get("name") or spec.get("match") or "")
        pattern = str(spec.get("match") or name)
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            errors.append("process %s: invalid match %r: %s" % (name, pattern, exc))
            out.append({"name": name, "match": pattern, "count": 0, "pids": []})
            continue
        pids = sorted(p["pid"] for p in table if rx.search(p["cmdline"]) or rx.search(p["comm"]))
        out.append({"name": name, "match": pattern, "count": len(pids), "pids": pids[:5]})
    return out


def _systemd_is_pid1():
    return os.path.isdir("/run/systemd/system")


def _services_systemd(names, timeout):
    exe = shutil.which("systemctl")
    if not exe:
        return [{"name": n, "method": "systemd", "running": False,
                 "detail": "systemctl not found"} for n in names]
    rc, out, err = _run([exe, "is-active"] + list(names), timeout)
    states = out.split()
    if len(states) != len(names):
        why = (err.strip() or out.strip() or "exit %d" % rc)[:300]
        return [{"name": n, "method": "systemd", "running": False,
                 "detail": "systemctl: " + why} for n in names]
    return [{"name": name, "method": "systemd", "running": states[i] == "active",
             "detail": states[i]} for i, name in enumerate(names)]


def _services_process(names, table):
    out = []
    for name in names:
        want = name[:-len(".service")] if name.endswith(".service") else name
        pids = sorted(p["pid"] for p in table
                      if p["comm"] in (want, want[:15]) or os.path.basename(p["argv0"]) == want)
        if pids:
            detail = "pid%s %s" % ("s" if len(pids) > 1 else "", ", ".join(map(str, pids[:5])))
        else:
            detail = "no process named %s" % want
        out.append({"name": name, "method": "process", "running": bool(pids), "detail": detail})
    return out


# ---------------------------------------------------------------------------
# listening ports


def _proc_net_address(hexaddr):
    raw = bytes.fromhex(hexaddr)
    if sys.byteorder == "little":  # the kernel prints each 32-bit word in host order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, raw)


def _listening():
    found = {}
    for path, family in (("/proc/net/tcp", "ipv4"), ("/proc/net/tcp6", "ipv6")):
        try:
            with open(path) as fh:
                lines = fh.read().splitlines()[1:]
        except OSError:  # no IPv6 on this host
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 4 or parts[3] != "0A":
                continue
            addr_hex, port_hex = parts[1].split(":")
            address = _proc_net_address(addr_hex)
            port = int(port_hex, 16)
            found[(port, address)] = {"port": port, "address": address, "family": family}
    return [found[k] for k in sorted(found)]


# ---------------------------------------------------------------------------
# HTTP and TLS probes


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A health check must see the status the endpoint itself returns.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _probe_timeout(item, cap):
    try:
        return max(0.1, min(float(item.get("timeout") or cap), cap))
    except (TypeError, ValueError):
        return cap


def _http_entry(item):
    return {"name": str(item.get("name") or item.get("url")), "url": item.get("url"),
            "status": None, "latency_ms": None, "ok": False, "error": None}


def _probe_http(item, cap):
    out = _http_entry(item)
    url = str(item.get("url") or "")
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        out["error"] = "unsupported URL %r" % url
        return out
    expect = int(item.get("expect_status") or 200)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url, headers={"User-Agent": "mhops-collect/1"})
    start = time.monotonic()
    try:
        response = opener.open(request, timeout=_probe_timeout(item, cap))
        try:
            out["status"] = response.getcode()
        finally:
            response.close()
    except urllib.error.HTTPError as exc:
        out["status"] = exc.code
        exc.close()
    except Exception as exc:
        out["error"] = _describe(exc)
    out["latency_ms"] = round((time.monotonic() - start) * 1000.0, 1)
    if out["status"] is not None:
        out["ok"] = out["status"] == expect
        if not out["ok"]:
            out["error"] = "status %d, expected %d" % (out["status"], expect)
    return out


def _decode_der_not_after(der):
    # No third-party libraries on the host: let the ssl module parse a temporary PEM file.
    fd, path = tempfile.mkstemp(prefix="mhops-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ssl.DER_cert_to_PEM_cert(der))
        return ssl._ssl._test_decode_cert(path).get("notAfter")
    finally:
        os.unlink(path)


def _tls_entry(item):
    host = str(item.get("host") or "")
    return {"name": str(item.get("name") or host), "host": host,
            "port": int(item.get("port") or 443), "not_after": None, "days_left": None,
            "verified": False, "error": None}


def _probe_tls(item, cap):
    out = _tls_entry(item)
    server_name = str(item.get("server_name") or out["host"])
    timeout = _probe_timeout(item, cap)
    deadline = time.monotonic() + timeout
    address = (out["host"], out["port"])
    not_after = None
    try:
        context = ssl.create_default_context()
        with socket.create_connection(address, timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=server_name) as conn:
            not_after = conn.getpeercert().get("notAfter")
        out["verified"] = True
    except ssl.SSLCertVerificationError as exc:
        out["error"] = exc.verify_message or str(exc)
        try:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            left = max(0.1, deadline - time.monotonic())
            with socket.create_connection(address, timeout=left) as raw, \
                    context.wrap_socket(raw, server_hostname=server_name) as conn:
                der = conn.getpeercert(binary_form=True)
            not_after = _decode_der_not_after(der)
        except Exception as second:
            out["error"] = "%s; unverified retry: %s" % (out["error"], _describe(second))
    except Exception as exc:
        out["error"] = _describe(exc)
    if not_after:
        expires = ssl.cert_time_to_seconds(not_after)
        out["not_after"] = _utc_iso(expires)
        out["days_left"] = round((expires - time.time()) / 86400.0, 3)
    return out


def _probe_runner(cfg):
    cap = cfg["command_timeout"]
    jobs = []
    for item in cfg["http"]:
        item = item if isinstance(item, dict) else {"url": item}
        jobs.append(_Job(_probe_http, (item, cap),
                         lambda why, item=item: dict(_http_entry(item), error=why)))
    for item in cfg["tls"]:
        item = item if isinstance(item, dict) else {"host": item}
        jobs.append(_Job(_probe_tls, (item, cap),
                         lambda why, item=item: dict(_tls_entry(item), error=why)))
    return _Runner(jobs, PROBE_WORKERS), len(cfg["http"])


# ---------------------------------------------------------------------------
# pattern counting


# A line-wise match can only be missed by a whole-chunk MULTILINE search when the
# pattern looks past the line (lookaround, \A \Z) or cannot backtrack (atomic,
# possessive); those patterns are matched line by line instead.
_LINE_BOUND = re.compile(r"\\[AZz]|\(\?[=!<>(]|\(\?[a-zA-Z]*-|[*+?}]\+")


class _Counter(object):
    """Counts matching lines per pattern and keeps the most recent samples."""

    def __init__(self, patterns, max_samples):
        self.rules = []
        for name in sorted(patterns):
            source = str(patterns[name])
            rx = re.compile(source)
            fast = None if _LINE_BOUND.search(source) else re.compile(source, re.MULTILINE)
            self.rules.append((str(name), rx, fast))
        self.counts = dict((name, 0) for name, _, _ in self.rules)
        self.samples = dict((name, collections.deque(maxlen=max_samples))
                            for name, _, _ in self.rules)
        self.lines = 0

    def feed(self, text):
        """Count the lines of text; a final newline ends the last line."""
        if text.endswith("\n"):
            text = text[:-1]
        self.lines += text.count("\n") + 1
        for name, rx, fast in self.rules:
            for line in _matching_lines(text, rx, fast):
                self.counts[name] += 1
                self.samples[name].append(line.rstrip("\r")[:SAMPLE_CHARS])

    def sample_lists(self):
        return dict((name, list(lines)) for name, lines in self.samples.items())


def _matching_lines(text, rx, fast):
    if fast is None:
        for line in text.split("\n"):
            if rx.search(line):
                yield line
        return
    pos, end = 0, len(text)
    while pos <= end:
        m = fast.search(text, pos)
        if m is None:
            return
        start = text.rfind("\n", 0, m.start()) + 1
        stop = text.find("\n", m.start())
        if stop < 0:
            stop = end
        line = text[start:stop]
        if rx.search(line):
            yield line
        pos = stop + 1


# ---------------------------------------------------------------------------
# log files and their rotated siblings


def _open_ro(path):
    # O_NONBLOCK: opening a FIFO put in place of a log must not wait for a writer.
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        # Reading should not even change atime; only the owner or root may ask for that.
        try:
            return os.open(path, flags | noatime)
        except PermissionError:
            pass
    return os.open(path, flags)


_DECOMPRESSORS = {".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")}
if bz2 is not None:
    _DECOMPRESSORS[".bz2"] = lambda raw: bz2.BZ2File(raw, mode="rb")
if lzma is not None:
    _DECOMPRESSORS[".xz"] = lambda raw: lzma.LZMAFile(raw, mode="rb")
_NUMBERED = re.compile(r"^\.(\d{1,5})$")
_DATED = re.compile(r"^[-._]\d[\d._:T-]{5,}$")


class _Decompressed(object):
    # Decompressors given a file object do not close it; this closes both.
    def __init__(self, raw, ext):
        self.raw = raw
        self.stream = _DECOMPRESSORS[ext](raw)

    def read(self, size):
        return self.stream.read(size)

    def close(self):
        try:
            self.stream.close()
        finally:
            self.raw.close()


class _PreadReader(object):
    def __init__(self, fd, pos):
        self.fd, self.pos = fd, pos

    def read(self, size):
        data = os.pread(self.fd, size, self.pos)
        self.pos += len(data)
        return data

    def close(self):
        pass


class _LogFile(object):
    """One file holding a log's lines: the live file or a rotated sibling."""

    def __init__(self, path, st, ext=None, fd=None):
        self.path, self.st, self.ext, self.fd = path, st, ext, fd
        self._prefix = None
        self._size = None

    def identity(self):
        return self.st.st_dev, self.st.st_ino

    def reader(self, start):
        if self.fd is not None:
            return _PreadReader(self.fd, start)
        raw = os.fdopen(_open_ro(self.path), "rb")
        if self.ext is None:
            raw.seek(start)
            return raw
        stream = _Decompressed(raw, self.ext)
        try:
            left = start
            while left > 0:
                skipped = len(stream.read(min(left, READ_CHUNK)))
                if not skipped:
                    break
                left -= skipped
        except Exception:
            stream.close()
            raise
        return stream

    def prefix(self):
        if self._prefix is None:
            reader = self.reader(0)
            try:
                data = b""
                while len(data) < HEAD_BYTES:
                    more = reader.read(HEAD_BYTES - len(data))
                    if not more:
                        break
                    data += more
            finally:
                reader.close()
            self._prefix = data
        return self._prefix

    def size(self):
        """Length of the (decompressed) content."""
        if self.fd is not None:
            return os.fstat(self.fd).st_size
        if self.ext is None:
            return self.st.st_size
        if self._size is None:
            self._size = self._gzip_size() if self.ext == ".gz" else None
            if self._size is None:
                reader = self.reader(0)
                try:
                    total = 0
                    while True:
                        chunk = reader.read(READ_CHUNK)
                        if not chunk:
                            break
                        total += len(chunk)
                finally:
                    reader.close()
                self._size = total
        return self._size

    def _gzip_size(self):
        # The gzip trailer holds the length modulo 2**32. Deflate shrinks at most ~1032:1,
        # so for a small enough file that is the exact length; otherwise count.
        if self.st.st_size < 18 or self.st.st_size * 1032 >= 1 << 32:
            return None
        fd = _open_ro(self.path)
        try:
            tail = os.pread(fd, 4, self.st.st_size - 4)
        finally:
            os.close(fd)
        return int.from_bytes(tail, "little")

    def head_matches(self, head_len, head_sha1):
        prefix = self.prefix()
        return len(prefix) >= head_len and \
            hashlib.sha1(prefix[:head_len]).hexdigest() == head_sha1

    def forget(self):
        self._prefix = None
        self._size = None


def _rotated_siblings(path):
    """Rotated copies of path, oldest first: log-DATE ones, then log.N by N."""
    folder, base = os.path.split(path)
    numbered, dated = {}, {}
    for name in os.listdir(folder or "."):
        if not name.startswith(base) or name == base:
            continue
        rest = name[len(base):]
        compressed = None
        for ext in _DECOMPRESSORS:
            if rest.endswith(ext):
                rest, compressed = rest[:-len(ext)], ext
                break
        m = _NUMBERED.match(rest)
        if m:
            group, key = numbered, int(m.group(1))
        elif _DATED.match(rest):
            group, key = dated, rest
        else:
            continue
        # While logrotate compresses, the plain file and a partial .gz exist together.
        if key in group and group[key][1] is None:
            continue
        full = os.path.join(folder, name)
        try:
            st = os.stat(full)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            group[key] = (full, compressed, st)
    # Compressing gives a file a new mtime, so a date in the name, year first (logrotate's
    # default -%Y%m%d, or -%s), orders better; other date formats fall back to mtime.
    digits = dict((k, re.sub(r"\D", "", k)) for k in dated)
    if all(re.match(r"(19|20)\d{6}|1\d{9}$", d) for d in digits.values()):
        order = sorted(dated, key=lambda k: (digits[k], dated[k][2].st_mtime, k))
    else:
        order = sorted(dated, key=lambda k: (dated[k][2].st_mtime, k))
    ordered = [dated[k] for k in order]
    ordered += [numbered[k] for k in sorted(numbered, reverse=True)]
    return [_LogFile(p, st, ext=ext) for p, ext, st in ordered]


def _valid_cursor(cursor):
    if not isinstance(cursor, dict):
        return False
    for key in ("dev", "ino", "offset", "head_len"):
        if not isinstance(cursor.get(key), int) or isinstance(cursor.get(key), bool) \
                or cursor[key] < 0:
            return False
    return isinstance(cursor.get("head_sha1"), str) and cursor["head_len"] <= HEAD_BYTES


def _newest(files, test):
    for index in range(len(files) - 1, -1, -1):
        try:
            if test(files[index]):
                return index
        except Exception:  # an unreadable or corrupt rotated file is simply not the one
            continue
    return None


def _end_of_complete_lines(live):
    size = live.size()
    pos = size
    while pos > 0 and size - pos < READ_CHUNK:
        step = min(64 * 1024, pos)
        block = os.pread(live.fd, step, pos - step)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return pos - step + cut + 1
        pos -= step
    return 0 if pos == 0 else size


def _plan(live, cursor, initial, siblings):
    """Decide what to read: ([(file, start offset)], rotated, cursor_reset).

    The live file is always last. Cursor layout: dev, ino, offset, head_len and the
    sha1 of the first head_len bytes. head_len 0 marks a live file that was empty;
    its offset and hash then describe the newest non-empty rotated file, whose end
    is where counting stopped (see _park).
    """
    if cursor is None:
        start = _end_of_complete_lines(live) if initial == "end" else 0
        return [(live, start)], False, False
    dev, ino = cursor["dev"], cursor["ino"]
    offset, head_len, head_sha1 = cursor["offset"], cursor["head_len"], cursor["head_sha1"]
    same_inode = live.identity() == (dev, ino)

    if head_len == 0:
        files = siblings()
        if offset == 0:
            # No rotated file existed when the cursor was taken: all of them are new.
            rotated = bool(files) or not same_inode
            return [(f, 0) for f in files] + [(live, 0)], rotated, False
        span = min(offset, HEAD_BYTES)
        index = _newest(files, lambda f: f.head_matches(span, head_sha1) and f.size() >= offset)
        if index is None:
            # Rotated out (say by rotations of an empty log): every rotated file left is
            # newer than it, but something may have gone with it.
            return [(f, 0) for f in files] + [(live, 0)], True, True
        newer = files[index + 1:]
        plan = [(files[index], offset)] + [(f, 0) for f in newer] + [(live, 0)]
        return plan, bool(newer) or not same_inode, False

    if live.st.st_ino == ino and live.head_matches(head_len, head_sha1) and live.size() >= offset:
        return [(live, offset)], False, False  # the usual case: appended since the last run

    files = siblings()
    index = None
    if not same_inode:
        index = _newest(files, lambda f: f.identity() == (dev, ino)
                        and f.head_matches(head_len, head_sha1) and f.size() >= offset)
    if index is None:  # compressed, or copied away by copytruncate: known by content
        index = _newest(files, lambda f: f.head_matches(head_len, head_sha1)
                        and f.size() >= offset)
    if index is not None:
        plan = [(files[index], offset)] + [(f, 0) for f in files[index + 1:]] + [(live, 0)]
        return plan, True, False
    if not same_inode and live.head_matches(head_len, head_sha1) and live.size() >= offset:
        return [(live, offset)], False, False  # same content under a new inode or device
    # Truncated with no copy, or rotated away and deleted: what was written since is gone.
    return [(live, 0)], True, True


def _cursor_for(log_file, offset):
    prefix = log_file.prefix()
    return {"dev": log_file.st.st_dev, "ino": log_file.st.st_ino, "offset": offset,
            "head_len": len(prefix), "head_sha1": hashlib.sha1(prefix).hexdigest()}


def _park(live, siblings, ends):
    """Cursor for an empty live file.

    An empty file has no content to recognise it by after copytruncate, so the cursor
    records instead the end of the newest non-empty rotated file: everything newer
    than that file (including the live file) is unread.
    """
    for log_file in reversed(siblings()):
        try:
            size = ends.get(log_file.path)
            if size is None:
                size = log_file.size()
            if size > 0:
                prefix = log_file.prefix()[:min(size, HEAD_BYTES)]
                return {"dev": live.st.st_dev, "ino": live.st.st_ino, "offset": size,
                        "head_len": 0, "head_sha1": hashlib.sha1(prefix).hexdigest()}
        except Exception:
            continue
    return {"dev": live.st.st_dev, "ino": live.st.st_ino, "offset": 0, "head_len": 0,
            "head_sha1": EMPTY_SHA1}


class _Budget(object):
    def __init__(self, limit):
        self.limit, self.used = limit, 0


def _consume(log_file, start, is_live, counter, budget):
    """Count complete lines from start; returns (end offset, stopped by the budget)."""
    if log_file.ext is not None and start > 0 and start >= log_file.size():
        return start, False  # nothing after the cursor: spare a full decompression
    reader = log_file.reader(start)
    pos, pending, stopped = start, b"", False

    def take(blob):
        counter.feed(blob.decode("utf-8", "replace"))
        budget.used += len(blob)

    try:
        while True:
            room = budget.limit - budget.used - len(pending)
            data = reader.read(min(READ_CHUNK, room)) if room > 0 else reader.read(1)
            if data and room <= 0:
                if pending and budget.used == 0:
                    take(pending)  # one line longer than the whole budget: still move on
                    pos += len(pending)
                stopped = True
                break
            if not data:
                # A rotated file is finished, so its unterminated last line is complete.
                if pending and not is_live:
                    take(pending)
                    pos += len(pending)
                break
            buf = pending + data if pending else data
            cut = buf.rfind(b"\n") + 1
            if cut:
                take(buf[:cut])
                pos += cut
            pending = buf[cut:]
    finally:
        reader.close()
    return pos, stopped


def _log_entry(path, kind, source, names):
    return {"path": path, "kind": kind, "source": source,
            "counts": dict((n, 0) for n in names), "samples": dict((n, []) for n in names),
            "bytes_read": 0, "lines_read": 0, "rotated": False, "cursor_reset": False,
            "backlog": False, "error": None}


def _counter_or_error(path, kind, source, patterns, cfg):
    if not isinstance(patterns, dict) or not patterns:
        entry = _log_entry(path, kind, source, [])
        entry["error"] = "patterns must be a non-empty mapping of name to regex"
        return None, entry
    names = sorted(str(n) for n in patterns)
    try:
        counter = _Counter(patterns, cfg["max_samples"])
    except re.error as exc:
        entry = _log_entry(path, kind, source, names)
        entry["error"] = "invalid pattern: %s" % exc
        return None, entry
    return counter, _log_entry(path, kind, source, names)


def _read_log_file(path, kind, patterns, cursor, cfg, errors):
    """Returns (entry, new cursor); on error the old cursor comes back unchanged."""
    counter, entry = _counter_or_error(path, kind, "file", patterns, cfg)
    if counter is None:
        return entry, cursor
    names = sorted(counter.counts)
    try:
        fd = _open_ro(path)
    except FileNotFoundError:
        entry["error"] = "missing"
        return entry, cursor
    except (PermissionError, IsADirectoryError):
        entry["error"] = "unreadable"
        return entry, cursor
    except OSError as exc:
        entry["error"] = _describe(exc)
        return entry, cursor
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # never block on a FIFO or read a device
            entry["error"] = "unreadable"
            return entry, cursor
        live = _LogFile(path, st, fd=fd)
        old_cursor = cursor
        if cursor is not None and not _valid_cursor(cursor):
            errors.append("log %s: ignoring malformed cursor %r" % (path, cursor))
            cursor = None
        cache = []

        def siblings():
            if not cache:
                cache.append(_rotated_siblings(path))
            return cache[0]

        try:
            plan, rotated, reset = _plan(live, cursor, cfg["initial_position"], siblings)
        except OSError as exc:
            entry["error"] = "unreadable" if isinstance(exc, PermissionError) else _describe(exc)
            return entry, old_cursor
        budget = _Budget(cfg["max_read_bytes"])
        ends, final, backlog = {}, None, False
        for log_file, start in plan:
            try:
                end, backlog = _consume(log_file, start, log_file is live, counter, budget)
            except Exception as exc:
                if log_file is live:
                    entry = _log_entry(path, kind, "file", names)
                    entry["error"] = _describe(exc)
                    return entry, old_cursor
                errors.append("log %s: skipped rotated file %s: %s"
                              % (path, log_file.path, _describe(exc)))
                continue
            ends[log_file.path] = end
            final = (log_file, end)
            if backlog:
                break
        log_file, end = final
        log_file.forget()
        if log_file is live and live.size() == 0:
            new_cursor = _park(live, siblings, ends)
        else:
            new_cursor = _cursor_for(log_file, end)
        entry.update({"counts": counter.counts, "samples": counter.sample_lists(),
                      "bytes_read": budget.used, "lines_read": counter.lines,
                      "rotated": rotated, "cursor_reset": reset, "backlog": backlog})
        return entry, new_cursor
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# journald


def _journald_present():
    return os.path.isdir("/run/systemd/journal") and shutil.which("journalctl") is not None


def parse_journal_output(text, counter):
    """Feed journalctl short-iso output to counter; returns the trailing cursor or None."""
    cursor = None
    lines = []
    for line in text.split("\n"):
        if line.startswith("-- cursor: "):
            cursor = line[len("-- cursor: "):].strip()
        elif line and not line.startswith("-- "):  # "-- Boot ... --" and similar markers
            lines.append(line)
    if lines:
        counter.feed("\n".join(lines))
    return cursor


def _capped_output(cmd, timeout, cap):
    """stdout of cmd, at most cap bytes; returns (data, complete). Raises on failure."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    cut = []
    timer = threading.Timer(timeout, lambda: (cut.append("timed out"), proc.kill()))
    timer.start()
    try:
        data = proc.stdout.read(cap + 1)
        if len(data) > cap:
            cut.append("output limit")
            proc.kill()
    finally:
        timer.cancel()
        proc.stdout.close()
        # journalctl's stderr is a line or two, far below the pipe buffer.
        err = proc.stderr.read(4000).decode("utf-8", "replace").strip()
        proc.stderr.close()
        proc.wait()
    if proc.returncode != 0 and not cut:
        raise RuntimeError("journalctl exit %d: %s" % (proc.returncode, err))
    return data[:cap], not cut


def _read_journal(patterns, cursor, cfg, deadline):
    counter, entry = _counter_or_error(JOURNAL_KEY, "system", "journald", patterns, cfg)
    if counter is None:
        return entry, cursor
    base = [shutil.which("journalctl"), "--no-pager", "-q", "-o", "short-iso", "--show-cursor"]
    timeout = max(0.1, min(cfg["command_timeout"], deadline - time.monotonic()))
    first = cfg["initial_position"] == "end" and not cursor
    fresh = base + (["-n", "1"] if first else ["--since=-24h"])
    try:
        try:
            cmd = base + ["--after-cursor=" + cursor] if cursor else fresh
            data, complete = _capped_output(cmd, timeout, cfg["max_read_bytes"])
        except RuntimeError:
            if not cursor:
                raise
            # A cursor journald no longer knows (journal vacuumed or rebuilt).
            entry["cursor_reset"] = True
            data, complete = _capped_output(fresh, timeout, cfg["max_read_bytes"])
        text = data.decode("utf-8", "replace")
        if first:
            new_cursor = parse_journal_output(text, _Counter({}, 0))
        elif complete:
            new_cursor = parse_journal_output(text, counter) or cursor
        else:
            # Output cut short has no cursor: count what came, then go on from the end.
            parse_journal_output(text[:text.rfind("\n") + 1], counter)
            tail, _ = _capped_output(base + ["-n", "1"], timeout, 1 << 20)
            new_cursor = parse_journal_output(tail.decode("utf-8", "replace"),
                                              _Counter({}, 0)) or cursor
            entry.update({"cursor_reset": True, "backlog": True})
    except Exception as exc:
        entry["error"] = _describe(exc)
        return entry, cursor
    entry.update({"counts": counter.counts, "samples": counter.sample_lists(),
                  "bytes_read": len(data), "lines_read": counter.lines})
    return entry, new_cursor


# ---------------------------------------------------------------------------
# all logs


def _log_jobs(cfg, errors):
    """[(kind, path or JOURNAL_KEY or None, patterns)] in report order."""
    jobs, seen = [], set()
    for item in cfg["logs"]:
        if isinstance(item, str):
            item = {"path": item}
        path = str(item.get("path") or "")
        if not path or path in seen:
            errors.append("logs: skipped %s entry %r" % ("duplicate" if path else "empty", item))
            continue
        seen.add(path)
        jobs.append((str(item.get("kind") or "app"), path,
                     item.get("patterns") or DEFAULT_SYSTEM_PATTERNS))
    patterns = cfg["system_log_patterns"]
    if cfg["system_logs"] == "none":
        return jobs
    if cfg["system_logs"] == "auto":
        if _journald_present():
            sources = [JOURNAL_KEY]
        else:
            # syslog/messages already carry the kernel's lines on rsyslog hosts: reading
            # kern.log as well would count every kernel error twice.
            found = [p for p in SYSTEM_LOG_FILES if os.path.exists(p)]
            sources = [p for p in found if not p.endswith("kern.log")][:1] or found[:1]
        if not sources:
            jobs.append(("system", None, patterns))
    else:
        sources = cfg["system_logs"]
    for source in sources:
        if source in ("journal", "journald"):
            source = JOURNAL_KEY
        if source not in seen:
            seen.add(source)
            jobs.append(("system", source, patterns))
    return jobs


def _logs(cfg, errors, deadline):
    entries, cursors = [], {}
    old = cfg["cursors"]
    for kind, path, patterns in _log_jobs(cfg, errors):
        if path is None:
            entry = _log_entry(None, "system", None, [])
            entry["error"] = "no system log source found"
            entries.append(entry)
            continue
        try:
            if path == JOURNAL_KEY:
                if _journald_present():
                    entry, cursor = _read_journal(patterns, old.get(path), cfg, deadline)
                else:
                    entry, cursor = _log_entry(path, kind, "journald", []), old.get(path)
                    entry["error"] = "missing"
            else:
                entry, cursor = _read_log_file(path, kind, patterns, old.get(path), cfg, errors)
        except Exception as exc:
            errors.append("log %s: %s" % (path, _describe(exc)))
            entry, cursor = _log_entry(path, kind, "file", []), old.get(path)
            entry["error"] = _describe(exc)
        entries.append(entry)
        if cursor is not None:
            cursors[path] = cursor
    return entries, cursors


def collect_logs(args):
    """Only the log part of collect(): {logs, cursors, errors}."""
    errors = []
    cfg = _settings(args, errors)
    entries, cursors = _logs(cfg, errors, time.monotonic() + cfg["command_timeout"])
    return {"logs": entries, "cursors": cursors, "errors": errors}


# ---------------------------------------------------------------------------
# one run


def _guard(errors, label, default, fn, *args):
    try:
        return fn(*args)
    except Exception as exc:
        errors.append("%s: %s" % (label, _describe(exc)))
        return default


def collect(args):
    """Run every check once and return the result dict (never raises for a check)."""
    started = time.monotonic()
    wall = time.time()
    errors = []
    cfg = _settings(args, errors)
    deadline = started + cfg["command_timeout"] + JOIN_GRACE
    cpu_start = _guard(errors, "cpu", None, _cpu_times)
    cpu_started = time.monotonic()

    # Slow, possibly hanging work first, on daemon threads; local reads meanwhile.
    fs_runner = _guard(errors, "filesystems", None, _fs_runner, cfg)
    probes, http_count = _guard(errors, "probes", (None, 0), _probe_runner, cfg)
    clock_job = _Job(_clock, (cfg["command_timeout"], deadline),
                     lambda why: {"source": None, "synchronized": None, "offset_ms": None,
                                  "error": why})
    side_jobs = [clock_job]
    services_job = None
    if cfg["services"] and _systemd_is_pid1():
        names = list(cfg["services"])
        services_job = _Job(_services_systemd, (names, cfg["command_timeout"]),
                            lambda why: [{"name": n, "method": "systemd", "running": False,
                                          "detail": "systemctl: " + why} for n in names])
        side_jobs.append(services_job)
    side = _Runner(side_jobs, len(side_jobs))

    memory = _guard(errors, "memory", {}, _memory)
    uptime = _guard(errors, "uptime", None, _uptime)
    table = _guard(errors, "processes", [], _process_table)
    processes = _guard(errors, "processes", [], _processes, cfg["processes"], table, errors)
    services = [] if services_job else _guard(errors, "services", [], _services_process,
                                              cfg["services"], table)
    listening = _guard(errors, "listening", [], _listening)
    # If reading logs fails as a whole, the old cursors stand: nothing is skipped.
    logs, cursors = _guard(errors, "logs", ([], dict(cfg["cursors"])), _logs, cfg, errors,
                           deadline)

    filesystems = fs_runner.wait(deadline) if fs_runner else []
    probe_results = probes.wait(deadline) if probes else []
    side.wait(deadline)
    clock = clock_job.outcome()
    if services_job:
        services = services_job.outcome()

    rest = cfg["cpu_sample_seconds"] - (time.monotonic() - cpu_started)
    if rest > 0:
        time.sleep(rest)
    cpu_end = _guard(errors, "cpu", None, _cpu_times)
    cpu = {"percent": None, "iowait_percent": None, "cores": os.cpu_count(),
           "load1": None, "load5": None, "load15": None}
    if cpu_start and cpu_end:
        cpu = _guard(errors, "cpu", cpu, _cpu, cpu_start, cpu_end)

    listening_ports = set(item["port"] for item in listening)
    allowed = cfg["ports_allowed"]
    known = set(cfg["ports"]) | set(
        p for p in listening_ports if any(lo <= p <= hi for lo, hi in allowed))
    try:
        kernel = os.uname().release
    except Exception:
        kernel = None
    return {
        "collector_version": COLLECTOR_VERSION,
        "hostname": socket.gethostname(),
        "kernel": kernel,
        "collected_at": _utc_iso(wall),
        "duration_ms": int(round((time.monotonic() - started) * 1000)),
        "cpu": cpu,
        "memory": memory,
        "filesystems": filesystems,
        "uptime_seconds": uptime,
        "clock": clock,
        "processes": processes,
        "services": services,
        "listening": listening,
        "ports": [{"port": p, "listening": p in listening_ports} for p in cfg["ports"]],
        "unexpected_ports": sorted(listening_ports - known),
        "http": probe_results[:http_count],
        "tls": probe_results[http_count:],
        "logs": logs,
        "cursors": cursors,
        "errors": errors,
    }


# ---------------------------------------------------------------------------
# Ansible entry point


def _argument_spec():
    return dict(
        cpu_sample_seconds=dict(type="float", default=DEFAULTS["cpu_sample_seconds"]),
        command_timeout=dict(type="float", default=DEFAULTS["command_timeout"]),
        processes=dict(type="list", elements="dict", default=[]),
        services=dict(type="list", elements="str", default=[]),
        ports=dict(type="list", elements="int", default=[]),
        ports_allowed=dict(type="list", elements="raw", default=[]),
        http=dict(type="list", elements="dict", default=[]),
        tls=dict(type="list", elements="dict", default=[]),
        logs=dict(type="list", elements="dict", default=[]),
        system_logs=dict(type="raw", default="auto"),
        system_log_patterns=dict(type="dict"),
        cursors=dict(type="dict", default={}),
        initial_position=dict(type="str", default="start", choices=["start", "end"]),
        max_samples=dict(type="int", default=DEFAULTS["max_samples"]),
        max_read_bytes=dict(type="int", default=DEFAULTS["max_read_bytes"]),
        fs_exclude_types=dict(type="list", elements="str"),
    )


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=_argument_spec(), supports_check_mode=True)
    try:
        result = collect(module.params)
    except Exception as exc:
        module.fail_json(msg="mhops_collect failed: %s" % _describe(exc),
                         exception=traceback.format_exc())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    if "MHOPS_ARGS" in globals():
        print(json.dumps(collect(json.loads(MHOPS_ARGS))))  # noqa: F821 - prepended by caller
    else:
        main()
