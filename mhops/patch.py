"""Security and package updates: ``invoke patch``.

Owns the patch run: select the hosts, hold the patch lock, survey every host's
pending updates through the ``mhops_patch`` role (ansible-runner), show the plan,
confirm it, apply it batch by batch (``serial``) with exactly the planned versions,
verify each batch's expected services, processes and ports (the inspection settings
of its group) with Testinfra before the next batch starts, and write the patch
record (packages before -> after, security-flagged ones, reboots, verification).
``--check`` stops after the survey: the package lists are not even refreshed.
Parsing the package managers' output is ``mhops.pkgupdates``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mhops import pkgupdates, records, state
from mhops import thresholds as th
from mhops.errors import MhopsError
from mhops.inventory import Host, Selection, select, testinfra_host
from mhops.redact import Redactor

SCHEMA_VERSION = 1
PLAYBOOK = "playbooks/patch.yml"

_TEXT = {
    "zh-CN": {
        "checked": "补丁检查：{hosts} 台主机待更新 {total} 个软件包（安全更新 {security} 个），"
                   "未做任何变更",
        "nothing": "补丁：{hosts} 台主机均无待更新软件包",
        "patched": "补丁完成：{hosts} 台主机更新 {upgraded} 个软件包（安全更新 {security} 个），"
                   "需重启 {reboot} 台，已重启 {rebooted} 台",
        "failed": "补丁失败：{failed} 台主机失败或验证未通过，已停止后续批次；"
                  "{upgraded} 个软件包已更新",
        "reboot_pending": "主机需要重启才能使更新生效，本次未允许重启（使用 --reboot）",
        "not_attempted": "前一批次失败，本主机未更新：处理失败原因后重新执行 invoke patch",
        "fix_failed": "查看错误信息：软件包锁被占用时等待其他 apt/dpkg 任务结束；"
                      "中断的事务用 dpkg --configure -a 或 --repair 修复；验证失败时检查相关服务。",
    },
    "en": {
        "checked": "Patch check: {total} pending updates ({security} security) on {hosts} "
                   "hosts; nothing was changed",
        "nothing": "Patch: no pending updates on {hosts} hosts",
        "patched": "Patched {upgraded} packages ({security} security) on {hosts} hosts; "
                   "reboot needed on {reboot}, rebooted {rebooted}",
        "failed": "Patch failed on {failed} hosts (failure or verification); later batches "
                  "were not started; {upgraded} packages were upgraded",
        "reboot_pending": "the host needs a reboot for the updates to take effect; rebooting "
                          "was not allowed (use --reboot)",
        "not_attempted": "an earlier batch failed, so this host was not patched: fix that "
                         "failure, then run invoke patch again",
        "fix_failed": "Read the error: wait for another apt/dpkg run holding the lock; repair an "
                      "interrupted transaction with dpkg --configure -a or --repair; check the "
                      "services when verification failed.",
    },
}


@dataclass
class Options:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    limit: str | None = None
    check: bool = False
    security_only: bool = False
    serial: int = 1
    reboot: bool = False
    repair: bool = False
    yes: bool = False
    lock_timeout: float | None = None  # None: the role's mhops_patch_lock_timeout
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    forks: int = 10
    vault_password_file: str | None = None
    verify: bool = True
    echo: Callable[[str], None] = print
    confirm: Callable[[str], bool] | None = None


@dataclass
class HostPatch:
    host: Host
    survey: dict[str, Any] | None = None
    error: str = ""
    updates: list[pkgupdates.Update] = field(default_factory=list)
    chosen: list[pkgupdates.Update] = field(default_factory=list)
    apply: dict[str, Any] | None = None
    rebooted: bool = False
    outcome: str = "pending"
    verification: list[dict[str, Any]] = field(default_factory=list)
    batch: int | None = None


def run(opts: Options) -> records.Outcome:
    if isinstance(opts.serial, bool) or not isinstance(opts.serial, int) or opts.serial < 0:
        raise MhopsError(f"patch.serial must be a non-negative integer, got {opts.serial!r}")
    records.labels(opts.lang)
    started = records.utc_now()
    selection = select(opts.inventory, opts.limit, opts.vault_password_file)
    redactor = Redactor(secrets=selection.secrets)
    shown = opts.echo
    opts = replace(opts, echo=lambda line: shown(redactor.text(line)))
    patches = {h.name: HostPatch(h) for h in selection.hosts}
    with state.locked(opts.state_dir, "patch"):
        _survey(selection, patches, opts, redactor)
        _show_plan(patches, opts)
        work = [p for p in patches.values() if p.chosen and not p.error]
        if not opts.check and work:
            if not (opts.yes or (opts.confirm and opts.confirm(_question(work, opts.lang)))):
                raise MhopsError("the plan was not confirmed; nothing was changed (confirm "
                                 "with --yes, or look first with --check)")
            _apply_batches(selection, work, opts, redactor)
        record = build_record(selection, patches, opts, started)
        run_dir = records.write_run(opts.records_dir, "patch", record, redactor)
    opts.echo(record["headline"])
    opts.echo(str(run_dir))
    return records.Outcome(record["exit_code"], run_dir, record)


def _extravars(opts: Options, **more: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"mhops_patch_security_only": bool(opts.security_only),
                          "mhops_patch_reboot": bool(opts.reboot),
                          "mhops_patch_repair": bool(opts.repair)}
    if opts.lock_timeout is not None:
        ev["mhops_patch_lock_timeout"] = float(opts.lock_timeout)
    ev.update(more)
    return ev


def _report(outcome) -> tuple[dict[str, Any] | None, str]:
    """The role's final debug message for one host, or the reason there is none."""
    msg = outcome.result.get("msg") if outcome and outcome.status == "ok" else None
    if isinstance(msg, dict):
        return msg, ""
    return None, outcome.message if outcome else "no result from Ansible"


def _survey(selection: Selection, patches: dict[str, HostPatch], opts: Options,
            redactor: Redactor) -> None:
    from mhops import runner

    outcomes: dict[str, Any] = {}
    runner.run_playbook(PLAYBOOK, inventory=opts.inventory, limit=",".join(selection.names),
                        extravars=_extravars(opts, mhops_patch_plan_only=True,
                                             mhops_patch_serial=0),
                        forks=opts.forks, task_action="ansible.builtin.debug",
                        redactor=redactor, on_host=lambda o: outcomes.__setitem__(o.host, o))
    for name, p in patches.items():
        report, why = _report(outcomes.get(name))
        survey = (report or {}).get("survey") or {}
        if report is None or survey.get("error"):
            p.error, p.outcome = survey.get("error") or why, "failed"
            continue
        p.survey = survey
        p.updates = _parse_survey(survey)
        p.chosen = pkgupdates.select(p.updates, opts.security_only)
        p.outcome = "planned" if p.chosen else "up_to_date"


def _parse_survey(survey: dict[str, Any]) -> list[pkgupdates.Update]:
    if survey.get("manager") == "apt":
        return pkgupdates.parse_apt_simulation(survey.get("simulation") or "")
    if survey.get("manager") in ("dnf", "yum"):
        sec = pkgupdates.parse_dnf_security(survey.get("security_list") or "")
        return pkgupdates.parse_dnf_check_update(survey.get("simulation") or "", sec)
    return []


def _show_plan(patches: dict[str, HostPatch], opts: Options) -> None:
    en = opts.lang == "en"
    for p in patches.values():
        if p.error:
            opts.echo(f"{p.host.name}: {'survey failed' if en else '检查失败'}: {p.error}")
            continue
        s = pkgupdates.summarize(p.updates)
        opts.echo(f"{p.host.name}: {s['total']} {'pending' if en else '个待更新'}, "
                  f"{s['security']} {'security' if en else '个安全更新'}, "
                  f"{len(p.chosen)} {'planned' if en else '个计划更新'}")
        for u in p.chosen[:50]:
            mark = " [security]" if u.security else ""
            opts.echo(f"  {u.name} {u.current or '-'} -> {u.candidate}{mark}")
        if len(p.chosen) > 50:
            opts.echo(f"  ... +{len(p.chosen) - 50}")
    if opts.check:
        opts.echo("(check mode: nothing was changed)" if en else "（检查模式：未做任何变更）")


def _question(work: list[HostPatch], lang: str) -> str:
    n = sum(len(p.chosen) for p in work)
    if lang == "en":
        return f"Upgrade {n} packages on {len(work)} hosts? [y/N] "
    return f"在 {len(work)} 台主机上更新 {n} 个软件包？[y/N] "


def _batches(items: list[HostPatch], serial: int) -> list[list[HostPatch]]:
    size = serial or len(items) or 1
    return [items[i:i + size] for i in range(0, len(items), size)]


def _apply_batches(selection: Selection, work: list[HostPatch], opts: Options,
                   redactor: Redactor) -> None:
    from mhops import runner

    for number, batch in enumerate(_batches(work, opts.serial), start=1):
        plan = {p.host.name: [f"{u.name}={u.candidate}" for u in p.chosen] for p in batch}
        outcomes: dict[str, Any] = {}
        keep = outcomes.__setitem__
        opts.echo(f"batch {number}: {', '.join(plan)}")
        runner.run_playbook(PLAYBOOK, inventory=opts.inventory, limit=",".join(plan),
                            extravars=_extravars(opts, mhops_patch_plan_only=False,
                                                 mhops_patch_serial=0,
                                                 mhops_patch_plan=plan),
                            forks=opts.forks, task_action="ansible.builtin.debug",
                            redactor=redactor,
                            on_host=lambda o, keep=keep: keep(o.host, o))
        ok = True
        for p in batch:
            p.batch = number
            report, why = _report(outcomes.get(p.host.name))
            p.apply = (report or {}).get("apply") or None
            p.rebooted = bool((report or {}).get("rebooted"))
            error = (p.apply or {}).get("error") or ("" if report else why)
            if error:
                p.error, p.outcome, ok = error, "failed", False
                continue
            if opts.verify:
                p.verification = verify(p.host, selection.sources)
            p.outcome = "patched" if all(v["ok"] for v in p.verification) else "unverified"
            ok = ok and p.outcome == "patched"
            opts.echo(f"  {p.host.name}: {p.outcome}")
        if not ok:
            for p in work:
                if p.batch is None:
                    p.outcome = "not_attempted"
            return


def verify(host: Host, sources: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    """The group's expected services, processes and ports (its inspection settings)."""
    from mhops.inspect_config import collector_args

    args, _ = collector_args(host)
    if not (args["services"] or args["processes"] or args["ports"]):
        return []
    t = testinfra_host(host, sources)
    out: list[dict[str, Any]] = []
    procs = t.process.filter() if args["services"] or args["processes"] else []
    for name in args["services"]:
        running = any(p.comm == name or Path(str(p.args).split(" ")[0]).name == name
                      for p in procs)
        out.append({"check": "service", "target": name, "ok": running})
    for spec in args["processes"]:
        rx = re.compile(spec["match"])
        n = sum(1 for p in procs if rx.search(str(p.args)) or rx.search(str(p.comm)))
        out.append({"check": "process", "target": spec["name"], "ok": n > 0, "value": n})
    if args["ports"]:
        listening = {s.rsplit(":", 1)[-1] for s in t.socket.get_listening_sockets()
                     if s.startswith("tcp://")}
        for port in args["ports"]:
            out.append({"check": "port", "target": str(port), "ok": str(port) in listening})
    return out


def _versions(text: str | None) -> dict[str, str]:
    return pkgupdates.parse_dpkg_query(text or "")


def _host_entry(p: HostPatch, opts: Options) -> dict[str, Any]:
    t = _TEXT.get(opts.lang, _TEXT["en"])
    after = _versions((p.apply or {}).get("after"))
    before = _versions((p.apply or {}).get("before"))
    packages = []
    for u in p.chosen:
        packages.append({"name": u.name, "before": before.get(u.name, u.current),
                         "candidate": u.candidate, "after": after.get(u.name),
                         "security": u.security, "origins": list(u.origins),
                         "action": u.action,
                         "upgraded": bool(after.get(u.name)) and after.get(u.name) == u.candidate})
    reboot = (p.apply or p.survey or {}).get("reboot") or {}
    required = bool(reboot.get("required"))
    status = th.NORMAL
    if p.outcome in ("failed", "unverified"):
        status = th.CRITICAL
    elif p.outcome == "not_attempted":
        status = th.WARNING  # its updates are still pending after this run
    elif required and not p.rebooted and not opts.check:
        status = th.WARNING
    s = pkgupdates.summarize(p.updates)
    return {
        "host": p.host.name, "groups": list(p.host.groups),
        "manager": (p.survey or {}).get("manager"),
        "outcome": p.outcome, "status": status, "batch": p.batch,
        "error": p.error or None,
        "resolution": t["fix_failed"] if status == th.CRITICAL else (
            t["not_attempted"] if p.outcome == "not_attempted" else (
                t["reboot_pending"] if status == th.WARNING else "")),
        "pending": s,
        "interrupted_transaction": pkgupdates.audit_problems((p.survey or {}).get("audit", "")),
        "packages": packages,
        "security_flagged": [u.name for u in p.chosen if u.security],
        "upgraded": sum(1 for x in packages if x["upgraded"]),
        "lock_waited_s": (p.apply or {}).get("waited_s"),
        "repair_output": (p.apply or {}).get("repair") or None,
        "reboot": {"required": required, "packages": reboot.get("packages") or [],
                   "allowed": bool(opts.reboot), "done": p.rebooted},
        "verification": p.verification,
        "verified": (all(v["ok"] for v in p.verification)
                     if p.outcome in ("patched", "unverified") else None),
    }


def build_record(selection: Selection, patches: dict[str, HostPatch], opts: Options,
                 started) -> dict[str, Any]:
    hosts = [_host_entry(p, opts) for p in patches.values()]
    statuses = [h["status"] for h in hosts]
    failed = sum(1 for h in hosts if h["status"] == th.CRITICAL)
    summary = {
        "hosts": len(hosts),
        "pending": sum(h["pending"]["total"] for h in hosts),
        "security": sum(h["pending"]["security"] for h in hosts),
        "planned": sum(len(h["packages"]) for h in hosts),
        "upgraded": sum(h["upgraded"] for h in hosts),
        "security_upgraded": sum(1 for h in hosts for x in h["packages"]
                                 if x["upgraded"] and x["security"]),
        "failed": failed,
        "reboot_required": sum(1 for h in hosts if h["reboot"]["required"]),
        "rebooted": sum(1 for h in hosts if h["reboot"]["done"]),
    }
    if failed:
        outcome = "failed"
    elif opts.check:
        outcome = "checked"
    elif not summary["planned"]:
        outcome = "nothing_to_do"
    else:
        outcome = "patched"
    t = _TEXT.get(opts.lang, _TEXT["en"])
    key = {"checked": "checked", "nothing_to_do": "nothing", "patched": "patched",
           "failed": "failed"}[outcome]
    headline = t[key].format(hosts=len(hosts), total=summary["pending"],
                             security=(summary["security"] if opts.check
                                       else summary["security_upgraded"]),
                             upgraded=summary["upgraded"], failed=failed,
                             reboot=summary["reboot_required"], rebooted=summary["rebooted"])
    finished = records.utc_now()
    return {
        "schema_version": SCHEMA_VERSION, "kind": "patch",
        "run_id": records.run_id("patch", started), "lang": opts.lang,
        "status": th.worst(statuses), "exit_code": th.exit_code(statuses),
        "time": records.time_block(started, finished, opts.timezone),
        "operator": records.operator_name(opts.operator),
        "check_mode": bool(opts.check),
        "scope": {"inventory": list(selection.sources), "limit": selection.limit,
                  "hosts": selection.names, "groups": selection.groups},
        "settings": {"serial": opts.serial, "security_only": bool(opts.security_only),
                     "reboot": bool(opts.reboot), "repair": bool(opts.repair)},
        "batches": [[h["host"] for h in hosts if h["batch"] == b]
                    for b in sorted({h["batch"] for h in hosts if h["batch"]})],
        "hosts": hosts,
        "summary": summary,
        "outcome": outcome,
        "headline": headline,
        "ops_revision": records.ops_revision(),
    }


def cases(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One test case per host (the patch) and per verification check, for exporters.

    Each is ``{suite, host, name, status, value, message}`` with ``status`` one of
    normal/warning/critical/unknown; a warning or critical case is a failure.
    """
    out = []
    for h in record.get("hosts") or []:
        out.append({"suite": "patch", "host": h["host"], "name": "patch",
                    "status": h["status"], "value": h.get("upgraded"),
                    "message": " ".join(filter(None, (h.get("outcome"), h.get("error"),
                                                      h.get("resolution"))))})
        for v in h.get("verification") or []:
            out.append({"suite": "patch", "host": h["host"],
                        "name": f"verify {v['check']} {v['target']}",
                        "status": th.NORMAL if v["ok"] else th.CRITICAL, "value": v.get("value"),
                        "message": ""})
    return out
