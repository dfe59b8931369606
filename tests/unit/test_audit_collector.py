"""The security audit collector's auth log cursor, run as a plain module."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LIB = Path(__file__).resolve().parents[2] / "library" / "mhops_security_audit.py"


@pytest.fixture(scope="module")
def col():
    spec = importlib.util.spec_from_file_location("mhops_security_audit", LIB)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(col, path, cursor, initial="start", limit=1 << 20):
    return col.read_auth_log(str(path), cursor, initial, limit)


def test_append_rotation_and_truncation(col, tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("a 1\na 2\npartial")
    lines, cur, notes = _read(col, log, None)
    assert lines == ["a 1", "a 2"] and not notes["cursor_reset"]  # no half line
    with log.open("a") as fh:
        fh.write(" line\nb 1\n")
    lines, cur, _ = _read(col, log, cur)
    assert lines == ["partial line", "b 1"]
    with log.open("a") as fh:
        fh.write("c 1\n")
    os.replace(log, tmp_path / "auth.log.1")  # logrotate: rename, new file
    log.write_text("d 1\n")
    lines, cur, notes = _read(col, log, cur)
    assert lines == ["c 1", "d 1"] and notes["rotated"] and not notes["cursor_reset"]
    log.write_text("e 1\n")  # truncated in place (copytruncate) and shorter
    lines, cur, notes = _read(col, log, cur)
    assert lines == ["e 1"] and notes["cursor_reset"]


def test_initial_position_end_skips_history(col, tmp_path):
    log = tmp_path / "secure"
    log.write_text("old\n")
    lines, cur, _ = _read(col, log, None, initial="end")
    assert lines == []
    with log.open("a") as fh:
        fh.write("new\n")
    assert _read(col, log, cur)[0] == ["new"]


def test_read_limit_leaves_the_rest_for_next_time(col, tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("".join(f"line {i:03d}\n" for i in range(100)))
    seen, cur = [], None
    for _ in range(30):
        lines, cur, notes = _read(col, log, cur, limit=95)
        seen += lines
        if not lines:
            break
    assert seen == [f"line {i:03d}" for i in range(100)]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.from_regex(r"[a-z0-9 ]{0,20}", fullmatch=True), max_size=5),
                min_size=1, max_size=6))
def test_every_line_read_exactly_once(col, tmp_path_factory, chunks):
    log = tmp_path_factory.mktemp("c") / "auth.log"
    log.write_text("")
    cur, seen, written = None, [], []
    for chunk in chunks:
        with log.open("a") as fh:
            for line in chunk:
                fh.write(line + "\n")
        written += chunk
        lines, cur, _ = _read(col, log, cur)
        seen += lines
    assert seen == written


def test_world_writable_skips_sticky_folders_and_links(col, tmp_path):
    app = tmp_path / "app"
    (app / "shared").mkdir(parents=True)
    (app / "shared").chmod(0o1777)
    (app / "open").mkdir()
    (app / "open").chmod(0o777)
    f = app / "f.txt"
    f.write_text("x")
    f.chmod(0o646)
    (app / "link").symlink_to("/tmp")
    got = col.world_writable([str(app), str(tmp_path / "missing")], 1000)
    assert sorted(p["path"] for p in got["paths"]) == [str(app / "f.txt"), str(app / "open")]
    assert any("missing" in e for e in got["errors"])


def test_sshd_config_fallback_follows_include_first_value_wins(col, tmp_path):
    inc = tmp_path / "inc.conf"
    inc.write_text("PasswordAuthentication no\n")
    cfg = tmp_path / "sshd_config"
    cfg.write_text(f"Include {inc}\nPasswordAuthentication yes\nPermitRootLogin no\n"
                   "Match User x\n  PermitRootLogin yes\n")
    values = col._sshd_config_file(str(cfg))
    assert values["passwordauthentication"] == "no" and values["permitrootlogin"] == "no"
