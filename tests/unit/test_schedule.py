"""What `invoke schedule.install` writes, and the input it refuses."""

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mhops import schedule
from mhops.errors import MhopsError

REPO = Path(__file__).resolve().parents[2]


def _plan(tmp_path, kind="cron", when="30 7 * * *"):
    return schedule.plan(kind=kind, when=when, user="root", log=tmp_path / "log/inspect.log",
                         invoke_args=["-i", "/srv/inv/hospital"],
                         cron_file=tmp_path / "mhops-inspect", systemd_dir=tmp_path / "sd")


def test_cron_file_content_and_mode(tmp_path):
    plan = _plan(tmp_path)
    written = schedule.install(plan, tmp_path / "log/inspect.log")
    path = tmp_path / "mhops-inspect"
    assert written == [path]
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and "=" not in
             ln.split()[0]]
    assert len(lines) == 1
    fields = lines[0].split(None, 6)
    assert fields[:6] == ["30", "7", "*", "*", "*", "root"]
    command = fields[6]
    assert f"cd {REPO} && " in command
    assert "/invoke inspect -i /srv/inv/hospital" in command
    assert command.endswith(f">> {tmp_path}/log/inspect.log 2>&1")
    assert text.endswith("\n")  # cron ignores a last line without a newline
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert (tmp_path / "log").is_dir()
    assert schedule.show([path])[path] == text
    assert schedule.remove([path]) == [path] and not path.exists()


def test_the_scheduled_command_really_runs(tmp_path):
    """The command cron would run, run through /bin/sh as cron does, reaches invoke."""
    plan = schedule.plan(kind="cron", when="@daily", user="root", log=tmp_path / "i.log",
                         invoke_args=["--help"], cron_file=tmp_path / "x",
                         systemd_dir=tmp_path)
    command = plan.files[tmp_path / "x"].splitlines()[-1].split(None, 2)[2]
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=60,
                   env={"PATH": "/usr/bin:/bin"})
    assert "inspect" in (tmp_path / "i.log").read_text()


def test_systemd_units(tmp_path):
    plan = _plan(tmp_path, kind="systemd", when="30 7 * * *")
    service = plan.files[tmp_path / "sd/mhops-inspect.service"]
    timer = plan.files[tmp_path / "sd/mhops-inspect.timer"]
    assert "Type=oneshot" in service and "invoke inspect -i /srv/inv/hospital" in service
    assert "OnCalendar=*-*-* 7:30:00" in timer and "Persistent=true" in timer


@pytest.mark.parametrize("when", ["* * * *", "61 * * * *", "* 24 * * *", "* * * foo *",
                                  "*/x * * * *", "rm -rf / #"])
def test_bad_cron_expressions(when, tmp_path):
    with pytest.raises(MhopsError, match="schedule"):
        _plan(tmp_path, when=when)


@pytest.mark.parametrize("when", ["*/15 * * * *", "0 8 * * mon-fri", "0 8,20 1 jan *",
                                  "@hourly"])
def test_good_cron_expressions(when, tmp_path):
    assert _plan(tmp_path, when=when)


def test_refuses_to_overwrite_or_remove_foreign_files(tmp_path):
    foreign = tmp_path / "mhops-inspect"
    foreign.write_text("0 0 * * * root something-else\n")
    with pytest.raises(MhopsError, match="not managed by mhops"):
        schedule.install(_plan(tmp_path), tmp_path / "log/inspect.log")
    with pytest.raises(MhopsError, match="not managed by mhops"):
        schedule.remove([foreign])
    assert foreign.read_text() == "0 0 * * * root something-else\n"


def test_dotted_cron_file_name_is_refused(tmp_path):
    with pytest.raises(MhopsError, match="must not contain a dot"):
        schedule.plan(kind="cron", when="@daily", user="root", log=tmp_path / "l",
                      invoke_args=[], cron_file=tmp_path / "mhops.cron", systemd_dir=tmp_path)


def test_invoke_schedule_tasks_check_mode(tmp_path):
    invoke = Path(sys.executable).parent / "invoke"
    out = subprocess.run([str(invoke), "schedule.install", "--check", "--when", "5 6 * * *"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "5 6 * * * root" in out.stdout and "nothing written" in out.stdout
    bad = subprocess.run([str(invoke), "schedule.install", "--check", "--when", "99 * * * *"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 3 and "outside 0-59" in bad.stderr
