"""Build the sample component's release tarballs: 1.0.0 good, 2.0.0 good with a
migration that has a down step, 3.0.0 broken (its health URL fails after start).

``build(version, out_dir)`` writes ``<out_dir>/sample-<version>.tar.gz`` and returns it.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMPONENT = "sample"
RELEASES = {
    "1.0.0": {"migrations": ["0001_appointments_queue"], "broken_health": False,
              "changes": ["首个版本：预约排队接口", "first release: appointment queue API"]},
    "2.0.0": {"migrations": ["0001_appointments_queue", "0002_queue_channel"],
              "broken_health": False,
              "changes": ["排队记录增加支付渠道字段（含回退脚本）",
                          "queue rows carry the payment channel (migration with down step)"]},
    "3.0.0": {"migrations": ["0001_appointments_queue", "0002_queue_channel"],
              "broken_health": True,
              "changes": ["接入新的排队后端（有缺陷：启动后健康检查失败）",
                          "new queue backend (defective: health fails after start)"]},
}


def build(version: str, out_dir: Path, *, like: str | None = None,
          changes: list[str] | None = None) -> Path:
    """Build `version` (or a new version number with the content of release `like`)."""
    spec = dict(RELEASES[like or version])
    if changes is not None:
        spec["changes"] = list(changes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{COMPONENT}-{version}.tar.gz"
    meta = {"component": COMPONENT, "version": version, **spec}
    files: dict[str, bytes] = {
        "release.json": (json.dumps(meta, ensure_ascii=False, indent=1) + "\n").encode(),
        "VERSION": f"{version}\n".encode(),
        "app.py": (HERE / "src" / "app.py").read_bytes(),
    }
    for name in spec["migrations"]:
        for step in ("up", "down"):
            files[f"migrations/{name}.{step}.sql"] = (
                HERE / "migrations" / f"{name}.{step}.sql").read_bytes()
    # Fixed mtimes and order: the same version always gives the same bytes.
    with tarfile.open(path, "w:gz") as tar:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 1764288000, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    return path


if __name__ == "__main__":
    import sys

    for v in sys.argv[2:] or RELEASES:
        print(build(v, Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
