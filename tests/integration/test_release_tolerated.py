"""`max_fail_percentage`: a failure the operator tolerates rolls back only that host.

Two hosts (localhost and one loopback SSH host) in one batch with
`max_fail_percentage 50`: 1.1.0 fails its health check on localhost only (the sample
app's per-host `config/fail-<version>` marker), so 1 of 2 hosts failing is within the
limit. localhost goes back to 1.0.0 and serves it, the other host keeps 1.1.0, the
upgrade record says so (outcome succeeded, note tolerated, exit 1) and the rollback
record gives the reason `tolerated_failure`. Without the tolerance the same failure
rolls back both hosts.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from demo.sample_app import build, fleet
from mhops import releases

pytestmark = pytest.mark.ssh


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if not Path("/usr/sbin/sshd").exists():
        pytest.fail("openssh-server is not installed: run the tests with `invoke test`")
    from mhops.lab import SshLab

    root = tmp_path_factory.mktemp("reltol")
    art = root / "artifacts"
    build.build("1.0.0", art)
    for v in ("1.1.0", "1.2.0"):
        build.build(v, art, like="1.0.0")
    comps: dict = {}
    try:
        with SshLab(root / "lab", 1, first_octet=67, prefix="mhv") as lab:
            inv, comps = fleet.write_inventory(lab, root)
            yield {"root": root, "inv": inv, "comps": comps, "art": art}
    finally:
        fleet.stop_services(comps)


def _upgrade(env, version: str, **kw):
    lines: list[str] = []
    out = releases.upgrade(releases.UpgradeOptions(
        inventory=[str(env["inv"])], records_dir=env["root"] / "records",
        state_dir=env["root"] / "state", component="sample", version=version,
        artifacts_dir=env["art"], verify_window_s=6, serial=0, operator="测试员",
        echo=lines.append, **kw))
    out.lines = lines
    return out


def _served(env, host: str) -> str | None:
    try:
        with urllib.request.urlopen(env["comps"][host]["version_url"], timeout=3) as r:
            return json.loads(r.read())["version"]
    except OSError:
        return None


def _mark_broken(env, host: str, version: str) -> None:
    config = Path(env["comps"][host]["app_root"]) / "shared" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / f"fail-{version}").write_text("this host fails the health check\n")


def test_install_both(env):
    out = _upgrade(env, "1.0.0")
    assert out.exit_code == 0, out.lines
    assert {h: _served(env, h) for h in env["comps"]} == dict.fromkeys(env["comps"], "1.0.0")


def test_failure_within_the_limit_rolls_back_only_that_host(env):
    _mark_broken(env, "localhost", "1.1.0")
    out = _upgrade(env, "1.1.0", max_fail_percentage=50)
    assert out.exit_code == 1, out.lines
    rec = out.record
    assert (rec["outcome"], rec["note"], rec["status"]) == ("succeeded", "tolerated", "warning")
    per = {h["host"]: h for h in rec["per_host"]}
    other = next(h for h in env["comps"] if h != "localhost")
    assert per["localhost"]["outcome"] == "rolled_back"
    assert per[other]["outcome"] != "rolled_back"
    assert _served(env, "localhost") == "1.0.0" and _served(env, other) == "1.1.0"
    rb = json.loads((env["root"] / "records" / rec["execution"]["rollback_run_id"] /
                     "record.json").read_text())
    assert (rb["reason"], rb["outcome"], rb["hosts"]) == ("tolerated_failure", "rolled_back",
                                                          ["localhost"])


def test_same_failure_beyond_the_limit_rolls_back_every_host(env):
    _mark_broken(env, "localhost", "1.2.0")
    out = _upgrade(env, "1.2.0", max_fail_percentage=0)
    assert out.exit_code == 2, out.lines
    assert out.record["outcome"] == "rolled_back"
    other = next(h for h in env["comps"] if h != "localhost")
    assert _served(env, "localhost") == "1.0.0" and _served(env, other) == "1.1.0"
