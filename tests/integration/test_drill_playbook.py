"""playbooks/drill.yml under plain ansible-playbook: stage (choose, mark, fetch), release."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _playbook(inventory: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
               ANSIBLE_STDOUT_CALLBACK="json", ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
         "-e", f"ansible_python_interpreter={sys.executable}", "playbooks/drill.yml", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _report(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    plays = json.loads(out.stdout)["plays"]
    task = plays[0]["tasks"][-1]
    return next(iter(task["hosts"].values()))["msg"]


def test_stage_fetches_the_newest_complete_backup_and_release_unmarks_it(tmp_path):
    folder = tmp_path / "bk" / "mhq_x"
    folder.mkdir(parents=True)
    for stamp, body, manifest in (("20260101T000000Z", b"old", True),
                                  ("20260301T000000Z", b"newest complete", True),
                                  ("20260401T000000Z", b"still being written", False)):
        (folder / f"mhq_x-{stamp}.dump").write_bytes(body)
        if manifest:
            (folder / f"mhq_x-{stamp}.manifest.json").write_text('{"name": "mhq_x"}')
    # The newest by mtime is the oldest by name: the stamp in the name decides.
    os.utime(folder / "mhq_x-20260101T000000Z.dump", (2e9, 2e9))
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    staging = tmp_path / "staging"
    msg = _report(_playbook(inv, "-e", "mhops_drill_name=mhq_x",
                            "-e", f"mhops_drill_backup_dir={tmp_path / 'bk'}",
                            "-e", f"mhops_drill_staging_dir={staging}",
                            "-e", "mhops_drill_transfer=fetch"))
    assert msg["file"] == "mhq_x-20260301T000000Z.dump" and msg["transfer"] == "fetched"
    assert msg["error"] == {} and msg["marked"] is True and msg["checksum"]
    assert (staging / msg["file"]).read_bytes() == b"newest complete"
    assert (staging / "mhq_x-20260301T000000Z.manifest.json").exists()
    assert (folder / ".in-use").read_text().split() == [msg["file"]]

    msg = _report(_playbook(inv, "-e", "mhops_drill_action=release",
                            "-e", f"mhops_drill_path={folder / 'mhq_x-20260301T000000Z.dump'}"))
    assert msg["released"] is True and not (folder / ".in-use").exists()


def test_stage_reports_a_missing_backup_without_marking(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    localhost:\n      ansible_connection: local\n")
    msg = _report(_playbook(inv, "-e", f"mhops_drill_backup={tmp_path}/gone-20260101T000000Z.dump"))
    assert msg["error"]["located"] is False and "does not exist" in msg["error"]["msg"]
    assert msg["marked"] is False and msg["path"] is None
