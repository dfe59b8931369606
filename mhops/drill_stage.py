"""Bringing a drill's backup from the database host to the control node, through Ansible.

Owns running ``playbooks/drill.yml`` (role ``mhops_drill``) through ``mhops.runner``:
``stage`` chooses the backup on the database host (the given path or the newest
complete one), finds its manifest, lists it in ``.in-use`` and, unless that host is the
control node itself, fetches both into a private per-run folder (checksums compared on
both ends); ``release`` removes the ``.in-use`` line afterwards. A database host that
is this machine is served in-process by the same rules (``mhops.drill_files``) unless
``direct_local`` is off. Also owns the staging folder: created 0700 next to the scratch
folders, removed after the drill, and swept when a drill killed outright left one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mhops import drill_files, runner
from mhops.drill_record import Interrupted
from mhops.errors import MhopsError
from mhops.redact import Redactor

PLAYBOOK = "playbooks/drill.yml"
PREFIX = "mhops-stage-"
DEFAULT_BACKUP_DIR = "/var/backups/mhops"  # as mhops_drill_backup_dir


@dataclass
class Staged:
    """Where the drill's backup is: on its database host and on the control node."""

    host: str
    source_path: str | None = None
    file: str | None = None
    size: int | None = None
    path: str | None = None          # what the restore reads, on the control node
    transfer: str = "in_place"       # or "fetched"
    manifest: str | None = None      # the manifest's path on the control node
    manifest_problem: str = ""
    marked: bool = False
    checksum: str | None = None      # sha1 compared on both ends by the fetch
    error: str = ""                  # the transfer failed: the drill fails with this reason
    via: str = "ansible"             # or "in-process" (the database host is this machine)
    released: bool | None = None
    folder: Path | None = None

    @property
    def detail(self) -> str:
        if self.error:
            return self.error
        how = ("fetched from" if self.transfer == "fetched" else "in place on")
        return f"{self.file} {how} {self.host}, marked in use: {self.marked}"


@dataclass
class Settings:
    inventory: list[str]
    host: str                        # the database host (inventory name)
    local: bool                      # the database host is the control node
    name: str = ""                   # logical database name (for latest)
    backup: str = "latest"
    backup_dir: str = ""
    staging_parent: str | None = None
    vault_password_file: str | None = None
    redactor: Redactor | None = None
    # A database host that is this machine is served in-process by the same code the
    # role's module runs (mhops.drill_files): two ansible-playbook runs cost more CPU
    # than the rest of a small drill. False sends it through the playbook as well.
    direct_local: bool = True

    @property
    def direct(self) -> bool:
        return self.local and self.direct_local

    @property
    def folder(self) -> str:
        base = self.backup_dir or DEFAULT_BACKUP_DIR
        return f"{base.rstrip('/')}/{self.name}" if self.name else ""


def _run(s: Settings, extravars: dict[str, Any], cancellable: bool) -> runner.HostOutcome:
    env = ({"ANSIBLE_VAULT_PASSWORD_FILE": s.vault_password_file}
           if s.vault_password_file else None)
    extravars = {"mhops_drill_hosts": s.host, **extravars}
    if s.local:  # this machine: its modules run under this Python, whatever discovery finds
        extravars["ansible_python_interpreter"] = sys.executable
    pb = None
    with _cancel_on_signals(cancellable) as cancelled:
        try:
            pb = runner.run_playbook(PLAYBOOK, inventory=s.inventory, forks=1,
                                     extravars=extravars, redactor=s.redactor, envvars=env,
                                     cancel=lambda: bool(cancelled))
        except MhopsError:
            if not cancelled:
                raise
    if cancelled or pb is None:
        # ansible-runner has stopped the playbook; now unwind like the signal would have.
        if not cancelled or cancelled[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Interrupted(f"interrupted ({signal.Signals(cancelled[0]).name})")
    outcome = pb.hosts.get(s.host)
    if outcome is None:
        raise MhopsError(f"{PLAYBOOK} did not run on {s.host} ({pb.status}): is it in the "
                         "inventory?")
    return outcome


@contextmanager
def _cancel_on_signals(cancellable: bool) -> Iterator[list[int]]:
    """Ctrl-C/SIGTERM cancel a running stage cleanly (the fetch and .in-use rescue stop
    with the playbook); a release is never cancelled (the drill shields its teardown)."""
    got: list[int] = []
    saved = {}
    if cancellable:
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                saved[sig] = signal.signal(sig, lambda n, _f: got.append(n))
        except ValueError:  # not the main thread: the caller owns signal handling
            pass
    try:
        yield got
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def stage(s: Settings, plan_only: bool = False) -> Staged:
    """Choose, mark and (if remote) fetch the backup; MhopsError when there is none.

    `plan_only` only chooses it: nothing is marked, fetched or created.
    """
    if s.direct:
        return _stage_here(s, plan_only)
    folder = None
    try:
        if not s.local and not plan_only:
            parent = Path(s.staging_parent or tempfile.gettempdir())
            parent.mkdir(parents=True, exist_ok=True)
            sweep_stale(parent)
            # Named before it exists: a Ctrl-C the moment it is made still finds it in
            # `folder` and removes it (mkdtemp returning it would leave a gap; a test
            # that signals when the folder appears found that gap).
            folder = parent / f"{PREFIX}{secrets.token_hex(8)}"
            try:
                folder.mkdir(mode=0o700)
            except FileExistsError:
                folder = None       # not ours
                raise
            (folder / "owner").write_text(f"{os.getpid()}\n")
        o = _run(s, {"mhops_drill_action": "stage", "mhops_drill_name": s.name,
                     "mhops_drill_backup": s.backup or "latest",
                     "mhops_drill_backup_dir": s.backup_dir or DEFAULT_BACKUP_DIR,
                     "mhops_drill_staging_dir": str(folder or tempfile.gettempdir()),
                     "mhops_drill_transfer": "auto" if s.local else "fetch",
                     "mhops_drill_plan_only": plan_only}, True)
        if o.status == runner.UNREACHABLE:  # the drill could not get its backup: it failed
            return Staged(host=s.host, error=f"{s.host} is unreachable: {o.message}",
                          folder=folder)
        msg = o.result.get("msg") if o.status == runner.OK else None
        if not isinstance(msg, dict):
            raise MhopsError(f"staging the backup on {s.host} failed ({o.status}): "
                             f"{o.message}")
        error = msg.get("error") or {}
        if error and not _true(error.get("located")):
            raise MhopsError(f"on {s.host}: {error.get('msg')}")
        size = msg.get("size")
        return Staged(
            host=s.host, source_path=msg.get("source_path"), file=msg.get("file"),
            size=int(size) if size not in (None, "") else None,
            path=msg.get("path"), transfer=str(msg.get("transfer") or "in_place"),
            manifest=msg.get("manifest") or None,
            manifest_problem=str(msg.get("manifest_problem") or ""),
            marked=_true(msg.get("marked")), checksum=msg.get("checksum") or None,
            error=(f"fetching {msg.get('file')} from {s.host} failed: {error.get('msg')}"
                   if error else ""),
            folder=folder)
    except BaseException:
        cleanup(folder)
        raise


def _stage_here(s: Settings, plan_only: bool) -> Staged:
    try:
        path = drill_files.locate(s.backup or "latest", s.folder, s.name)
        manifest, problem = drill_files.manifest_of(path)
        if not plan_only:
            drill_files.mark(os.path.dirname(path), os.path.basename(path))
    except drill_files.BackupNotFound as exc:
        raise MhopsError(str(exc)) from exc
    except OSError as exc:
        raise MhopsError(f"{exc.strerror or exc}", path=exc.filename) from exc
    return Staged(host=s.host, source_path=path, file=os.path.basename(path),
                  size=os.path.getsize(path), path=path, manifest=manifest,
                  manifest_problem=problem, marked=not plan_only, via="in-process")


def release(s: Settings, staged: Staged) -> Staged:
    """Remove the backup's ``.in-use`` line on its host and the staged copy; never raises."""
    try:
        if staged.marked and staged.source_path and s.direct:
            staged.released = drill_files.release(os.path.dirname(staged.source_path),
                                                  os.path.basename(staged.source_path))
        elif staged.marked and staged.source_path:
            o = _run(s, {"mhops_drill_action": "release",
                         "mhops_drill_path": staged.source_path}, False)
            msg = o.result.get("msg") if o.status == runner.OK else None
            staged.released = isinstance(msg, dict) and _true(msg.get("released"))
            if not staged.released:
                staged.error = "; ".join(filter(None, [
                    staged.error, f"the .in-use mark on {s.host} was not released: "
                                  f"{o.message}"]))
    except (MhopsError, OSError) as exc:
        staged.released = False
        staged.error = "; ".join(filter(None, [staged.error, f"release failed: {exc}"]))
    finally:
        cleanup(staged.folder)
    return staged


def cleanup(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def sweep_stale(parent: Path) -> list[Path]:
    """Remove staging folders whose drill process is gone (killed outright)."""
    removed = []
    for d in parent.glob(f"{PREFIX}*"):
        try:
            owner = int((d / "owner").read_text().strip())
            os.kill(owner, 0)
            continue
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _true(v: Any) -> bool:
    return v is True or str(v).lower() == "true"
