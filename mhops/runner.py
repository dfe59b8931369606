"""The one place that runs Ansible: playbooks through ansible-runner.

Owns the private data folder (a 0700 temp folder, removed afterwards unless the
caller keeps artifacts), extravars passed as a dict, redaction of every event in
the event handler before ansible-runner writes it to disk, no raw stdout file on
disk, and per-host outcomes of one chosen task reported as they arrive.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhops.errors import MhopsError
from mhops.redact import Redactor

REPO = Path(__file__).resolve().parent.parent
ANSIBLE_CFG = REPO / "ansible.cfg"

OK, FAILED, UNREACHABLE = "ok", "failed", "unreachable"
_OUTCOME = {"runner_on_ok": OK, "runner_on_failed": FAILED, "runner_on_unreachable": UNREACHABLE}


@dataclass
class HostOutcome:
    host: str
    status: str
    result: dict[str, Any]

    @property
    def message(self) -> str:
        r = self.result
        text = r.get("msg") or r.get("module_stderr") or r.get("stderr") or self.status
        return " ".join(str(text).split())[:500]


@dataclass
class PlaybookRun:
    rc: int
    status: str
    hosts: dict[str, HostOutcome] = field(default_factory=dict)
    artifacts: Path | None = None


def run_playbook(playbook: str, *, inventory: list[str], limit: str | None = None,
                 extravars: dict[str, Any] | None = None, forks: int = 50,
                 task_action: str | None = None, redactor: Redactor | None = None,
                 on_host: Callable[[HostOutcome], None] | None = None,
                 keep_artifacts: Path | None = None, timeout: int | None = None,
                 envvars: dict[str, str] | None = None,
                 cancel_callback: Callable[[], bool] | None = None) -> PlaybookRun:
    """Run `playbook` and return the outcome of `task_action` per host (last one wins).

    Without `cancel_callback` ansible-runner installs its own SIGINT/SIGTERM handlers
    (cancelling the run) and leaves them in place afterwards.
    """
    import ansible_runner

    redactor = redactor or Redactor()
    outcomes: dict[str, HostOutcome] = {}
    said: list[str] = []

    def handle(event: dict[str, Any]) -> bool:
        # Redact in place: ansible-runner writes the event to disk after this returns.
        for key in ("stdout", "event_data"):
            if key in event:
                event[key] = redactor.obj(event[key])
        kind = event.get("event")
        data = event.get("event_data") or {}
        if kind in ("verbose", "error") and event.get("stdout"):
            said.append(str(event["stdout"]))
        if kind in _OUTCOME and (task_action is None or data.get("task_action") == task_action):
            status = _OUTCOME[kind]
            if status == FAILED and data.get("ignore_errors"):
                status = OK
            outcome = HostOutcome(str(data.get("host")), status, data.get("res") or {})
            outcomes[outcome.host] = outcome
            if on_host:
                on_host(outcome)
        return True

    private = Path(tempfile.mkdtemp(prefix="mhops-runner-"))
    os.chmod(private, 0o700)
    # ansible-runner looks ansible-playbook up on PATH; use the one beside this Python.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"PATH": path, "ANSIBLE_CONFIG": str(ANSIBLE_CFG),
           "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_LIBRARY": str(REPO / "library"),
           "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
           # ansible-runner turns host key checking OFF unless told otherwise.
           "ANSIBLE_HOST_KEY_CHECKING": "True"}
    env.update(envvars or {})
    try:
        r = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(REPO),
            playbook=str(REPO / playbook),
            inventory=[str(Path(i).resolve()) for i in inventory],
            limit=limit,
            extravars=dict(extravars or {}),
            forks=forks,
            envvars=env,
            event_handler=handle,
            quiet=True,
            suppress_output_file=True,
            timeout=timeout,
            cancel_callback=cancel_callback,
        )
        artifacts = None
        if keep_artifacts:
            keep_artifacts.mkdir(parents=True, exist_ok=True, mode=0o700)
            artifacts = keep_artifacts / Path(r.config.artifact_dir).name
            shutil.copytree(r.config.artifact_dir, artifacts)
        if not outcomes and r.rc != 0:
            why = " ".join(" ".join(said[-3:]).split())[-500:]
            raise MhopsError(f"ansible-runner {r.status} running {playbook} (rc {r.rc}): {why}")
        return PlaybookRun(rc=r.rc, status=r.status, hosts=outcomes, artifacts=artifacts)
    finally:
        shutil.rmtree(private, ignore_errors=True)
