"""Upgrade benchmark: `invoke upgrade` against a bare ansible-playbook deploy, in one run.

Starts 5 loopback SSH hosts (octet 63 by default), serves the sample component on each
with gunicorn (graceful reload on HUP), installs 1.0.0, then alternately times

  bare:    ansible-playbook bench/bare_deploy.yml in batches of 2 (create the release
           folder, upload and unpack, link shared, switch `current`, reload), and
  upgrade: the whole `invoke upgrade --serial 2` (risk assessment, rollback plan record,
           journal, deploy with migrations step, Testinfra gate per batch, record),

each to a fresh version number with the same content, while every host's health URL is
polled every 50 ms. Prints both durations, `ratio upgrade/bare: <x>` (target <= 2.0),
each host's failed polls and longest gap, and `failed health polls: <n>` (upgrade runs).

    .venv/bin/python bench/upgrade.py [--hosts 5] [--serial 2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Replace (not prepend to) the script's folder: bench/inspect.py would shadow the stdlib.
sys.path[0] = str(REPO)

from demo.sample_app import build, fleet  # noqa: I001
from mhops import release_verify as rv
from mhops.lab import SshLab

BIN = Path(sys.executable).parent


def timed(cmd: list[str], env: dict[str, str], urls: dict[str, str], interval: float):
    with rv.Poller(urls, interval) as poller:
        t0 = time.monotonic()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        took = time.monotonic() - t0
    if res.returncode != 0:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stdout[-3000:]}\n"
                 f"{res.stderr[-3000:]}")
    return took, poller.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", type=int, default=5)
    ap.add_argument("--serial", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--octet", type=int, default=63)
    ap.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mhu-bench-"))
    art = root / "artifacts"
    build.build("1.0.0", art)
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
               INVOKE_MHOPS_RECORDS_DIR=str(root / "records"),
               INVOKE_MHOPS_STATE_DIR=str(root / "state"),
               INVOKE_RELEASE_ARTIFACTS_DIR=str(art))
    bare, full, polls = [], [], {}
    try:
        with SshLab(root / "lab", args.hosts, first_octet=args.octet, prefix="bench") as lab:
            inv, comps = fleet.write_inventory(lab, root, local=False)
            env["INVOKE_RELEASE_INVENTORY"] = str(inv)
            urls = {h: c["health_url"] for h, c in comps.items()}
            upgrade = [str(BIN / "invoke"), "-r", str(REPO), "upgrade", "--component",
                       "sample", "--serial", str(args.serial), "--yes", "--version"]
            try:
                timed(upgrade + ["1.0.0"], env, urls, args.interval)  # install, not timed
                n = 0
                for _ in range(args.repeat):
                    n += 1
                    v = f"1.0.{n}"
                    build.build(v, art, like="1.0.0")
                    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
                    took, _ = timed([str(BIN / "ansible-playbook"), "-i", str(inv),
                                     str(REPO / "bench" / "bare_deploy.yml"),
                                     "-e", f"bare_serial={args.serial}",
                                     "-e", f"bare_name={v}-{stamp}",
                                     "-e", f"bare_tarball={art}/sample-{v}.tar.gz"],
                                    env, urls, args.interval)
                    bare.append(took)
                    n += 1
                    v = f"1.0.{n}"
                    build.build(v, art, like="1.0.0")
                    took, stats = timed(upgrade + [v], env, urls, args.interval)
                    full.append(took)
                    last = sorted((root / "records").glob("*-upgrade"))[-1]
                    steps = json.loads((last / "record.json").read_text())["execution"]["steps"]
                    rec = json.loads((last / "record.json").read_text())
                    print("  upgrade steps: " + ", ".join(
                        f"{s['step']}{s['batch'] or ''} {s['duration_s']:.1f}s" for s in steps)
                        + "; slowest checks: " + ", ".join(sorted(
                            {f"{c['check']} {c['seconds']}s" for v in rec["execution"]
                             ["verification"] for c in v["checks"]}, key=lambda x: -float(
                                x.split()[1][:-1]))[:4]))
                    for h, s in stats.items():
                        acc = polls.setdefault(h, {"polls": 0, "failed": 0, "longest_gap_s": 0.0})
                        acc["polls"] += s["polls"]
                        acc["failed"] += s["failed"]
                        acc["longest_gap_s"] = max(acc["longest_gap_s"], s["longest_gap_s"])
            finally:
                fleet.stop_services(comps)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    b, u = statistics.median(bare), statistics.median(full)
    print(f"hosts: {args.hosts}, batches of {args.serial}, runs: {args.repeat}")
    print(f"bare ansible-playbook (unpack, switch, reload): {b:.1f} s  "
          f"{[round(x, 1) for x in bare]}")
    print(f"invoke upgrade (assess, plan, deploy, Testinfra gate, record): {u:.1f} s  "
          f"{[round(x, 1) for x in full]}")
    print(f"ratio upgrade/bare: {u / b:.2f}")
    print(f"downtime per host during the upgrades (health polled every "
          f"{args.interval * 1000:.0f} ms):")
    for h in sorted(polls):
        s = polls[h]
        print(f"  {h}: {s['failed']} failed of {s['polls']} polls, longest gap "
              f"{s['longest_gap_s']:.3f} s")
    print(f"failed health polls: {sum(s['failed'] for s in polls.values())}")


if __name__ == "__main__":
    main()
