#!/usr/bin/python
# -*- coding: utf-8 -*-
"""The one read-only collector an mhops security audit runs on each host.

Owns everything a security audit learns from a host in a single round trip: the
authentication log lines added since the previous audit (with a rotation-aware
cursor), listening TCP ports, the SSH daemon's effective settings, what an upgrade
would install (raw ``apt-get -s upgrade`` / ``dnf updateinfo`` output), firewall
presence and rules, ClamAV presence and signature age, world-writable files under
application folders, and TLS endpoints' expiry and accepted protocol versions.

Parsing of the auth log lines and of the package output, and all judging, happen
on the control node (``mhops.authlog``, ``mhops.pkgupdates``, ``mhops.security_audit``),
so this file only reads. It runs two ways, like ``mhops_collect``: as an Ansible
module, and as ``python3 -`` with ``MHOPS_ARGS = '<json>'`` prepended. Python 3.8+,
standard library only; it never changes the host.
"""

import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import traceback

DOCUMENTATION = r"""
---
module: mhops_security_audit
short_description: Gather what an mhops security audit needs from one host, read-only
description:
  - Returns new authentication log lines since I(cursors), listening ports, sshd settings,
    pending updates (raw package manager output), firewall and antivirus state,
    world-writable files under I(app_dirs), and TLS endpoint probes.
version_added: "1.0.0"
author: mhops
options:
  auth_logs:
    description: Auth logs to read; C(auto) is the first of /var/log/auth.log, /var/log/secure.
    type: raw
    default: auto
  cursors:
    description: The I(cursors) returned by the previous audit, unchanged.
    type: dict
    default: {}
  initial_position:
    description: Where reading starts the first time a log is seen.
    type: str
    choices: [start, end]
    default: start
  max_read_bytes: {description: Bytes read per log per run, type: int, default: 67108864}
  max_lines: {description: Most relevant lines returned per run, type: int, default: 50000}
  app_dirs:
    description: Folders searched for world-writable files.
    type: list
    elements: str
    default: []
  max_files: {description: Entries examined per folder tree, type: int, default: 200000}
  tls:
    description: "Endpoints, each C({name, host, port=443, server_name=host})."
    type: list
    elements: dict
    default: []
  apt_options:
    description: Extra C(-o Key=Value) settings for apt-get.
    type: list
    elements: str
    default: []
  sshd_config:
    description: sshd configuration file read when C(sshd -T) fails.
    type: str
    default: /etc/ssh/sshd_config
  command_timeout:
    description: Upper bound in seconds for any command or probe.
    type: float
    default: 20
notes:
  - Supports check mode; it changes nothing.
"""

RETURN = r"""
auth:
  description: per log C({path, lines, cursor_reset, truncated, error})
  returned: always
  type: list
cursors: {description: cursors to pass to the next audit, returned: always, type: dict}
"""

RELEVANT = re.compile(r"\b(sshd|sudo|su)(\[\d+\])?:")
PROTOCOLS = ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
HEAD = 256


def _run(cmd, timeout):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, LC_ALL="C"))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, "", str(exc)
    return p.returncode, p.stdout, p.stderr


# --------------------------------------------------------------------------- auth log


def _head_sha(path, length):
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read(length)).hexdigest()


def _complete(data):
    end = data.rfind(b"\n")
    return data[:end + 1] if end >= 0 else b""


def _read_from(path, start, limit):
    with open(path, "rb") as fh:
        fh.seek(start)
        data = _complete(fh.read(limit))
    return data, start + len(data), len(data) >= limit


def _rotated(path, cursor):
    """The renamed earlier file the cursor points into (logrotate's .1 or dateext)."""
    for cand in [path + ".1"] + sorted(glob.glob(path + "-[0-9]*"), reverse=True):
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if st.st_ino == cursor.get("ino") and st.st_dev == cursor.get("dev"):
            return cand
    return None


def read_auth_log(path, cursor, initial, limit):
    """(new complete lines, new cursor, notes) for one log since `cursor`."""
    st = os.stat(path)
    chunks, notes = [], {"cursor_reset": False, "truncated": False, "rotated": False}
    # The same inode rewritten in place (copytruncate) shows as a changed first bytes.
    same = (cursor and cursor.get("ino") == st.st_ino and cursor.get("dev") == st.st_dev
            and st.st_size >= cursor.get("offset", 0)
            and _head_sha(path, cursor.get("head_len", 0)) == cursor.get("head"))
    if same:
        start = cursor.get("offset", 0)
    elif cursor:
        start = 0
        old = _rotated(path, cursor)
        if old:
            data, _, cut = _read_from(old, cursor.get("offset", 0), limit)
            chunks.append(data)
            notes["rotated"], notes["truncated"] = True, cut
        else:
            notes["cursor_reset"] = True  # rotated and gone, or truncated in place
    else:
        start = st.st_size if initial == "end" else 0
    data, offset, cut = _read_from(path, start, limit)
    chunks.append(data)
    notes["truncated"] = notes["truncated"] or cut
    head_len = min(offset, HEAD)
    new = {"dev": st.st_dev, "ino": st.st_ino, "offset": offset, "head_len": head_len,
           "head": _head_sha(path, head_len)}
    text = b"".join(chunks).decode("utf-8", "replace")
    return text.splitlines(), new, notes


def _auth_logs(setting):
    if setting in (None, "auto"):
        for p in ("/var/log/auth.log", "/var/log/secure"):
            if os.path.exists(p):
                return [p]
        return []
    return list(setting) if isinstance(setting, list) else [str(setting)]


def collect_auth(args):
    out, cursors = [], {}
    for path in _auth_logs(args.get("auth_logs", "auto")):
        entry = {"path": path, "lines": [], "error": None}
        try:
            lines, cursor, notes = read_auth_log(path, (args.get("cursors") or {}).get(path),
                                                 args.get("initial_position", "start"),
                                                 int(args.get("max_read_bytes", 64 << 20)))
            relevant = [ln for ln in lines if RELEVANT.search(ln)]
            cap = int(args.get("max_lines", 50000))
            entry.update(notes)
            entry["lines_read"] = len(lines)
            entry["lines"] = relevant[-cap:]
            entry["truncated"] = entry["truncated"] or len(relevant) > cap
            cursors[path] = cursor
        except OSError as exc:
            entry["error"] = "%s: %s" % (type(exc).__name__, exc)
        out.append(entry)
    return out, cursors


# --------------------------------------------------------------------------- ports, sshd


def _hex_address(text):
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening():
    found = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) > 3 and parts[3] == "0A":
                addr, port = parts[1].split(":")
                found[(int(port, 16), _hex_address(addr))] = True
    return [{"port": p, "address": a} for p, a in sorted(found)]


def _sshd_config_file(path, seen=None):
    """Keyword -> first value, following Include (first value wins, as in sshd)."""
    seen = seen if seen is not None else {}
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return seen
    for line in lines:
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        key = words[0].lower()
        value = words[1].strip() if len(words) > 1 else ""
        if key == "match":
            break  # conditional blocks do not set the defaults
        if key == "include":
            for pattern in value.split():
                if not pattern.startswith("/"):
                    pattern = os.path.join("/etc/ssh", pattern)
                for inc in sorted(glob.glob(pattern)):
                    _sshd_config_file(inc, seen)
            continue
        seen.setdefault(key, value)
    return seen


def sshd_settings(config, timeout):
    wanted = ("permitrootlogin", "passwordauthentication", "protocol",
              "kbdinteractiveauthentication", "permitemptypasswords", "port")
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd")
                                    else None)
    if sshd:
        rc, out, err = _run([sshd, "-T", "-f", config], timeout)
        if rc == 0:
            values = {}
            for line in out.splitlines():
                k, _, v = line.partition(" ")
                if k in wanted:
                    values.setdefault(k, v.strip())
            return {"source": "sshd -T", "installed": True, "settings": _pairs(values)}
    if not os.path.exists(config):
        return {"source": None, "installed": bool(sshd), "settings": {}}
    values = _sshd_config_file(config)
    return {"source": config, "installed": bool(sshd),
            "settings": _pairs({k: v for k, v in values.items() if k in wanted})}


def _pairs(values):
    # [keyword, value] pairs, not a mapping: a key like "passwordauthentication" would
    # look like a secret to the control node's redaction and hide the setting.
    return [[k, v] for k, v in sorted(values.items())]


# --------------------------------------------------------------------------- updates


def pending_updates(args, timeout):
    if shutil.which("apt-get"):
        opts = []
        for o in args.get("apt_options") or []:
            opts += ["-o", o]
        rc, out, err = _run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"] + opts,
                            timeout)
        return {"manager": "apt", "simulation": out, "security_list": "",
                "error": None if rc == 0 else (err or out)[-300:]}
    for mgr in ("dnf", "yum"):
        if shutil.which(mgr):
            rc, out, err = _run([mgr, "-q", "-C", "check-update"], timeout)
            _, sec, _ = _run([mgr, "-q", "-C", "updateinfo", "list", "security"], timeout)
            return {"manager": mgr, "simulation": out, "security_list": sec,
                    "error": None if rc in (0, 100) else (err or out)[-300:]}
    return {"manager": None, "simulation": "", "security_list": "", "error": None}


# --------------------------------------------------------------------------- firewall, AV


def firewall(timeout):
    out = {"tools": [], "active": False, "rules": 0, "detail": ""}
    if shutil.which("ufw"):
        out["tools"].append("ufw")
        rc, text, _ = _run(["ufw", "status"], timeout)
        if rc == 0 and "Status: active" in text:
            out["active"], out["detail"] = True, "ufw active"
    if shutil.which("nft"):
        out["tools"].append("nft")
        rc, text, _ = _run(["nft", "list", "ruleset"], timeout)
        rules = [ln for ln in text.splitlines()
                 if ln.strip() and not ln.strip().startswith(("table", "chain", "type", "}"))]
        drop = re.search(r"policy drop|\bdrop\b|\breject\b", text)
        if rc == 0 and rules:
            out["rules"] += len(rules)
            if drop:
                out["active"], out["detail"] = True, out["detail"] or "nftables ruleset"
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool):
            out["tools"].append(tool)
            rc, text, _ = _run([tool, "-S"], timeout)
            if rc != 0:
                continue
            rules = [ln for ln in text.splitlines() if ln.startswith("-A")]
            policies = [ln for ln in text.splitlines() if ln.startswith("-P")
                        and not ln.endswith("ACCEPT")]
            out["rules"] += len(rules)
            if policies or any(("DROP" in r or "REJECT" in r) for r in rules):
                out["active"], out["detail"] = True, out["detail"] or "%s rules" % tool
    return out


def antivirus():
    present = any(shutil.which(t) for t in ("clamscan", "clamd", "clamdscan", "freshclam"))
    newest = None
    for pattern in ("/var/lib/clamav/daily.c[lv]d", "/var/lib/clamav/main.c[lv]d",
                    "/var/lib/clamav/*.cvd", "/var/lib/clamav/*.cld"):
        for path in glob.glob(pattern):
            try:
                m = os.stat(path).st_mtime
            except OSError:
                continue
            newest = m if newest is None else max(newest, m)
    age = round((time.time() - newest) / 3600.0, 1) if newest else None
    return {"present": present, "signature_age_hours": age}


# --------------------------------------------------------------------------- files


def world_writable(dirs, max_files):
    found, errors, examined = [], [], 0
    for top in dirs:
        if not os.path.isdir(top):
            errors.append("%s: not a folder" % top)
            continue
        for root, subdirs, files in os.walk(top, onerror=lambda e: errors.append(str(e))):
            for name in subdirs + files:
                examined += 1
                if examined > max_files:
                    errors.append("stopped after %d entries" % max_files)
                    return {"paths": found, "errors": errors, "examined": examined}
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if stat.S_ISLNK(st.st_mode) or not st.st_mode & stat.S_IWOTH:
                    continue
                # A sticky shared folder (like /tmp) is writable by design.
                if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
                    continue
                found.append({"path": path, "mode": oct(st.st_mode & 0o7777),
                              "type": "dir" if stat.S_ISDIR(st.st_mode) else "file"})
    return {"paths": found, "errors": errors, "examined": examined}


# --------------------------------------------------------------------------- TLS


def _not_after(der):
    fd, path = tempfile.mkstemp(prefix="mhops-cert-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(ssl.DER_cert_to_PEM_cert(der))
        return ssl._ssl._test_decode_cert(path).get("notAfter")
    finally:
        os.unlink(path)


def _context(version=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version:
        v = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1.1": ssl.TLSVersion.TLSv1_1,
             "TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}[version]
        ctx.minimum_version = ctx.maximum_version = v
        if version in ("TLSv1", "TLSv1.1"):
            # This client's OpenSSL refuses old protocols at its default security level;
            # lowered here only so that the probe sees what the server accepts.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def probe_tls(item, timeout):
    host, port = str(item.get("host")), int(item.get("port") or 443)
    sni = str(item.get("server_name") or host)
    out = {"name": item.get("name"), "host": host, "port": port, "error": None,
           "days_left": None, "not_after": None, "protocols": {}, "verified": None}
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                _context().wrap_socket(raw, server_hostname=sni) as conn:
            der = conn.getpeercert(binary_form=True)
        not_after = _not_after(der)
        expires = ssl.cert_time_to_seconds(not_after)
        out["not_after"] = datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ")
        out["days_left"] = round((expires - time.time()) / 86400.0, 2)
        try:
            verify = ssl.create_default_context()
            with socket.create_connection((host, port), timeout=timeout) as raw, \
                    verify.wrap_socket(raw, server_hostname=sni):
                out["verified"] = True
        except ssl.SSLError:
            out["verified"] = False
    except Exception as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, exc)
        return out
    for version in PROTOCOLS:
        try:
            ctx = _context(version)
        except (ValueError, ssl.SSLError, AttributeError):
            out["protocols"][version] = None  # this client cannot test it
            continue
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw, \
                    ctx.wrap_socket(raw, server_hostname=sni):
                out["protocols"][version] = True
        except ssl.SSLError as exc:
            text = str(exc)
            # "no protocols available" / "unsupported protocol" on our side: not testable.
            if "NO_PROTOCOLS_AVAILABLE" in text or "no protocols available" in text:
                out["protocols"][version] = None
            else:
                out["protocols"][version] = False
        except OSError:
            out["protocols"][version] = False
    return out


# --------------------------------------------------------------------------- entry


def collect(args):
    started = time.time()
    timeout = float(args.get("command_timeout", 20))
    # The package simulation is the slow part (seconds of CPU): overlap it with the rest.
    updates = {}
    worker = threading.Thread(target=lambda: updates.update(
        pending_updates(args, max(timeout, 120))), daemon=True)
    worker.start()
    auth, cursors = collect_auth(args)
    result = {
        "collector_version": 1,
        "hostname": socket.gethostname(),
        "collected_at": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%SZ"),
        "year": datetime.datetime.now().year,
        "utc_offset_s": int(-time.altzone if time.daylight and time.localtime().tm_isdst
                            else -time.timezone),
        "auth": auth,
        "cursors": cursors,
        "listening": listening(),
        "sshd": sshd_settings(args.get("sshd_config") or "/etc/ssh/sshd_config", timeout),
        "firewall": firewall(timeout),
        "antivirus": antivirus(),
        "world_writable": world_writable(args.get("app_dirs") or [],
                                         int(args.get("max_files", 200000))),
        "tls": [probe_tls(t, timeout) for t in args.get("tls") or []],
    }
    worker.join(max(timeout, 120) * 2 + 5)
    result["updates"] = updates or {"manager": None, "simulation": "", "security_list": "",
                                    "error": "package simulation did not finish"}
    result["duration_ms"] = int((time.time() - started) * 1000)
    return result


def _argument_spec():
    return {
        "auth_logs": {"type": "raw", "default": "auto"},
        "cursors": {"type": "dict", "default": {}},
        "initial_position": {"type": "str", "default": "start", "choices": ["start", "end"]},
        "max_read_bytes": {"type": "int", "default": 64 << 20},
        "max_lines": {"type": "int", "default": 50000},
        "app_dirs": {"type": "list", "elements": "str", "default": []},
        "max_files": {"type": "int", "default": 200000},
        "tls": {"type": "list", "elements": "dict", "default": []},
        "apt_options": {"type": "list", "elements": "str", "default": []},
        "sshd_config": {"type": "str", "default": "/etc/ssh/sshd_config"},
        "command_timeout": {"type": "float", "default": 20},
    }


def main():
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=_argument_spec(), supports_check_mode=True)
    try:
        result = collect(module.params)
    except Exception as exc:
        module.fail_json(msg="mhops_security_audit failed: %s" % exc,
                         exception=traceback.format_exc())
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    if "MHOPS_ARGS" in globals():
        print(json.dumps(collect(json.loads(MHOPS_ARGS))))  # noqa: F821 - prepended by caller
    else:
        main()
