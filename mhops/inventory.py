"""Host resolution for every transport: Ansible, Fabric and Testinfra.

Owns reading inventories through Ansible's own inventory API (InventoryManager,
VariableManager, Templar; group_vars and host_vars, vault), applying ``--limit``,
refusing empty selections, and turning a host's connection variables into the
parameters Fabric needs. Nothing here parses YAML or inventory files by hand.
"""

from __future__ import annotations

import os
import re
import shlex
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mhops.errors import MhopsError

# Connection and mhops variables are templated eagerly; everything else is left alone so
# an unrelated broken template elsewhere in group_vars does not stop an inspection.
_PREFIXES = ("ansible_", "mhops_", "vault_")
_SECRET_KEYS = ("ansible_password", "ansible_ssh_pass", "ansible_become_password",
                "ansible_become_pass")


@dataclass(frozen=True)
class Host:
    """One selected host with its (templated) mhops and connection variables."""

    name: str
    groups: tuple[str, ...]
    vars: dict[str, Any] = field(repr=False)
    origins: dict[str, tuple[str | None, int | None]] = field(repr=False, default_factory=dict)

    @property
    def local(self) -> bool:
        return self.vars.get("ansible_connection") == "local"

    def where(self, key: str) -> tuple[str | None, int | None]:
        """File and line a variable came from, where Ansible recorded it."""
        return self.origins.get(key, (None, None))


@dataclass(frozen=True)
class Selection:
    sources: tuple[str, ...]
    limit: str | None
    hosts: tuple[Host, ...]
    secrets: frozenset[str] = frozenset()

    @property
    def groups(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for h in self.hosts:
            for g in h.groups:
                out.setdefault(g, []).append(h.name)
        return dict(sorted(out.items()))

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


def _origin(value: Any) -> tuple[str | None, int | None]:
    try:  # Ansible >= 2.19 tags loaded values with where they came from
        from ansible._internal._datatag._tags import Origin
    except ImportError:  # pragma: no cover - older ansible-core
        return (None, None)
    tag = Origin.get_tag(value)
    return (tag.path, tag.line_num) if tag else (None, None)


def _walk_origins(path: str, value: Any, out: dict) -> None:
    """Record file and line for a variable and each nested key, for error messages."""
    out[path] = _origin(value)
    if isinstance(value, dict):
        for k, v in value.items():
            _walk_origins(f"{path}.{k}", v, out)
            if out[f"{path}.{k}"] == (None, None):
                out[f"{path}.{k}"] = _origin(k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk_origins(f"{path}[{i}]", v, out)


_ORIGIN = re.compile(r"Origin: (?P<path>/[^:\n]+):(?P<line>\d+)")


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or getattr(exc, "orig_exc", None) or exc.__context__


def _error(exc: Exception, warnings: list[tuple[str, BaseException]] = ()) -> MhopsError:
    """One clear line with the file and line Ansible found, without its console banners."""
    path = line = None
    reasons = []
    for source in [exc, *(w for _, w in warnings)]:
        for e in _chain(source):
            ctx = getattr(e, "_formatted_source_context", None)
            m = _ORIGIN.search(ctx or "") or _ORIGIN.search(str(e))
            if m and path is None:
                path, line = m["path"], int(m["line"])
            text = " ".join(str(getattr(e, "message", e)).split())
            if text and text not in reasons and "<unicode string>" not in text:
                reasons.append(text)
    return MhopsError("inventory: " + "; ".join(reasons[:3]), path=path, line=line)


@contextmanager
def _captured_parse_warnings(sink: list):
    """Keep the per-plugin parse failures (they hold file and line) off the console."""
    from ansible.inventory import manager

    display = manager.display
    original = display.error_as_warning
    display.error_as_warning = lambda msg, exception, **kw: sink.append((msg, exception))
    try:
        yield
    finally:
        display.error_as_warning = original


def select(sources: list[str] | tuple[str, ...], limit: str | None = None,
           vault_password_file: str | None = None) -> Selection:
    """Resolve `sources` (files or directories) and `limit` to hosts, or raise MhopsError."""
    from ansible import constants as C
    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar
    from ansible.vars.manager import VariableManager

    # Ansible only warns about an unparsable source and carries on with an empty
    # inventory; an inspection of "no hosts" must be an error, not a green run.
    C.INVENTORY_UNPARSED_IS_FAILED = True
    C.INVENTORY_ANY_UNPARSED_IS_FAILED = True
    for src in sources:
        if not Path(src).exists():
            raise MhopsError("inventory source does not exist", path=src)
    loader = DataLoader()
    warnings: list[tuple[str, BaseException]] = []
    if vault_password_file:
        from ansible.cli import CLI
        from ansible.parsing.vault import VaultSecretsContext

        vault = CLI.setup_vault_secrets(loader, vault_ids=[],
                                        vault_password_files=[vault_password_file],
                                        initialize_context=False)
        # Ansible's process-wide vault context may be initialised only once, but one
        # process can select twice (a run, then its notifications): replace it instead.
        if VaultSecretsContext.current(optional=True) is None:
            VaultSecretsContext.initialize(VaultSecretsContext(vault))
        else:
            VaultSecretsContext._current = VaultSecretsContext(vault)
    try:
        with _captured_parse_warnings(warnings):
            inv = InventoryManager(loader=loader, sources=list(sources))
        variables = VariableManager(loader=loader, inventory=inv)
        if limit:
            inv.subset(limit)
        picked = inv.get_hosts(pattern="all")
        if not picked:
            what = f"--limit {limit!r} matches no host" if limit else "no hosts"
            raise MhopsError(f"{what} in inventory {', '.join(sources)}")
        hosts, secrets = [], set()
        for h in picked:
            allvars = variables.get_vars(host=h, include_hostvars=False)
            templar = Templar(loader=loader, variables=allvars)
            wanted = {k: v for k, v in allvars.items() if k.startswith(_PREFIXES)}
            origins: dict[str, tuple[str | None, int | None]] = {}
            for k, v in wanted.items():
                _walk_origins(k, v, origins)
            templated = {k: _plain(templar.template(v)) for k, v in wanted.items()}
            groups = tuple(sorted(g.name for g in h.get_groups()
                                  if g.name not in ("all", "ungrouped")))
            hosts.append(Host(name=h.name, groups=groups, vars=templated, origins=origins))
            secrets.update(str(v) for k, v in templated.items()
                           if (k.startswith("vault_") or k in _SECRET_KEYS)
                           and isinstance(v, (str, int)))
    except AnsibleError as exc:
        raise _error(exc, warnings) from exc
    return Selection(sources=tuple(sources), limit=limit, hosts=tuple(hosts),
                     secrets=frozenset(secrets))


def _plain(value: Any) -> Any:
    """Strip Ansible's tagged types so values serialise and compare as plain Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


@dataclass(frozen=True)
class SshParams:
    """What Fabric needs to reach a host the way Ansible would."""

    host: str
    port: int
    user: str
    key_filename: str | None
    known_hosts: tuple[str, ...]
    host_key_checking: bool
    python: str
    become: str | None


def ssh_params(host: Host) -> SshParams:
    """Translate Ansible connection variables for Fabric (paramiko)."""
    v = host.vars
    known: list[str] = []
    global_known = ["/etc/ssh/ssh_known_hosts"]
    extra = " ".join(str(v.get(k, "")) for k in ("ansible_ssh_common_args",
                                                 "ansible_ssh_extra_args"))
    words = shlex.split(extra)
    for i, w in enumerate(words):
        opt = w[2:] if w.startswith("-o") and len(w) > 2 else (
            words[i + 1] if w == "-o" and i + 1 < len(words) else "")
        name, _, val = opt.partition("=")
        if name.lower() == "userknownhostsfile":
            known.extend(os.path.expanduser(p) for p in val.split())
        elif name.lower() == "globalknownhostsfile":
            global_known = [os.path.expanduser(p) for p in val.split()]
    if not known:  # OpenSSH's defaults apply only when no UserKnownHostsFile is given
        known.append(os.path.expanduser("~/.ssh/known_hosts"))
    known = [k for k in known + global_known if os.path.isfile(k)]
    python = str(v.get("ansible_python_interpreter") or "python3")
    if python.startswith("auto"):
        python = "python3"
    become = None
    if v.get("ansible_become"):
        method = v.get("ansible_become_method", "sudo")
        if method != "sudo":
            raise MhopsError(f"host {host.name}: become method {method!r} is not supported by "
                             "the fabric transport; use --transport ansible")
        become = str(v.get("ansible_become_user", "root"))
    return SshParams(
        host=str(v.get("ansible_host", host.name)),
        port=int(v.get("ansible_port", 22)),
        user=str(v.get("ansible_user") or os.environ.get("USER", "root")),
        key_filename=v.get("ansible_ssh_private_key_file"),
        known_hosts=tuple(dict.fromkeys(known)),
        host_key_checking=bool(v.get("ansible_host_key_checking", True)),
        python=python,
        become=become,
    )


def testinfra_host(host: Host, sources: tuple[str, ...] | list[str]):
    """A Testinfra host for post-condition checks, resolved from the same inventory.

    SSH hosts go through Testinfra's ansible backend, which reuses ansible.cfg's
    ``control_path`` so every check rides one kept SSH connection.
    """
    import testinfra

    if host.local:
        return testinfra.get_host("local://")
    # Testinfra only uses the control path when its folder already exists.
    Path("~/.ansible/cp").expanduser().mkdir(parents=True, exist_ok=True, mode=0o700)
    return testinfra.get_host(f"ansible://{host.name}", ansible_inventory=str(sources[0]))
