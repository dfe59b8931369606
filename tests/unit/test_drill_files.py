"""The drill's side of the backup folder contract: names, latest, manifests, .in-use marks."""

from __future__ import annotations

import os
import string
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhops import drill_files as df

NAMES = st.text(string.ascii_letters + string.digits + "_.-", min_size=1, max_size=20)
STAMPS = st.builds(lambda d: d.strftime("%Y%m%dT%H%M%SZ"),
                   st.datetimes(min_value=datetime(2000, 1, 1)))
EXTS = st.sampled_from(["dump", "sql", "sql.gz"])


@given(NAMES, STAMPS, EXTS)
def test_backup_names_round_trip(name, stamp, ext):
    assert df.parse_name(f"{name}-{stamp}.{ext}") == (name, stamp, ext)
    assert df.manifest_name(f"{name}-{stamp}.{ext}") == f"{name}-{stamp}.manifest.json"


@given(st.lists(st.tuples(STAMPS, EXTS, st.booleans()), max_size=8))
def test_latest_is_the_newest_stamp_with_a_manifest(backups):
    files = []
    for stamp, ext, complete in backups:
        files.append(f"pg-{stamp}.{ext}")
        if complete:
            files.append(f"pg-{stamp}.manifest.json")
    complete = [s for s, _, c in backups if c]
    got = df.pick_latest(files, "pg")
    if not complete:
        assert got is None
    else:
        assert df.parse_name(got)[1] == max(complete)


def test_locate_and_manifest(tmp_path):
    folder = tmp_path / "pg"
    folder.mkdir()
    (folder / "pg-20260101T000000Z.dump").write_bytes(b"x")
    (folder / "pg-20260101T000000Z.manifest.json").write_text("{}")
    (folder / "pg-20260201T000000Z.dump").write_bytes(b"y")  # still being written
    path = df.locate("latest", str(folder), "pg")
    assert path == str(folder / "pg-20260101T000000Z.dump")
    assert df.manifest_of(path) == (str(folder / "pg-20260101T000000Z.manifest.json"), "")
    manifest, problem = df.manifest_of(str(folder / "pg-20260201T000000Z.dump"))
    assert manifest is None and "incomplete" in problem
    with pytest.raises(df.BackupNotFound, match="no complete backup of my"):
        df.locate("latest", str(folder), "my")
    with pytest.raises(df.BackupNotFound, match="does not exist"):
        df.locate(str(folder / "gone-20260101T000000Z.dump"), "", "")
    with pytest.raises(df.BackupNotFound, match="cannot list"):
        df.locate("latest", str(tmp_path / "nope"), "pg")


def test_marks_are_counted_per_drill(tmp_path):
    df.mark(str(tmp_path), "a.dump")
    df.mark(str(tmp_path), "a.dump")  # a second drill of the same backup
    df.mark(str(tmp_path), "b.dump")
    assert df.in_use_lines(str(tmp_path)) == ["a.dump", "a.dump", "b.dump"]
    assert oct(os.stat(tmp_path / ".in-use").st_mode & 0o777) == "0o644"
    assert df.release(str(tmp_path), "a.dump") is True
    assert df.in_use_lines(str(tmp_path)) == ["a.dump", "b.dump"]
    assert df.release(str(tmp_path), "c.dump") is False
    df.release(str(tmp_path), "a.dump")
    df.release(str(tmp_path), "b.dump")
    assert not (tmp_path / ".in-use").exists()
