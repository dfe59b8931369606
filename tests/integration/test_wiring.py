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


def test_every_rollback_is_announced_to_the_channels(tmp_path):
    """tasks.upgrade/rollback register the notifier: a rollback record reaches a webhook."""
    import importlib.util
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from invoke import Config, Context

    from mhops import releases

    got: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = b'{"errcode": 0, "errmsg": "ok"}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = importlib.util.spec_from_file_location("mhops_tasks", REPO / "tasks.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    cfg = Config(project_location=str(REPO))
    cfg.load_project()
    cfg.set_runtime_path(None)
    cfg.load_overrides({"mhops": {"records_dir": str(tmp_path / "records"),
                                  "state_dir": str(tmp_path / "state")},
                        "notify": {"channels": [{
                            "name": "ops", "type": "wecom",
                            "webhook": f"http://127.0.0.1:{server.server_port}/send?key=k"}]}})
    before = list(releases._ROLLBACK_LISTENERS)
    try:
        tasks._announce_rollbacks(Context(cfg), [str(REPO / "inventory" / "local.yml")])
        (listener,) = [f for f in releases._ROLLBACK_LISTENERS if f not in before]
        listener({"kind": "rollback", "run_id": "20261128T000000Z-rollback", "lang": "zh-CN",
                  "status": "critical", "exit_code": 2, "outcome": "rolled_back",
                  "rolled_back": True, "component": "sample", "version_from": "3.0.0",
                  "version_to": "2.0.0", "hosts": ["h1"], "headline": "sample 3.0.0 已回退"},
                 tmp_path)
    finally:
        releases._ROLLBACK_LISTENERS[:] = before
        server.shutdown()
    (msg,) = got
    assert "sample 3.0.0 已回退" in json.dumps(msg, ensure_ascii=False)
