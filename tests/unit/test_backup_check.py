"""The pure backup-checking rules: age, size anomaly, footers, manifests, retention."""

from __future__ import annotations

import gzip
import importlib.util
import statistics

import pytest
from conftest import REPO
from hypothesis import given
from hypothesis import strategies as st

from mhops import backup, records
from mhops.errors import MhopsError


def _files_module():
    spec = importlib.util.spec_from_file_location(
        "mhops_backup_files", REPO / "roles/mhops_backup/library/mhops_backup_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("age, expected", [(0.5, "normal"), (25.99, "normal"), (26, "warning"),
                                           (49.9, "warning"), (50, "critical"),
                                           (None, "critical")])
def test_age_against_rpo(age, expected):
    assert backup.age_status(age, 26, 50) == expected


def test_size_shrink_is_an_anomaly_growth_is_not():
    prev = [1000, 1010, 990, 1005, 995, 1]  # only the last 5 count; the 1 is an old outlier
    assert backup.size_anomaly(1000, prev)[0] == "normal"
    assert backup.size_anomaly(5000, prev)[0] == "normal"
    assert backup.size_anomaly(499, [1000] * 5) == ("warning", 0.499)
    assert backup.size_anomaly(199, [1000] * 5)[0] == "critical"
    assert backup.size_anomaly(500, [1000] * 5)[0] == "normal"
    assert backup.size_anomaly(0, [1000])[0] == "critical"
    assert backup.size_anomaly(100, []) == ("unknown", None)
    assert backup.size_anomaly(100, [0, 0]) == ("unknown", None)


@given(prev=st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=12),
       newest=st.integers(min_value=0, max_value=10**12))
def test_size_anomaly_property(prev, newest):
    status, ratio = backup.size_anomaly(newest, prev, warning=0.5, critical=0.2, window=5)
    median = statistics.median(prev[-5:])
    assert ratio == pytest.approx(newest / median)
    # An anomaly exactly when the newest is below half the median of the last five.
    assert (status != "normal") == (newest < 0.5 * median)
    assert (status == "critical") == (newest < 0.2 * median)
    # Older history beyond the window never changes the verdict.
    if len(prev) >= 5:
        assert backup.size_anomaly(newest, [7] * 20 + prev[-5:])[0] == \
            backup.size_anomaly(newest, prev[-5:])[0]


@given(prev=st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=8),
       a=st.integers(min_value=0, max_value=10**9), b=st.integers(min_value=0, max_value=10**9))
def test_a_bigger_backup_is_never_judged_worse(prev, a, b):
    rank = {"normal": 0, "warning": 1, "critical": 2}
    small, big = sorted((a, b))
    assert rank[backup.size_anomaly(big, prev)[0]] <= rank[backup.size_anomaly(small, prev)[0]]


MARIADB_END = (b"/*!40111 SET SQL_NOTES=@OLD_SQL_NOTES */;\n\n"
               b"-- Dump completed on 2026-11-28  5:17:04\n")
PG_END = (b"--\n-- PostgreSQL database dump complete\n--\n\n"
          b"\\unrestrict vKfaww6SjOoka4Lfmkt3Mwk\n\n")


def test_footer_detection():
    assert backup.has_footer(b"INSERT ...;\n" + MARIADB_END, "mariadb")
    assert backup.has_footer(MARIADB_END + b"\n\n  \n", "mariadb")
    assert not backup.has_footer(b"INSERT INTO t VALUES (1),(2", "mariadb")
    assert not backup.has_footer(b"", "mariadb")
    # The phrase inside data, followed by more statements, is not the footer.
    assert not backup.has_footer(b"INSERT INTO m VALUES ('-- Dump completed');\nINSERT", "mariadb")
    assert backup.has_footer(PG_END, "postgresql")
    assert backup.has_footer(b"--\n-- PostgreSQL database dump complete\n--\n", "postgresql")
    assert not backup.has_footer(b"COPY public.t (id) FROM stdin;\n1\n2\n", "postgresql")
    assert not backup.has_footer(MARIADB_END, "postgresql")


def test_manifest_comparison():
    m = {"file": "a-20260101T000000Z.sql", "size": 10, "sha256": "ab" * 32}
    ok = {"basename": m["file"], "size": 10, "sha256": "ab" * 32, "ours": True}
    assert backup.compare_manifest(m, **ok)[0] == "normal"
    assert backup.compare_manifest(m, **dict(ok, sha256="cd" * 32))[0] == "critical"
    assert backup.compare_manifest(m, **dict(ok, size=9))[0] == "critical"
    assert backup.compare_manifest(m, **dict(ok, basename="b.sql"))[0] == "critical"
    assert backup.compare_manifest(None, **ok) == ("critical",
                                                   "no manifest: the backup is incomplete")
    status, why = backup.compare_manifest(None, **dict(ok, ours=False))
    assert status == "unknown" and "not applicable" in why
    assert backup.compare_manifest({"file": m["file"]}, **ok)[0] == "unknown"


def test_levels_and_times():
    assert backup.level_status(0, {"warning": 1, "critical": 10}) == "normal"
    assert backup.level_status(3, {"warning": 1, "critical": 10}) == "warning"
    assert backup.level_status(10, {"warning": 1, "critical": 10}) == "critical"
    assert backup.delta_seconds("0:01:02.500000") == 62.5
    assert backup.delta_seconds(None) is None
    assert records.parse_time("2026-01-01T00:00:00Z").tzinfo is not None
    assert records.parse_time("garbage") is None


def test_integrity_of_files(tmp_path):
    empty = tmp_path / "a.sql"
    empty.write_bytes(b"")
    assert backup.integrity(empty, "mariadb")[0] == "critical"
    good = tmp_path / "b.sql.gz"
    good.write_bytes(gzip.compress(b"INSERT ...;\n" + MARIADB_END * 1))
    assert backup.integrity(good, "mariadb")[0] == "normal"
    cut = tmp_path / "c.sql.gz"
    cut.write_bytes(good.read_bytes()[:-12])
    status, why = backup.integrity(cut, "mariadb")
    assert status == "critical" and "truncated" in why
    fake_pg = tmp_path / "d.dump"
    fake_pg.write_bytes(b"PGDMP" + b"\x00" * 40)
    assert backup.integrity(fake_pg, "postgresql")[0] == "critical"


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(MhopsError, match="rpo_hours"):
        backup.check(backup.CheckOptions(records_dir=tmp_path, rpo_hours={"warning": -1}))
    with pytest.raises(MhopsError, match="wrong order"):
        backup.check(backup.CheckOptions(records_dir=tmp_path,
                                         size_shrink={"warning": 0.1, "critical": 0.5}))
    with pytest.raises(MhopsError, match="bad regex"):
        backup.check(backup.CheckOptions(records_dir=tmp_path, log_patterns={"e": "("}))
    with pytest.raises(MhopsError, match="does not exist"):
        backup.external_target(str(tmp_path / "nope"), "*.sql")
    with pytest.raises(MhopsError, match="keep"):
        backup.run(backup.RunOptions(inventory=[], records_dir=tmp_path, state_dir=tmp_path,
                                     keep=0))
    assert not any(tmp_path.iterdir())


def _b(stamp, good=True):
    return {"stamp": stamp, "file": f"x-{stamp}.sql", "good": good}


def test_retention_plan():
    plan = _files_module().retention_plan
    bs = [_b(f"2026010{i}T000000Z") for i in range(1, 7)]
    names = lambda d: [b["stamp"][:8] for b in d]  # noqa: E731
    assert names(plan(bs, 3, set())) == ["20260103", "20260102", "20260101"]
    assert names(plan(bs, 3, {"x-20260102T000000Z.sql"})) == ["20260103", "20260101"]
    assert names(plan(bs, 3, {"x-20260101T000000Z"})) == ["20260103", "20260102"]
    assert names(plan(bs, 3, set(), assume_new=True)) == ["20260104", "20260103", "20260102",
                                                         "20260101"]
    # The newest good backup survives keep=0 and a newer incomplete one.
    with_bad = [*bs, _b("20260109T000000Z", good=False)]
    kept = {b["stamp"] for b in with_bad} - {b["stamp"] for b in plan(with_bad, 0, set())}
    assert "20260106T000000Z" in kept and "20260109T000000Z" in kept
    assert plan(with_bad, 1, set(), assume_new=True)[0]["stamp"] == "20260105T000000Z"


@given(st.lists(st.booleans(), min_size=1, max_size=15), st.integers(0, 10),
       st.sets(st.integers(0, 14)), st.booleans())
def test_retention_never_deletes_newest_good_or_in_use(goods, keep, in_use_idx, assume_new):
    mod = _files_module()
    bs = [_b(f"202601{i + 10:02d}T000000Z", g) for i, g in enumerate(goods)]
    in_use = {bs[i]["file"] for i in in_use_idx if i < len(bs)}
    deleted = mod.retention_plan(bs, keep, in_use, assume_new)
    good = [b for b in bs if b["good"]]
    assert all(b["good"] for b in deleted)
    assert not {b["file"] for b in deleted} & in_use
    if good:
        assert max(good, key=lambda b: b["stamp"]) not in deleted
        assert len(good) - len(deleted) >= min(len(good), max(1, keep - assume_new))
