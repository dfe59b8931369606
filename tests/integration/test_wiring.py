"""Capabilities wired together through `invoke`, as users run them (no injected callables)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def invoke(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"INVOKE_MHOPS_RECORDS_DIR": str(tmp / "records"),
           "INVOKE_MHOPS_STATE_DIR": str(tmp / "state"), "PATH": "/usr/bin:/bin",
           "HOME": str(tmp), "INVOKE_REPORT_PDF": "off"}
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_weekly_report_lists_open_incidents_from_the_incident_store(tmp_path):
    opened = invoke(tmp_path, "incident.open", "--title", "挂号系统缓慢", "--scope", "hospital",
                    "--type", "software", "--severity", "clinical")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    out = tmp_path / "out"
    weekly = invoke(tmp_path, "report", "weekly", "--out", str(out))
    assert weekly.returncode in (0, 1), weekly.stdout + weekly.stderr
    (doc,) = out.glob("weekly-*/report.md")
    assert "挂号系统缓慢" in doc.read_text()
