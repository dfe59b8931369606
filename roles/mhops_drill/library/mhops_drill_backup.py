#!/usr/bin/python
"""Find the backup a restore drill uses on the database host, and mark or release it.

One round trip: `stage` chooses the backup (the given path, or the newest complete one),
finds its manifest, stats it and lists it in ``.in-use`` (retention keeps it);
`release` removes that one line again. The rules live in module_utils/mhops_drill_files.
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.mhops_drill_files import (
    BackupNotFound,
    locate,
    manifest_of,
    mark,
    release,
)

DOCUMENTATION = r"""
module: mhops_drill_backup
short_description: Choose, mark and release the backup a restore drill uses
options:
  action: {type: str, required: true, choices: [stage, release]}
  backup: {type: str, default: latest, description: "latest, or an absolute path on this host"}
  folder: {type: path, description: "the database's backup folder <backup_dir>/<name>"}
  name: {type: str, description: "the database's logical name (for latest)"}
  path: {type: path, description: "the backup to release"}
  mark: {type: bool, default: true, description: "list the backup in .in-use while staged"}
"""


def main():
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True, "choices": ["stage", "release"]},
            "backup": {"type": "str", "default": "latest"},
            "folder": {"type": "path"},
            "name": {"type": "str"},
            "path": {"type": "path"},
            "mark": {"type": "bool", "default": True},
        },
        required_if=[("action", "release", ("path",))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["action"] == "release":
            released = False
            if not module.check_mode:
                released = release(os.path.dirname(p["path"]), os.path.basename(p["path"]))
            module.exit_json(changed=released, released=released, path=p["path"])
        path = locate(p["backup"], p["folder"], p["name"])
        manifest, problem = manifest_of(path)
        marked = False
        if p["mark"] and not module.check_mode:
            mark(os.path.dirname(path), os.path.basename(path))
            marked = True
        module.exit_json(changed=marked, located=True, path=path, file=os.path.basename(path),
                         size=os.path.getsize(path), manifest=manifest,
                         manifest_problem=problem, marked=marked)
    except BackupNotFound as exc:
        module.fail_json(msg=str(exc), located=False)
    except OSError as exc:
        module.fail_json(msg="{}: {}".format(exc.filename or "backup", exc.strerror or exc),
                         located=False)


if __name__ == "__main__":
    main()
