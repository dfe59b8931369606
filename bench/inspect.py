#!/usr/bin/env python3
"""Benchmark `invoke inspect` against the bare tools, in one run, as ratios.

Starts N loopback sshd hosts (mhops.lab) and for N = 1, 5, 20 alternately times:
  (a) setup: the bare `ansible all -m setup` with Ansible's default settings,
  (b) floor: one trivial command per host, all hosts in parallel, each over a new
      OpenSSH connection,
  (c) inspect: `invoke inspect` on the same inventory (the full inspection, record
      written).
For reference it also times setup with forks = N and `invoke inspect --transport
ansible` (the same collector through ansible-runner).
Every run starts cold: no SSH ControlMaster survives from an earlier run. Prints
medians, `ratio inspect/setup N=<n>: <x>`, `ratio inspect/floor N=<n>: <x>` and the
peak RSS of the inspect control process.

    .venv/bin/python bench/inspect.py [--repeat 3] [--sizes 1,5,20]
"""

from __future__ import annotations

import os
import sys

# This file is named inspect.py, which would shadow the standard library's inspect
# for everything imported below: put the repo root in its place first.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from mhops.lab import SshLab

REPO = Path(__file__).resolve().parent.parent

BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str], ok=(0,)) -> tuple[float, int]:
    """Wall seconds and peak RSS (kB) of the largest process of one command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        err = proc.stderr.read().decode(errors="replace")[-2000:]
        raise SystemExit(f"{cmd[:3]} exited {code}:\n{err}")
    return elapsed, usage.ru_maxrss


def floor(lab: SshLab, hosts, env) -> float:
    t0 = time.perf_counter()
    procs = [subprocess.Popen(
        ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "ControlPath=none",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={lab.known_hosts}",
         "-o", "IdentitiesOnly=yes", "-i", str(lab.client_key), "-p", str(h.port),
         f"root@{h.address}", "true"], env=env) for h in hosts]
    if any(p.wait() for p in procs):
        raise SystemExit("floor: an ssh command failed")
    return time.perf_counter() - t0


def check_complete(records: Path, n: int) -> None:
    newest = max(records.iterdir(), key=lambda p: p.stat().st_mtime)
    rec = json.loads((newest / "record.json").read_text())
    bad = [h["host"] for h in rec["hosts"] if not h["reachable"] or h["error"]]
    if len(rec["hosts"]) != n or bad:
        raise SystemExit(f"inspect did not complete on every host: {bad or rec['hosts']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sizes", default="1,5,20")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="mhops-bench-"))
    base_env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8"}
    defaults_cfg = work / "ansible-defaults.cfg"  # Ansible's defaults, not this repo's cfg
    defaults_cfg.write_text("[defaults]\n")
    with SshLab(work / "lab", max(sizes), first_octet=100, prefix="bench") as lab:
        print(f"{max(sizes)} loopback sshd hosts on 127.0.0.100+; {os.cpu_count()} cores")
        for n in sizes:
            hosts = lab.hosts[:n]
            inv = work / f"inv{n}"
            (inv / "group_vars").mkdir(parents=True)
            # Shared machine: every host sees the same ports, so allow them; the checks
            # still all run.
            (inv / "group_vars" / "all.yml").write_text(
                "mhops_inspect_ports_allowed: ['1-65535']\n")
            inventory = {"all": {"children": {"lab": {"hosts": {
                h.name: lab.inventory()["all"]["children"]["lab"]["hosts"][h.name]
                for h in hosts}}}}}
            (inv / "hosts.yml").write_text(yaml.safe_dump(inventory))
            times: dict[str, list[float]] = {"setup": [], "floor": [], "inspect": [],
                                             "setup_forks": [], "inspect_ansible": []}
            rss: list[int] = []
            for i in range(a.repeat):
                cp = work / f"cp-{n}-{i}"
                cp.mkdir()
                setup_env = dict(base_env, ANSIBLE_CONFIG=str(defaults_cfg),
                                 ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp / "setup"),
                                 ANSIBLE_HOME=str(work / "ansible-home"))
                t, _ = timed([str(BIN / "ansible"), "all", "-i", str(inv), "-m", "setup"],
                             setup_env)
                times["setup"].append(t)
                forks_env = dict(setup_env, ANSIBLE_SSH_CONTROL_PATH_DIR=str(cp / "setup-f"))
                t, _ = timed([str(BIN / "ansible"), "all", "-i", str(inv), "-m", "setup",
                              "-f", str(n)], forks_env)
                times["setup_forks"].append(t)
                times["floor"].append(floor(lab, hosts, base_env))
                insp_env = dict(base_env, INVOKE_MHOPS_RECORDS_DIR=str(work / "records"),
                                INVOKE_MHOPS_STATE_DIR=str(work / "state"),
                                ANSIBLE_HOME=str(work / "ansible-home"))
                # exit 2 is allowed (20 collectors can saturate 2 cores: a real finding),
                # but every host must have been inspected, or the timing means nothing.
                t, peak = timed([str(BIN / "invoke"), "inspect", "-i", str(inv)], insp_env,
                                ok=(0, 1, 2))
                check_complete(work / "records", n)
                times["inspect"].append(t)
                rss.append(peak)
                t, _ = timed([str(BIN / "invoke"), "inspect", "-i", str(inv), "--transport",
                              "ansible"], dict(insp_env, ANSIBLE_SSH_CONTROL_PATH_DIR=str(
                                  cp / "inspect-ansible")), ok=(0, 1, 2))
                check_complete(work / "records", n)
                times["inspect_ansible"].append(t)
                subprocess.run(["pkill", "-f", str(cp)], check=False)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"N={n}: median setup {med['setup']:.2f}s  floor {med['floor']:.2f}s  "
                  f"inspect {med['inspect']:.2f}s  (runs: {a.repeat}; "
                  f"inspect peak RSS {max(rss) / 1024:.0f} MB)")
            print(f"ratio inspect/setup N={n}: {med['inspect'] / med['setup']:.2f}")
            print(f"ratio inspect/floor N={n}: {med['inspect'] / med['floor']:.2f}")
            print(f"  for reference: setup with -f {n} {med['setup_forks']:.2f}s "
                  f"(inspect/setup-f{n} {med['inspect'] / med['setup_forks']:.2f}); "
                  f"inspect --transport ansible {med['inspect_ansible']:.2f}s "
                  f"(/setup {med['inspect_ansible'] / med['setup']:.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
