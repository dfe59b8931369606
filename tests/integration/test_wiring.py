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


def test_runbook_run_is_attached_to_its_incident(tmp_path):
    from mhops import incident

    opened = invoke(tmp_path, "incident.open", "--title", "磁盘告警", "--scope", "person",
                    "--type", "server", "--severity", "experience")
    assert opened.returncode == 0, opened.stdout + opened.stderr
    ran = invoke(tmp_path, "runbook", "disk-full", "--host", "localhost", "--check",
                 "--incident", "1")
    assert ran.returncode in (0, 1, 2), ran.stdout + ran.stderr
    assert "attaching it to incident" not in ran.stdout + ran.stderr
    (inc,) = incident.list_incidents(tmp_path / "records" / "incidents.sqlite3")
    sources = {n["source"] for n in inc["notes"]}
    assert "runbook:disk-full" in sources, inc["notes"]
    unknown = invoke(tmp_path, "runbook", "disk-full", "--host", "localhost", "--check",
                     "--incident", "9")
    assert unknown.returncode == 3 and "unknown incident" in unknown.stderr


def test_quarterly_bundle_carries_the_knowledge_base_faq(tmp_path):
    import zipfile

    out = tmp_path / "out"
    built = invoke(tmp_path, "report", "quarterly", "--out", str(out))
    assert built.returncode in (0, 1), built.stdout + built.stderr
    (bundle,) = out.glob("*.zip")
    names = zipfile.ZipFile(bundle).namelist()
    assert any(n.endswith("faq/faq.md") for n in names), names
    assert any(n.endswith("faq/faq.html") for n in names), names
