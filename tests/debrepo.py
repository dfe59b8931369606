"""A local apt repository with a dummy package, for patching this machine safely.

``mhs-dummy`` v1 is built to be installed directly, v2 is served from a ``file:``
repository labelled as a security archive. The apt options point apt at that
repository only (own sources list, own lists folder, no shared caches), so an upgrade
through them touches exactly that package and nothing else.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PKG = "mhs-dummy"


def installed() -> str | None:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", PKG], capture_output=True,
                       text=True)
    return r.stdout.strip() or None if r.returncode == 0 else None


def purge() -> None:
    subprocess.run(["dpkg", "--purge", PKG], capture_output=True, timeout=120)


def install(deb: Path) -> None:
    subprocess.run(["dpkg", "-i", str(deb)], check=True, capture_output=True, timeout=120)


def _deb(root: Path, version: str, reboot_flag: Path | None) -> Path:
    d = root / f"build-{version}"
    (d / "DEBIAN").mkdir(parents=True)
    (d / "usr/share" / PKG).mkdir(parents=True)
    (d / "DEBIAN/control").write_text(
        f"Package: {PKG}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: mhops tests <root@localhost>\nDescription: mhops patch test dummy\n")
    (d / "usr/share" / PKG / "VERSION").write_text(version + "\n")
    if reboot_flag:  # what kernel and libc packages do on Debian
        post = d / "DEBIAN/postinst"
        post.write_text(f"#!/bin/sh\nset -e\ntouch {reboot_flag}\n"
                        f"echo {PKG} >> {reboot_flag}.pkgs\n")
        post.chmod(0o755)
    out = root / f"{PKG}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(d), str(out)], check=True,
                   capture_output=True)
    return out


def _index(deb: Path) -> str:
    """The Packages stanza dpkg-scanpackages would write (dpkg-dev is not needed)."""
    import hashlib

    control = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                             check=True).stdout.rstrip("\n")
    data = deb.read_bytes()
    return (f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
            f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n")


def build(root: Path) -> dict:
    """Build v1 and the v2 repository under `root`; return v1, the flag and role variables."""
    for sub in ("repo", "lists/partial", "parts", "archives/partial"):
        (root / sub).mkdir(parents=True)
    flag = root / "reboot-required"
    v1 = _deb(root, "1.0", None)
    v2 = _deb(root, "2.0", flag)
    os.replace(v2, root / "repo" / v2.name)
    (root / "repo/Packages").write_text(_index(root / "repo" / v2.name))
    (root / "repo/Release").write_text("Origin: mhs\nLabel: mhs-Security\n"
                                       "Suite: mhs-security\nCodename: mhs-security\n")
    sources = root / "sources.list"
    sources.write_text(f"deb [trusted=yes] file:{root / 'repo'} ./\n")
    options = [f"Dir::Etc::SourceList={sources}", f"Dir::Etc::SourceParts={root / 'parts'}",
               f"Dir::State::Lists={root / 'lists'}", "Dir::Cache::pkgcache=",
               "Dir::Cache::srcpkgcache=", f"Dir::Cache::archives={root / 'archives'}"]
    # Lists current as on a host where apt's daily timer ran (--check never refreshes them).
    subprocess.run(["apt-get", "update", "-q", *[a for o in options for a in ("-o", o)]],
                   check=True, capture_output=True, timeout=120)
    return {"v1": v1, "flag": flag, "vars": {"mhops_patch_apt_options": options,
                                             "mhops_patch_reboot_required_file": str(flag)}}
