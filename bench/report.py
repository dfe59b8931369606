"""Quarterly bundle benchmark: `report quarterly` against reading every record of the quarter.

Generates 90 days x 20 hosts of inspection records (one daily inspection of a 20-host
fleet, built and published like real ones: collector output classified by
mhops.findings, written by mhops.records.write_run, ~0.5 MB of JSON, Markdown and HTML
per run), then alternately times, each in a fresh child process with the modules
imported before the clock starts:

  read:   read every file of every record folder and parse every record.json, and
  bundle: mhops.report.run(quarterly): index, summaries, every sheet, zip, published
          atomically; with the PDF of the index when Chromium is installed (--pdf auto)

and prints the medians, `ratio bundle/read-all-records: <x>` (target <= 3; with the
PDF when a renderer is installed, and the ratio without it) and the bundle process's
peak RSS (target <= 300 MB; Chromium, a separate process, is shown apart). The records
live in a temp folder that is removed afterwards.

    .venv/bin/python bench/report.py --repeat 3
    .venv/bin/python bench/report.py --pdf off
    .venv/bin/python bench/report.py --renderer chromium   # the full browser
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# Replace (not prepend to) the script's folder: bench/ would shadow project modules.
sys.path[0] = str(Path(__file__).resolve().parents[1])

START = datetime(2026, 10, 1, tzinfo=UTC)


def child_read(folder: Path) -> dict:
    t0 = time.perf_counter()
    n = 0
    for d in sorted(folder.iterdir()):
        for f in sorted(d.iterdir()):
            data = f.read_bytes()
            n += len(data)
            if f.name == "record.json":
                json.loads(data)
    return {"seconds": time.perf_counter() - t0, "bytes": n}


def child_bundle(folder: Path, out: Path, pdf: str, redact_sheets: str,
                 renderer: str | None) -> dict:
    from mhops import report

    t0 = time.perf_counter()
    r = report.run(report.Options(what="quarterly", records_dir=folder, out_dir=out,
                                  period="2026Q4", pdf=pdf, redact_sheets=redact_sheets,
                                  chromium=renderer,
                                  generated_at=datetime(2027, 1, 2, tzinfo=UTC),
                                  echo=lambda _: None))
    return {"seconds": time.perf_counter() - t0, "zip_bytes": r.path.stat().st_size}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--hosts", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pdf", choices=("auto", "off"), default="auto")
    ap.add_argument("--redact-sheets", choices=("auto", "all"), default="auto",
                    help="all: scrub the inspection sheets again too (slow)")
    ap.add_argument("--renderer", help="the PDF renderer (default: as the report finds it, "
                    "chromium-headless-shell before chromium)")
    ap.add_argument("--child", choices=("read", "bundle"))
    ap.add_argument("--folder")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        if a.child == "read":
            res = child_read(Path(a.folder))
        else:
            res = child_bundle(Path(a.folder), Path(a.out), a.pdf, a.redact_sheets, a.renderer)
        res["maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        res["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(json.dumps(res))
        return

    from tests import reportdata

    tmp = Path(tempfile.mkdtemp(prefix="mhops-bench-report-"))
    try:
        folder = tmp / "records"
        t = time.perf_counter()
        reportdata.write_inspections(folder, START, a.days,
                                     [f"his-app{i:02d}" for i in range(1, a.hosts + 1)])
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"generated {a.days} inspection records x {a.hosts} hosts: "
              f"{size / 1e6:.1f} MB in {time.perf_counter() - t:.1f} s")
        modes = ["auto", "off"] if a.pdf == "auto" else ["off"]
        reads: list[float] = []
        bundles: dict[str, list[float]] = {m: [] for m in modes}
        rss, chrome, zips = [], [], {}
        for i in range(a.repeat + 1):  # the first round warms the page cache, not counted
            r = run_child(["--child", "read", "--folder", str(folder)])
            if i:
                reads.append(r["seconds"])
            for mode in modes:
                b = run_child(["--child", "bundle", "--folder", str(folder), "--out",
                               str(tmp / "out"), "--pdf", mode, "--redact-sheets",
                               a.redact_sheets, *(["--renderer", a.renderer] if a.renderer
                                                  else [])])
                zips[mode] = b["zip_bytes"]
                if i:
                    bundles[mode].append(b["seconds"])
                    rss.append(b["maxrss_kb"])
                    chrome.append(b["children_maxrss_kb"])
        read_m = statistics.median(reads)
        print(f"read all records: median {read_m:.3f} s ({r['bytes'] / 1e6:.1f} MB)")
        from mhops.report_output import find_chromium

        renderer = find_chromium(a.renderer) if a.pdf == "auto" else None
        for mode in modes:
            label = f"index.pdf by {Path(renderer).name}" if mode == "auto" and renderer \
                else "no PDF"
            print(f"quarterly bundle ({label}): median {statistics.median(bundles[mode]):.3f} s "
                  f"(zip {zips[mode] / 1e6:.1f} MB, redact sheets {a.redact_sheets})")
        main_mode = modes[0]
        print(f"ratio bundle/read-all-records: "
              f"{statistics.median(bundles[main_mode]) / read_m:.2f}")
        if len(modes) > 1:
            print(f"ratio without the PDF: {statistics.median(bundles['off']) / read_m:.2f}")
        print(f"peak memory (bundle process RSS): {max(rss) / 1024:.0f} MB"
              + (f"; PDF renderer child: {max(chrome) / 1024:.0f} MB" if max(chrome) else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
