"""drill_stage: a Ctrl-C while the staging folder is being made leaves no folder behind.

A test that signals the moment the folder appears once found one left behind (the
folder existed before the code that removes it knew its name). The interrupt is raised
here by an audit hook when the owner file is opened, i.e. after the folder exists and
before anything is fetched, in a child process (audit hooks cannot be removed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from mhops import drill_stage

def hook(event, args):
    if event == "open" and str(args[0]).endswith("/owner"):
        raise KeyboardInterrupt

sys.addaudithook(hook)
s = drill_stage.Settings(inventory=["inventory/local.yml"], host="db1", local=False,
                         name="his", staging_parent=sys.argv[1])
try:
    drill_stage.stage(s)
except KeyboardInterrupt:
    print("interrupted")
"""


def test_interrupt_while_the_staging_folder_is_made_removes_it(tmp_path):
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "interrupted", out.stderr
    assert list(tmp_path.iterdir()) == []
