#!/usr/bin/python
"""The package manager on one patched host: survey pending updates, apply a plan.

Owns what must happen on the host itself: which package manager there is, the
bounded wait on its lock (naming the lock and its holder when it stays held), the
refusal (or, when asked, the repair) of an interrupted earlier dpkg transaction,
the upgrade of exactly the planned packages, and the reboot-required flag. Output of
the package tools is returned raw; ``mhops.pkgupdates`` parses it on the control node.
Runs on the managed host (Python 3.8+, standard library and Ansible only).
"""

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: mhops_patch_pkg
short_description: Survey pending package updates or apply a patch plan on one host
options:
  mode: {type: str, required: true, choices: [survey, apply]}
  packages:
    type: list
    elements: str
    default: []
    description: Packages to upgrade (apply); C(name=version) pins the planned version.
  upgrade_all: {type: bool, default: false, description: apply every pending upgrade}
  refresh: {type: bool, default: false, description: refresh the package lists first}
  repair:
    type: bool
    default: false
    description: run C(dpkg --configure -a) when C(dpkg --audit) reports a half-done transaction
  lock_files:
    type: list
    elements: path
    default: [/var/lib/dpkg/lock-frontend, /var/lib/dpkg/lock]
  lock_timeout: {type: float, default: 60, description: seconds to wait for the locks}
  apt_options:
    type: list
    elements: str
    default: []
    description: extra C(-o Key=Value) settings for apt-get (e.g. another sources list)
  reboot_required_file: {type: path, default: /var/run/reboot-required}
  command_timeout: {type: float, default: 3600}
"""

F_WRLCK = getattr(fcntl, "F_WRLCK", 1)


def _run(cmd, timeout, env=None):
    full = dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive", **(env or {}))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full)
    except subprocess.TimeoutExpired:
        return 124, "", f"timed out after {timeout} s: {' '.join(cmd)}"
    return p.returncode, p.stdout, p.stderr


def manager():
    for name in ("apt-get", "dnf", "yum"):
        if shutil.which(name):
            return "apt" if name == "apt-get" else name
    return None


def lock_holder(path):
    """None when `path` could be locked now, else the holder's pid (0 if unknown)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise
    try:
        # F_GETLK asks without taking the lock, so a survey never blocks apt itself.
        query = struct.pack("hhqqi", F_WRLCK, 0, 0, 0, 0)
        got = fcntl.fcntl(fd, fcntl.F_GETLK, query + b"\0" * 4)
        l_type, _, _, _, pid = struct.unpack("hhqqi", got[:struct.calcsize("hhqqi")])
        return None if l_type == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)


def _proc_name(pid):
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except OSError:
        return "?"


def wait_for_locks(paths, timeout):
    """Seconds waited; raises RuntimeError naming the lock still held at the deadline."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        held = [(p, lock_holder(p)) for p in paths]
        held = [(p, pid) for p, pid in held if pid is not None]
        if not held:
            return round(time.monotonic() - start, 1)
        if time.monotonic() >= deadline:
            path, pid = held[0]
            name = _proc_name(pid) if pid else "?"
            raise RuntimeError(
                f"package manager lock {path} is still held by pid {pid or '?'} ({name}) "
                f"after waiting {int(timeout)} s; another apt/dpkg run is in progress: wait "
                "for it or stop it, then run the patch again")
        time.sleep(0.5)


def _apt_opts(options):
    out = []
    for opt in options:
        out += ["-o", opt]
    return out


def survey(p, mgr):
    res = {"manager": mgr, "audit": "", "simulation": "", "security_list": "",
           "refreshed": False}
    timeout = p["command_timeout"]
    if mgr == "apt":
        res["audit"] = _run(["dpkg", "--audit"], 120)[1]
        if p["refresh"]:
            rc, out, err = _run(["apt-get", "update", "-q"] + _apt_opts(p["apt_options"]),
                                timeout)
            if rc != 0:
                raise RuntimeError("apt-get update failed: " + (err or out)[-500:])
            res["refreshed"] = True
        # Debug::NoLocking: a simulation must not compete with a running apt for locks.
        rc, out, err = _run(["apt-get", "-s", "-o", "Debug::NoLocking=1", "upgrade"]
                            + _apt_opts(p["apt_options"]), timeout)
        if rc != 0:
            raise RuntimeError("apt-get -s upgrade failed: " + (err or out)[-500:])
        res["simulation"] = out
    elif mgr in ("dnf", "yum"):
        refresh = ["--refresh"] if p["refresh"] and mgr == "dnf" else []
        rc, out, err = _run([mgr, "-q"] + refresh + ["check-update"], timeout)
        if rc not in (0, 100):  # 100: updates are available
            raise RuntimeError(f"{mgr} check-update failed: {(err or out)[-500:]}")
        res["simulation"] = out
        rc, out, _ = _run([mgr, "-q", "updateinfo", "list", "security"], timeout)
        res["security_list"] = out if rc == 0 else ""
    return res


def _names(packages):
    return [x.split("=")[0] for x in packages]


def installed_versions(mgr, names):
    if not names or mgr is None:
        return ""
    if mgr == "apt":
        cmd = ["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${db:Status-Abbrev}\n"]
    else:
        cmd = ["rpm", "-q", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"]
    return _run(cmd + list(names), 120)[1]


def repair_or_refuse(p, audit):
    if not audit.strip():
        return ""
    if not p["repair"]:
        raise RuntimeError("an earlier package transaction was interrupted (dpkg --audit "
                           "reports half-installed packages); nothing was changed. Repair "
                           "with `dpkg --configure -a` or run the patch with --repair:\n"
                           + audit.strip()[:1500])
    rc, out, err = _run(["dpkg", "--configure", "-a"], p["command_timeout"])
    left = _run(["dpkg", "--audit"], 120)[1]
    if rc != 0 or left.strip():
        raise RuntimeError("dpkg --configure -a did not repair the interrupted transaction: "
                           + (err or out or left)[-800:])
    return out[-2000:]


def apply(p, mgr):
    res = {"manager": mgr, "waited_s": 0.0, "repair": "", "output": "", "before": "",
           "after": "", "changed": False}
    names = _names(p["packages"])
    if not names and not p["upgrade_all"]:
        return res
    if mgr is None:
        raise RuntimeError("no supported package manager (apt-get, dnf, yum) on this host")
    locks = p["lock_files"] if mgr == "apt" else []
    res["waited_s"] = wait_for_locks(locks, p["lock_timeout"])
    if mgr == "apt":
        res["repair"] = repair_or_refuse(p, _run(["dpkg", "--audit"], 120)[1])
    res["before"] = installed_versions(mgr, names)
    if mgr == "apt":
        # apt's own lock timeout closes the gap between our check and its locking.
        wait = max(1, int(p["lock_timeout"]))
        cmd = (["apt-get", "-y", "-q", "-o", f"DPkg::Lock::Timeout={wait}",
                "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
               + _apt_opts(p["apt_options"]))
        cmd += ["install", "--only-upgrade"] + list(p["packages"]) if names else ["upgrade"]
    else:
        cmd = [mgr, "-y", "-q", "upgrade"] + names
    rc, out, err = _run(cmd, p["command_timeout"])
    res["output"] = (out + err)[-4000:]
    res["changed"] = True
    if rc != 0:
        if "lock" in (err + out).lower() and mgr == "apt":
            raise RuntimeError(f"package manager lock still held after "
                               f"{int(p['lock_timeout'])} s: {(err or out).strip()[-500:]}")
        raise RuntimeError(f"{cmd[0]} failed (exit {rc}): {(err or out)[-800:]}")
    res["after"] = installed_versions(mgr, names)
    return res


def reboot_state(path):
    pkgs = []
    try:
        with open(path + ".pkgs") as fh:
            pkgs = [ln.strip() for ln in fh if ln.strip()]
    except OSError:
        pass
    return {"required": os.path.exists(path), "packages": pkgs}


def main():
    module = AnsibleModule(
        argument_spec={
            "mode": {"type": "str", "required": True, "choices": ["survey", "apply"]},
            "packages": {"type": "list", "elements": "str", "default": []},
            "upgrade_all": {"type": "bool", "default": False},
            "refresh": {"type": "bool", "default": False},
            "repair": {"type": "bool", "default": False},
            "lock_files": {"type": "list", "elements": "path",
                           "default": ["/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock"]},
            "lock_timeout": {"type": "float", "default": 60},
            "apt_options": {"type": "list", "elements": "str", "default": []},
            "reboot_required_file": {"type": "path", "default": "/var/run/reboot-required"},
            "command_timeout": {"type": "float", "default": 3600},
        },
        supports_check_mode=True,
    )
    p = module.params
    mgr = manager()
    try:
        if p["mode"] == "survey":
            if module.check_mode:
                p["refresh"] = False
            res = survey(p, mgr)
        elif module.check_mode:
            res = {"manager": mgr, "changed": False, "skipped_check_mode": True}
        else:
            res = apply(p, mgr)
    except (OSError, RuntimeError) as exc:
        module.fail_json(msg=str(exc), error=str(exc), manager=mgr,
                         reboot=reboot_state(p["reboot_required_file"]))
    res["reboot"] = reboot_state(p["reboot_required_file"])
    res.setdefault("changed", False)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
