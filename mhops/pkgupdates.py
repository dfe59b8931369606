"""Pending package updates from the package managers' own output (a pure leaf).

Owns reading what an upgrade would do: ``apt-get -s upgrade`` (``Inst``/``Conf``/
``Remv`` lines, with the origin that flags a security update), ``dnf``/``yum
updateinfo list security`` (advisory, severity, package) and ``check-update``
listings, ``dpkg-query -W`` version listings, and ``dpkg --audit`` (an interrupted
earlier transaction). ``invoke patch`` plans with it and ``invoke security.audit``
counts pending security updates with the same code. Imports nothing of the project.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

# "Inst name [current] (candidate origin, origin [arch]) [broken deps]"; the current
# version is missing for a new install, the parenthesis for a removal.
_APT = re.compile(
    r"^(?P<action>Inst|Conf|Remv|Purg)\s+(?P<name>\S+)"
    r"(?:\s+\[(?P<current>[^\]]*)\])?"
    r"(?:\s+\((?P<candidate>\S+)(?:\s+(?P<origins>.*?))?\s+\[(?P<arch>[^\]]+)\]\))?"
    r"(?:\s+\[.*\])?\s*$")
# Debian "Debian-Security:12/bookworm-security", Ubuntu "Ubuntu:22.04/jammy-security".
_SECURITY = re.compile(r"(?i)security")
# "FEDORA-2024-1a2b3c Important/Sec. openssl-1:3.0.9-2.fc38.x86_64"
_DNF_ADVISORY = re.compile(r"^(?P<advisory>\S+)\s+(?P<severity>\S+?)(?:/Sec\.)?\s+"
                           r"(?P<nevra>\S+)\s*$")
_NEVRA = re.compile(r"^(?P<name>.+)-(?:(?P<epoch>\d+):)?(?P<version>[^-:]+)-(?P<release>[^-]+)"
                    r"\.(?P<arch>[^.]+)$")
# "openssl.x86_64   1:3.0.9-2.fc38   updates"
_DNF_CHECK = re.compile(r"^(?P<name>[^\s.][^\s]*)\.(?P<arch>[A-Za-z0-9_]+)\s+(?P<version>\S+)"
                        r"\s+(?P<repo>\S+)\s*$")


@dataclass(frozen=True)
class Update:
    """One package an upgrade would install, upgrade or remove."""

    name: str
    current: str | None
    candidate: str | None
    arch: str = ""
    origins: tuple[str, ...] = ()
    security: bool = False
    action: str = "upgrade"  # upgrade, install, remove
    advisories: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["origins"], d["advisories"] = list(self.origins), list(self.advisories)
        return d


def is_security_origin(origin: str) -> bool:
    return bool(_SECURITY.search(origin))


def parse_apt_simulation(text: str) -> list[Update]:
    """Packages in ``apt-get -s upgrade`` (or ``install``) output, in order, once each.

    ``Inst`` says what is unpacked; ``Conf`` lines repeat it and are only used for a
    package that has no ``Inst`` line. Lines that are not actions are ignored.
    """
    found: dict[str, Update] = {}
    for line in text.splitlines():
        m = _APT.match(line.strip())
        if not m:
            continue
        action, name = m["action"], m["name"]
        if action == "Conf" and name in found:
            continue
        origins = tuple(o.strip() for o in (m["origins"] or "").split(",") if o.strip())
        if action in ("Remv", "Purg"):
            kind = "remove"
        elif action == "Conf":
            kind = "configure"
        else:
            kind = "upgrade" if m["current"] else "install"
        found[name] = Update(name=name, current=m["current"] or None,
                             candidate=m["candidate"] or None, arch=m["arch"] or "",
                             origins=origins, security=any(map(is_security_origin, origins)),
                             action=kind)
    return list(found.values())


def parse_dnf_security(text: str) -> dict[str, list[tuple[str, str]]]:
    """``dnf updateinfo list security``: package name -> [(advisory, severity)]."""
    out: dict[str, list[tuple[str, str]]] = {}
    for line in text.splitlines():
        m = _DNF_ADVISORY.match(line.strip())
        if not m:
            continue
        n = _NEVRA.match(m["nevra"])
        if not n:
            continue
        out.setdefault(n["name"], []).append((m["advisory"], m["severity"]))
    return out


def parse_dnf_check_update(text: str, security: dict[str, list[tuple[str, str]]] | None = None
                           ) -> list[Update]:
    """``dnf/yum check-update`` listing, flagged with the security advisories given."""
    security = security or {}
    out: dict[str, Update] = {}
    for line in text.splitlines():
        if line.startswith(("Obsoleting", "Last metadata", "Security:")):
            continue
        m = _DNF_CHECK.match(line.rstrip())
        if not m or m["name"] in out:
            continue
        adv = security.get(m["name"], [])
        out[m["name"]] = Update(name=m["name"], current=None, candidate=m["version"],
                                arch=m["arch"], origins=(m["repo"],), security=bool(adv),
                                advisories=tuple(a for a, _ in adv))
    return list(out.values())


def parse_dpkg_query(text: str) -> dict[str, str]:
    """``dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'``: name -> version.

    Only installed packages (status ``ii``/``hi``, or no status column) are kept.
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            continue
        if len(parts) >= 3 and parts[2].strip()[1:2] not in ("i",):
            continue
        out[parts[0].split(":")[0]] = parts[1]
    return out


def audit_problems(text: str) -> list[str]:
    """Non-empty paragraphs of ``dpkg --audit``: each describes a half-done package."""
    return [p.strip() for p in re.split(r"\n\s*\n", text or "") if p.strip()]


def summarize(updates: list[Update]) -> dict[str, int]:
    pending = [u for u in updates if u.action in ("upgrade", "install")]
    return {"total": len(pending),
            "security": sum(1 for u in pending if u.security),
            "upgrade": sum(1 for u in updates if u.action == "upgrade"),
            "install": sum(1 for u in updates if u.action == "install"),
            "remove": sum(1 for u in updates if u.action == "remove"),
            "configure": sum(1 for u in updates if u.action == "configure")}


def select(updates: list[Update], security_only: bool) -> list[Update]:
    """What a patch applies: every upgrade/install, or only security-flagged ones."""
    chosen = [u for u in updates if u.action in ("upgrade", "install")]
    return [u for u in chosen if u.security] if security_only else chosen
