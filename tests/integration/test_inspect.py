"""`invoke inspect` end to end over real SSH: counting, rotation, redaction, exit codes."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from conftest import FAKE_ID, FAKE_MOBILE, REPO, log_count, make_workspace, no_leak, results

from mhops.errors import LockedError, MhopsError


def _error_lines(n, tag="x"):
    return [f"2026-11-28 04:00:0{i % 10} ERROR payment callback {tag}{i} patient "
            f"id={FAKE_ID} mobile={FAKE_MOBILE} Authorization: Bearer sk-live-abcdef123456"
            for i in range(n)]


@pytest.mark.parametrize("transport", ["fabric", "ansible"])
def test_three_hosts_counted_once_redacted_and_rotation_safe(ws, run_inspect, transport):
    ws.write("lab1", *_error_lines(3), "INFO all good", "WARN request timed out")
    first = run_inspect(transport, keep_artifacts=True)
    rec = first.record
    assert [h["host"] for h in rec["hosts"]] == ["lab1", "lab2", "lab3"]
    assert all(h["reachable"] for h in rec["hosts"])
    assert log_count(rec, "lab1") == 3 and log_count(rec, "lab1", "timeout") == 1
    assert log_count(rec, "lab2") == 0 and log_count(rec, "lab3") == 0
    assert first.exit_code == 1  # log matches >= warning (1)
    sample = results(rec, "lab1", "log_matches")[0]["samples"]
    assert sample and "[REDACTED:id]" in sample[0]
    kept = [first.record_dir] + ([ws.records / ".artifacts"] if transport == "ansible" else [])
    if transport == "ansible":  # the runner's events are on disk, redacted
        assert list((ws.records / ".artifacts").rglob("job_events/*.json"))
    no_leak(kept, FAKE_ID, FAKE_MOBILE, "sk-live-abcdef123456")
    assert FAKE_ID not in "\n".join(first.lines)

    # Nothing new: nothing counted twice.
    second = run_inspect(transport)
    assert log_count(second.record, "lab1") == 0
    assert second.exit_code == 0

    # Lines written before and after a rotation are each counted exactly once.
    ws.write("lab1", *_error_lines(2, "before"))
    ws.rotate("lab1")
    ws.write("lab1", *_error_lines(4, "after"))
    third = run_inspect(transport)
    assert log_count(third.record, "lab1") == 6
    assert not results(third.record, "lab1", "log")  # no cursor loss reported
    fourth = run_inspect(transport)
    assert log_count(fourth.record, "lab1") == 0


def test_low_threshold_gives_critical_and_exit_2(tmp_path, lab, run_inspect):
    w = make_workspace(tmp_path / "custom", lab, hostvars={"lab2": {
        "mhops_inspect_threshold_overrides": {"disk_percent": {"warning": 0, "critical": 0}}}})
    out = run_inspect(workspace=w)
    assert out.exit_code == 2
    disk = results(out.record, "lab2", "disk_percent")
    assert disk and all(r["status"] == "critical" for r in disk)
    assert all(r["resolution"] for r in disk)
    assert {h["host"]: h["status"] for h in out.record["hosts"]}["lab1"] == "normal"
    assert any(e["host"] == "lab2" and e["check"] == "disk_percent"
               for e in out.record["events"])


@pytest.mark.parametrize("transport", ["fabric", "ansible"])
def test_unreachable_host_is_recorded_and_others_complete(tmp_path, lab, run_inspect,
                                                          transport):
    gone = lab.unreachable_host("gone")
    w = make_workspace(tmp_path / "custom", lab, extra_hosts=[gone])
    out = run_inspect(transport, workspace=w)
    assert out.exit_code == 2
    by = {h["host"]: h for h in out.record["hosts"]}
    assert by["gone"]["reachable"] is False and by["gone"]["status"] == "critical"
    assert results(out.record, "gone", "reachable")[0]["status"] == "critical"
    assert all(by[n]["reachable"] and by[n]["status"] == "normal"
               for n in ("lab1", "lab2", "lab3"))
    assert out.record["summary"]["hosts_unreachable"] == 1
    assert any(e["host"] == "gone" for e in out.record["events"])


def test_missing_log_is_bad_input_nothing_written(ws, run_inspect):
    ws.write("lab1", *_error_lines(1))
    run_inspect()
    before = {p.name: p.read_text() for p in (ws.state / "cursors").iterdir()}
    runs_before = ws.runs()
    ws.log("lab2").unlink()
    ws.write("lab1", *_error_lines(2))
    with pytest.raises(MhopsError, match=r"host lab2: log file .*app.log: missing") as err:
        run_inspect()
    assert err.value.exit_code == 3
    assert ws.runs() == runs_before
    assert not [p for p in ws.records.iterdir() if p.name.startswith(".")]
    assert {p.name: p.read_text() for p in (ws.state / "cursors").iterdir()} == before
    ws.log("lab2").touch()
    # the lines written during the failed run are counted by the next good one
    assert log_count(run_inspect().record, "lab1") == 2


def test_second_inspection_waits_for_the_lock(ws, run_inspect):
    from mhops import state

    with state.locked(ws.state, "inspect"), pytest.raises(LockedError,
                                                           match="in progress") as err:
        run_inspect()
    assert err.value.exit_code == 3


@pytest.mark.parametrize("transport", ["fabric", "ansible"])
def test_hung_collector_ends_at_the_timeout(tmp_path, lab, run_inspect, transport):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    port = srv.getsockname()[1]
    conns = []
    threading.Thread(target=lambda: conns.append(srv.accept()), daemon=True).start()
    w = make_workspace(tmp_path / "custom", lab, hostvars={"lab3": {
        "mhops_inspect_command_timeout": 60, "mhops_inspect_timeout": 3,
        "mhops_inspect_http": [{"name": "hang", "url": f"http://127.0.0.1:{port}/"}]}})
    t0 = time.monotonic()
    out = run_inspect(transport, workspace=w)
    assert time.monotonic() - t0 < 20
    by = {h["host"]: h for h in out.record["hosts"]}
    assert by["lab3"]["status"] == "critical"
    assert "timed out" in by["lab3"]["error"].lower(), by["lab3"]["error"]
    assert by["lab1"]["status"] == "normal"
    assert out.exit_code == 2
    srv.close()


def test_invoke_cli_exit_codes_and_english(ws, lab):
    env = {"INVOKE_MHOPS_RECORDS_DIR": str(ws.records), "INVOKE_MHOPS_STATE_DIR": str(ws.state),
           "PATH": "/usr/bin:/bin", "HOME": str(ws.root)}
    invoke = [sys.executable, "-m", "invoke"]
    ok = subprocess.run([*invoke, "inspect", "-i", str(ws.inventory), "--lang", "en",
                         "--limit", "lab1"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "lab1" in ok.stdout and "Overall result: normal" in ok.stdout
    run = ws.runs()[-1]
    assert "System inspection record" in (run / "record.md").read_text()
    bad = subprocess.run([*invoke, "inspect", "-i", str(ws.inventory), "--limit", "nosuch"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3 and "matches no host" in bad.stderr


def test_plain_ansible_playbook_runs_unchanged_and_saves_cursors(ws):
    """The playbook as AWX or a person would run it, no invoke involved."""
    ws.write("lab2", *_error_lines(2))
    ansible = REPO / ".venv" / "bin" / "ansible-playbook"
    ansible = ansible if ansible.exists() else "ansible-playbook"
    cmd = [str(ansible), "-i", str(ws.inventory), str(REPO / "playbooks" / "inspect.yml"),
           "-e", json.dumps({"mhops_inspect_state_dir": str(ws.state)})]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    cursors = json.loads((ws.state / "cursors" / "lab2.json").read_text())
    assert cursors[str(ws.log("lab2"))]["offset"] == ws.log("lab2").stat().st_size
    assert yaml.safe_load((REPO / "playbooks" / "inspect.yml").read_text())


@pytest.mark.parametrize("breakage", ["missing", "unreadable"])
def test_bad_log_stops_run_names_file(ws, run_inspect, breakage):
    log = ws.log("lab3")
    log.unlink()
    if breakage == "unreadable":
        log.mkdir()  # root reads any mode-000 file; a directory really cannot be read
    with pytest.raises(MhopsError, match=f"host lab3: log file {log}") as err:
        run_inspect()
    assert err.value.exit_code == 3
    assert not ws.records.exists() or not ws.runs()
    assert not (ws.state / "cursors").exists()


def test_vault_values_are_decrypted_and_never_written(ws, run_inspect):
    secret = "Zq7-vault-only-value-9"
    pw = ws.root / "vault-pass"
    pw.write_text("test-vault-password\n")
    vault = REPO / ".venv" / "bin" / "ansible-vault"
    enc = subprocess.run([str(vault if vault.exists() else "ansible-vault"), "encrypt_string",
                          "--vault-password-file", str(pw), secret, "--name",
                          "vault_callback_secret"], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    (ws.inventory / "host_vars").mkdir()
    (ws.inventory / "host_vars" / "lab1.yml").write_text(enc)
    ws.write("lab1", f"ERROR callback signature check used {secret} and failed")
    with pytest.raises(MhopsError, match="vault"):
        run_inspect()  # no password given: a clear error, not a crash
    out = run_inspect(vault_password_file=str(pw))
    assert log_count(out.record, "lab1") == 1
    no_leak([out.record_dir], secret)
    assert secret not in "\n".join(out.lines)


@pytest.mark.parametrize("transport", ["fabric", "ansible"])
def test_unknown_host_key_is_refused(tmp_path, lab, run_inspect, transport, clean_cp):
    """Host key checking stays on: a host whose key is not known is not trusted."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    w = make_workspace(tmp_path / "custom", lab, hostvars={"lab2": {
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={empty} -o StrictHostKeyChecking=yes"
                                   " -o GlobalKnownHostsFile=/dev/null"}})
    out = run_inspect(transport, workspace=w)
    by = {h["host"]: h for h in out.record["hosts"]}
    assert by["lab2"]["reachable"] is False, by["lab2"]
    assert by["lab1"]["reachable"] and by["lab3"]["reachable"]
    assert out.exit_code == 2
