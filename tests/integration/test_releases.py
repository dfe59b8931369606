"""invoke upgrade / rollback / versions over localhost and 3 loopback SSH hosts (octet 63).

One fleet for the module, in the order an operator would meet it: first install of
1.0.0; `--check` of 2.0.0 changes nothing; 1.0.0 -> 2.0.0 succeeds with a complete
record; 2.0.0 -> 3.0.0 (health fails after start) rolls back by itself; a run killed
between unpack and switch never leaves `current` invalid and the next run finishes
its rollback; cleanup with keep=2 never removes the live release; a manual rollback.
The sample component is served by gunicorn (graceful reload on HUP).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import FAKE_ID, REPO, no_leak

from demo.sample_app import build, fleet
from mhops import release_verify as rv
from mhops import releases
from mhops.records import parse_time

pytestmark = pytest.mark.ssh
SECRET = "Plant3dS3cret-42"
INVOKE = Path(sys.executable).parent / "invoke"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    from mhops.lab import SshLab

    root = tmp_path_factory.mktemp("rel")
    art = root / "artifacts"
    for v in ("1.0.0", "3.0.0"):
        build.build(v, art)
    build.build("2.0.0", art, changes=[
        "排队记录增加支付渠道字段", f"患者 {FAKE_ID} 的排队显示修复",
        f"db url postgresql://app:{SECRET}@127.0.0.1/q"])
    build.build("2.1.0", art, like="2.0.0", changes=["小修复"])
    build.build("2.2.0", art, like="2.0.0", changes=["小修复二"])
    with SshLab(root / "lab", 3, first_octet=63, prefix="api") as lab:
        inv, comps = fleet.write_inventory(lab, root)
        e = Env(root, inv, comps, art)
        try:
            yield e
        finally:
            fleet.stop_services(comps)


class Env:
    def __init__(self, root: Path, inv: Path, comps: dict, art: Path):
        self.root, self.inv, self.comps, self.art = root, inv, comps, art
        self.records, self.state = root / "records", root / "state"
        self.hosts = sorted(comps)

    def opts(self, version: str, **kw) -> releases.UpgradeOptions:
        kw.setdefault("serial", 2)
        return releases.UpgradeOptions(
            inventory=[str(self.inv)], records_dir=self.records, state_dir=self.state,
            component="sample", version=version, artifacts_dir=self.art,
            verify_window_s=kw.pop("verify_window_s", 10), operator="测试员",
            echo=lambda s: None, **kw)

    def served(self, host: str) -> str | None:
        import urllib.request

        try:
            with urllib.request.urlopen(self.comps[host]["version_url"], timeout=3) as r:
                return json.loads(r.read())["version"]
        except OSError:
            return None

    def current(self, host: str) -> Path:
        return Path(self.comps[host]["app_root"]) / "current"

    def invoke(self, *args: str, **popen) -> subprocess.Popen:
        envv = dict(os.environ, INVOKE_MHOPS_RECORDS_DIR=str(self.records),
                    INVOKE_MHOPS_STATE_DIR=str(self.state),
                    INVOKE_RELEASE_ARTIFACTS_DIR=str(self.art),
                    INVOKE_RELEASE_INVENTORY=str(self.inv),
                    INVOKE_RELEASE_VERIFY_WINDOW_S="10", INVOKE_RELEASE_SERIAL="2",
                    **popen.pop("env", {}))
        return subprocess.Popen([str(INVOKE), "-r", str(REPO), *args], env=envv,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                **popen)

    def applied(self, host: str) -> list[str]:
        import sqlite3

        with sqlite3.connect(self.comps[host]["database"]) as db:
            return [r[0] for r in db.execute("SELECT id FROM mhops_schema_migrations "
                                             "ORDER BY id")]

    def columns(self, host: str) -> list[str]:
        import sqlite3

        with sqlite3.connect(self.comps[host]["database"]) as db:
            return [r[1] for r in db.execute("PRAGMA table_info(appointments_queue)")]


def newest(records: Path, kind: str) -> Path:
    """The newest run folder of `kind`; a second run in the same second gets a "-2" suffix."""
    return max(p for p in records.iterdir() if re.search(rf"Z-{kind}(-\d+)?$", p.name))


def tree(root: Path) -> dict[str, str]:
    """Every path under `root`: type, link target or content hash, mode and mtime."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                what = "link:" + os.readlink(p)
            elif p.is_file():
                what = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = "dir"
            out[str(p.relative_to(root))] = f"{what} {oct(st.st_mode)} {st.st_mtime_ns}"
    return out


def test_first_install_of_1_0_0(env):
    out = releases.upgrade(env.opts("1.0.0"))
    assert out.exit_code == 0, out.record["execution"]
    assert out.record["outcome"] == "succeeded" and out.record["version_from"] is None
    for h in env.hosts:
        assert env.served(h) == "1.0.0"
        assert env.applied(h) == ["0001_appointments_queue"]


def test_check_changes_nothing(env):
    before = {h: tree(Path(env.comps[h]["app_root"])) for h in env.hosts}
    p = env.invoke("upgrade", "--component", "sample", "--version", "2.0.0", "--check",
                   "--rollback-plan", "--lang", "en")
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    assert "rollback plan" in text and "$ ln -sfn releases/1.0.0-" in text
    after = {h: tree(Path(env.comps[h]["app_root"])) for h in env.hosts}
    assert after == before
    assert all(env.served(h) == "1.0.0" for h in env.hosts)
    plan = json.loads(sorted(env.records.glob("*-upgrade-plan"))[-1].joinpath(
        "record.json").read_text())
    assert plan["check_mode"] and plan["outcome"] == "planned"


def test_v1_to_v2_succeeds_with_complete_record(env):
    out = releases.upgrade(env.opts("2.0.0"))
    r = out.record
    assert out.exit_code == 0, r["execution"]
    assert (r["kind"], r["outcome"], r["version_from"], r["version_to"]) == \
        ("upgrade", "succeeded", "1.0.0", "2.0.0")
    assert sorted(r["hosts"]) == env.hosts
    for key in ("schema_version", "run_id", "lang", "status", "exit_code", "time", "operator",
                "headline", "content", "modules_changed", "execution", "impact", "risk",
                "plan", "per_host"):
        assert r.get(key) not in (None, ""), key
    assert r["operator"] == "测试员" and r["time"]["started_local"]
    assert r["content"]["changes"] and r["content"]["migrations"] == ["0002_queue_channel"]
    assert "migrations/" in r["modules_changed"]["modules"]
    assert [s["step"] for s in r["execution"]["steps"]][:2] == ["risk_assessment", "deploy"]
    assert r["execution"]["batches"] == [env.hosts[:2], env.hosts[2:]]
    assert r["impact"]["services"] and r["impact"]["groups"] == {"api": r["hosts"]}
    assert r["impact"]["failed_health_polls"] == 0
    assert r["risk"]["level"] in ("low", "medium", "high") and r["risk"]["reasons"]
    # write_run adds "-2" when another run's folder has the same second (the --check
    # test's plan, just before): failed CI once.
    assert re.search(r"-upgrade-plan(-\d+)?$", r["plan"]["plan_run_id"]), r["plan"]
    assert {p["host"] for p in r["plan"]["hosts"]} == set(env.hosts)
    assert all(p["target_version"] == "1.0.0" and p["steps"] for p in r["plan"]["hosts"])
    # The plan record was published before the deploy started.
    plan_dir = env.records / r["plan"]["plan_run_id"]
    plan = json.loads((plan_dir / "record.json").read_text())
    assert parse_time(plan["time"]["finished_utc"]) <= parse_time(
        r["execution"]["steps"][1]["started"])
    assert {h["outcome"] for h in r["per_host"]} == {"upgraded"}
    assert all(h["backup"] for h in r["per_host"])
    for h in env.hosts:
        assert env.served(h) == "2.0.0"
        assert env.applied(h) == ["0001_appointments_queue", "0002_queue_channel"]
    for f in ("record.md", "record.html"):
        assert "升级记录" in (out.record_dir / f).read_text()
    no_leak([env.records], FAKE_ID, SECRET)


@pytest.mark.parametrize("check", rv.CHECKS)
def test_v2_post_condition_passed(env, check):
    rec = json.loads(newest(env.records, "upgrade").joinpath(
        "record.json").read_text())
    got = [c for v in rec["execution"]["verification"] for c in v["checks"]
           if c["check"] == check]
    assert len(got) == len(env.hosts) and all(c["ok"] for c in got), got


def test_v2_to_v3_rolls_back_automatically(env):
    heard = []

    def listener(record, record_dir):
        heard.append((record["kind"], record["outcome"], record_dir))
    releases.add_rollback_listener(listener)
    try:
        out = releases.upgrade(env.opts("3.0.0", verify_window_s=6))
    finally:
        releases._ROLLBACK_LISTENERS.remove(listener)
    r = out.record
    assert [(k, o) for k, o, _ in heard] == [("rollback", "rolled_back")]
    assert heard[0][2].name == r["execution"]["rollback_run_id"]
    assert out.exit_code == 2 and r["outcome"] == "rolled_back", r["execution"]
    first = r["execution"]["batches"][0]
    failed = [v for v in r["execution"]["verification"] if v["phase"] == "upgrade"]
    assert {v["host"] for v in failed} == set(first) and not any(v["ok"] for v in failed)
    assert all(v["ok"] for v in r["execution"]["verification"] if v["phase"] == "rollback")
    assert r["execution"]["rollback_run_id"]
    rb = json.loads((env.records / r["execution"]["rollback_run_id"] / "record.json")
                    .read_text())
    assert (rb["kind"], rb["outcome"], rb["version_from"], rb["version_to"]) == \
        ("rollback", "rolled_back", "3.0.0", "2.0.0")
    assert sorted(rb["hosts"]) == sorted(first) and rb["headline"]
    for h in env.hosts:
        assert env.served(h) == "2.0.0"
        assert env.applied(h) == ["0001_appointments_queue", "0002_queue_channel"]
        assert "channel" in env.columns(h)
        assert os.readlink(env.current(h)).startswith("releases/2.0.0-")
    for h in first:
        assert any(p.name.startswith("3.0.0-")
                   for p in (Path(env.comps[h]["app_root"]) / "archive").iterdir())


def _descendants(pid: int) -> list[int]:
    tree_: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            tree_.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(tree_.get(p, []))
    return out


def test_run_killed_between_unpack_and_switch(env):
    failures: list[str] = []
    polls = [0]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for h in env.hosts:
                res = subprocess.run(["readlink", "-e", str(env.current(h))],
                                     capture_output=True, text=True)
                polls[0] += 1
                if res.returncode != 0 or not res.stdout.strip():
                    failures.append(h)
            time.sleep(0.02)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        p = env.invoke("upgrade", "--component", "sample", "--version", "2.1.0",
                       env={"INVOKE_RELEASE_SWITCH_DELAY_S": "120"})
        first = Path(env.comps[env.hosts[0]]["app_root"]) / "releases"
        deadline = time.monotonic() + 180
        while not any(d.name.startswith("2.1.0-") for d in first.iterdir()):
            assert p.poll() is None, p.stdout.read()
            assert time.monotonic() < deadline, "the release was never unpacked"
            time.sleep(0.1)
        pids = _descendants(p.pid)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGSTOP)
            except ProcessLookupError:
                pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        time.sleep(1)
        assert (env.state / "releases" / "sample.journal.json").exists()
        assert all(env.served(h) == "2.0.0" for h in env.hosts)

        nxt = env.invoke("upgrade", "--component", "sample", "--version", "2.1.0")
        text, _ = nxt.communicate(timeout=300)
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert polls[0] > 50 and not failures, f"readlink -e current failed on {failures[:5]}"
    assert nxt.returncode == 2, text
    assert "finishing its rollback" in text
    rb = json.loads(newest(env.records, "rollback").joinpath(
        "record.json").read_text())
    assert rb["reason"] == "recovery" and rb["outcome"] == "rolled_back"
    assert not (env.state / "releases" / "sample.journal.json").exists()
    for h in env.hosts:
        assert env.served(h) == "2.0.0"
        rel = Path(env.comps[h]["app_root"]) / "releases"
        assert not any(d.name.startswith(("2.1.0-", ".2.1.0-")) for d in rel.iterdir())


def test_ctrl_c_rolls_back_and_exits_non_zero(env):
    p = env.invoke("upgrade", "--component", "sample", "--version", "2.1.0",
                   env={"INVOKE_RELEASE_SWITCH_DELAY_S": "120"})
    first = Path(env.comps[env.hosts[0]]["app_root"]) / "releases"
    deadline = time.monotonic() + 180
    while not any(d.name.startswith("2.1.0-") for d in first.iterdir()):
        assert p.poll() is None, p.stdout.read()
        assert time.monotonic() < deadline, "the release was never unpacked"
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 2, text
    rb = json.loads(newest(env.records, "rollback").joinpath(
        "record.json").read_text())
    assert rb["reason"] == "automatic" and "interrupted" in rb["trigger"]
    assert rb["outcome"] == "rolled_back"
    assert not (env.state / "releases" / "sample.journal.json").exists()
    for h in env.hosts:
        assert env.served(h) == "2.0.0"
        assert os.readlink(env.current(h)).startswith("releases/2.0.0-")


def test_cleanup_never_removes_the_live_release(env):
    for v in ("2.1.0", "2.2.0"):
        out = releases.upgrade(env.opts(v, keep=2, serial=0))
        assert out.exit_code == 0, out.record["execution"]
    for h in env.hosts:
        app = Path(env.comps[h]["app_root"])
        names = sorted(d.name for d in (app / "releases").iterdir())
        live = os.readlink(app / "current").split("/")[-1]
        assert live.startswith("2.2.0-") and live in names
        assert len(names) == 2 and any(n.startswith("2.1.0-") for n in names)
        assert (app / "current").resolve().is_dir()
        actions = [json.loads(x)["action"]
                   for x in (app / "revisions.log").read_text().splitlines()]
        assert actions.count("deploy") >= 4
        if h in env.hosts[:2]:  # the batch 3.0.0 failed on keeps it archived, not deleted
            assert any(d.name.startswith("3.0.0-") for d in (app / "archive").iterdir())
            assert actions.count("rollback") >= 1


def test_manual_rollback_and_versions(env):
    p = env.invoke("rollback", "--component", "sample", "--lang", "en")
    text, _ = p.communicate(timeout=300)
    assert p.returncode == 0, text
    rb = json.loads(newest(env.records, "rollback").joinpath(
        "record.json").read_text())
    assert (rb["reason"], rb["outcome"], rb["version_to"]) == ("manual", "rolled_back", "2.1.0")
    assert all(env.served(h) == "2.1.0" for h in env.hosts)
    lines = []
    rows = releases.versions([str(env.inv)], "sample", echo=lines.append)
    assert {r["host"] for r in rows} == set(env.hosts)
    assert all(r["live"] == "2.1.0" and r["deployed_at"] for r in rows)
    table = env.invoke("versions", "--component", "sample")
    out, _ = table.communicate(timeout=120)
    assert table.returncode == 0, out
    assert all(h in out for h in env.hosts) and "2.1.0" in out, out


def test_downgrade_refused_and_high_risk_needs_yes(env):
    before = {h: tree(Path(env.comps[h]["app_root"])) for h in env.hosts}
    out = releases.upgrade(env.opts("1.0.0"))
    assert out.exit_code == 2 and out.record["outcome"] == "failed"
    assert any("--allow-downgrade" in b for b in out.record["risk"]["blocking"])
    out = releases.upgrade(env.opts("1.0.0", allow_downgrade=True))
    assert out.exit_code == 1 and out.record["outcome"] == "planned"
    assert out.record["risk"]["level"] == "high" and out.record["note"] == "needs_yes"
    assert {h: tree(Path(env.comps[h]["app_root"])) for h in env.hosts} == before


def test_second_upgrade_of_the_same_component_is_locked_out(env):
    from mhops import state

    with state.locked(env.state, "release-sample"):
        p = env.invoke("upgrade", "--component", "sample", "--version", "2.2.0")
        text, _ = p.communicate(timeout=120)
    assert p.returncode == 3 and "another release-sample run" in text
