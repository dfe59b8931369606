"""Online maintenance under load: `db.maintain --apply` while pgbench writes.

Initialises `mhm_bench` with `pgbench -i`, runs the default TPC-B script with four
clients and a per-transaction log, and, after a baseline period, runs the
maintenance (`mhops.dbmaint`, the code behind `invoke db.maintain --apply --force`)
on the same database with every threshold at zero, so every btree index over the
size floor is rebuilt with REINDEX CONCURRENTLY and every written table is
VACUUM (ANALYZE)d while the clients write. Prints

    failed transactions during reindex: <n>          (target 0)
    p99 latency ratio during/before: <x>             (target <= 2)

The database is dropped at the end.

    .venv/bin/python bench/reindex.py [--scale 10] [--baseline 15] [--duration 60]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The script folder holds inspect.py, which would shadow the standard library module.
sys.path[0] = str(REPO)

from mhops import dbmaint  # noqa: E402

DB = "mhm_bench"
PGENV = dict(os.environ, PGHOST="127.0.0.1", PGPORT="5432", PGUSER="postgres")


def psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                   env=PGENV, check=True)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--baseline", type=float, default=15, help="seconds before maintenance")
    ap.add_argument("--duration", type=int, default=60, help="pgbench -T")
    args = ap.parse_args()

    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    work = Path(tempfile.mkdtemp(prefix="mhm-bench-"))
    try:
        subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), DB], env=PGENV,
                       check=True, capture_output=True)
        inv = work / "inventory.yml"
        inv.write_text(
            "all:\n  hosts:\n    dbhost:\n      ansible_connection: local\n"
            "      ansible_python_interpreter: \"{{ ansible_playbook_python }}\"\n"
            "      mhops_databases:\n"
            f"        - {{name: bench, engine: postgresql, host: 127.0.0.1, port: 5432, "
            f"user: postgres, password: '', database: {DB}, production: false}}\n")
        bench = subprocess.Popen(
            ["pgbench", "-c", str(args.clients), "-j", "2", "-T", str(args.duration), "-l",
             "--log-prefix", str(work / "tx"), "-P", "5", DB],
            env=PGENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out: dict[str, str] = {}
        readers = [threading.Thread(target=lambda k=k, s=s: out.update({k: s.read()}))
                   for k, s in (("stdout", bench.stdout), ("stderr", bench.stderr))]
        for r in readers:
            r.start()
        time.sleep(args.baseline)
        lines: list[str] = []
        t0 = time.time()
        result = dbmaint.run(dbmaint.Options(
            inventory=[str(inv)], records_dir=work / "records", state_dir=work / "state",
            apply=True, force=True, lock_timeout_s=5, statement_timeout_s=600,
            thresholds={k: 0 for k in dbmaint.DEFAULT_THRESHOLDS if k != "stats_max_age_days"},
            echo=lines.append))
        t1 = time.time()
        if bench.wait() != 0 and "aborted" in out.get("stderr", ""):
            pass  # aborted clients are counted below
        for r in readers:
            r.join()
    except BaseException:
        if "bench" in locals() and bench.poll() is None:
            bench.send_signal(signal.SIGINT)
            bench.wait()
        raise
    finally:
        psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")

    # "During reindex": while an item's statements ran (the role times each item);
    # "during the run" adds the survey and Ansible's own start-up on this machine.
    def epoch(stamp: str) -> float:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()

    spans = [(epoch(i["started_utc"]), epoch(i["finished_utc"]))
             for i in result.record["plan"] if i.get("started_utc")]
    before: list[tuple[float, float]] = []
    during: list[float] = []
    whole: list[float] = []
    failed_during = failed_whole = 0
    start = None
    for log in sorted(work.glob("tx*")):
        for line in log.read_text().splitlines():
            f = line.split()
            if len(f) < 6:
                continue
            at = int(f[4]) + int(f[5]) / 1e6
            start = at if start is None else min(start, at)
            # the log stamps a transaction when it ends; it ran from at - latency
            lat = None if f[2] == "failed" else int(f[2]) / 1000
            began = at - (lat or 0) / 1000
            in_item = any(a <= at and began <= b for a, b in spans)
            if lat is None:
                failed_during += in_item
                failed_whole += t0 <= at <= t1
                continue
            if in_item:
                during.append(lat)
            if t0 <= at <= t1:
                whole.append(lat)
            elif at < t0:
                before.append((at, lat))
    warm = [lat for at, lat in before if start is not None and at >= start + 2]
    aborted = out.get("stderr", "").count("aborted")
    rebuilt = [i for i in result.record["plan"] if i["action"] == "reindex"]
    for line in lines:
        if line.startswith("["):
            print("  " + line)
    print(f"pgbench scale {args.scale}, {args.clients} clients, maintenance "
          f"{t1 - t0:.1f}s ({len(rebuilt)} indexes rebuilt, "
          f"{sum(1 for i in result.record['plan'] if i['status'] == 'done')}/"
          f"{len(result.record['plan'])} items done, exit {result.exit_code})")
    print(f"transactions before: {len(warm)}, during the items' SQL "
          f"({sum(b - a for a, b in spans):.1f}s): {len(during)}, during the whole run: "
          f"{len(whole)}")
    print(f"p99 latency before: {percentile(warm, 99):.2f} ms, during reindex: "
          f"{percentile(during, 99):.2f} ms, during the whole run: "
          f"{percentile(whole, 99):.2f} ms")
    print(f"failed transactions during the whole run: {failed_whole + aborted}")
    print(f"p99 latency ratio whole run/before: "
          f"{percentile(whole, 99) / percentile(warm, 99):.2f}")
    print(f"failed transactions during reindex: {failed_during + aborted}")
    print(f"p99 latency ratio during/before: "
          f"{percentile(during, 99) / percentile(warm, 99):.2f}")
    return 0 if result.exit_code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
