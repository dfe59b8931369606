"""Log counting in the collector: every matching line counted exactly once.

Real files in tmp_path, written, rotated, compressed and truncated the way
applications and logrotate do it; the collector is loaded from its file the way
Ansible and the SSH path use it.
"""

import bz2
import gzip
import lzma
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
from conftest import load_collector
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

COLLECTOR = Path(__file__).resolve().parents[2] / "library" / "mhops_collect.py"
PATTERNS = {"error": "ERROR", "timeout": "timed out"}


mc = load_collector("mhops_collect_under_test")


class AppLog:
    """A log written like an application writes it and rotated like logrotate does."""

    def __init__(self, path: Path):
        self.path = path
        self.seq = 0
        self.matches = 0
        path.touch()

    def _lines(self, k, text):
        out = []
        for _ in range(k):
            self.seq += 1
            out.append(f"2026-11-28T10:00:{self.seq:06d} app[42]: {text} #{self.seq}\n")
        return "".join(out)

    def error(self, k=1, to=None):
        self.matches += k
        self._append(to or self.path, self._lines(k, "ERROR db call failed"))

    def noise(self, k=1, to=None):
        self._append(to or self.path, self._lines(k, "INFO request served"))

    def raw(self, text, to=None):
        self._append(to or self.path, text)

    @staticmethod
    def _append(path, text):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)

    def sibling(self, suffix):
        return self.path.with_name(self.path.name + suffix)

    def shift(self, keep=5):
        """Move .N(.gz) to .N+1(.gz), dropping what falls beyond keep."""
        for n in range(keep, 0, -1):
            for ext in ("", ".gz"):
                src = self.sibling(f".{n}{ext}")
                if src.exists():
                    if n == keep:
                        src.unlink()
                    else:
                        src.rename(self.sibling(f".{n + 1}{ext}"))

    def rotate(self, compress=False, delaycompress=False, keep=5):
        self.shift(keep)
        self.path.rename(self.sibling(".1"))
        self.path.touch()
        self._compress_after_rotation(compress, delaycompress)

    def copytruncate(self, compress=False, delaycompress=False, keep=5):
        self.shift(keep)
        shutil.copyfile(self.path, self.sibling(".1"))
        os.truncate(self.path, 0)
        self._compress_after_rotation(compress, delaycompress)

    def _compress_after_rotation(self, compress, delaycompress):
        if delaycompress and self.sibling(".2").exists():
            gzip_file(self.sibling(".2"))
        elif compress and not delaycompress:
            gzip_file(self.sibling(".1"))


def gzip_file(path: Path, suffix=".gz", opener=gzip.open):
    target = path.with_name(path.name + suffix)
    with open(path, "rb") as src, opener(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


def run(path, cursors=None, patterns=PATTERNS, **extra):
    """One full collector run reading one log; returns (log entry, cursors)."""
    args = {"cpu_sample_seconds": 0, "system_logs": "none", "cursors": cursors or {},
            "logs": [{"path": str(path), "kind": "app", "patterns": patterns}]}
    args.update(extra)
    result = mc.collect(args)
    assert result["errors"] == []
    return result["logs"][0], result["cursors"]


def errors_seen(entry):
    return entry["counts"]["error"]


@pytest.fixture
def log(tmp_path):
    return AppLog(tmp_path / "app.log")


def test_counts_then_only_new_lines(log):
    log.error(3)
    log.noise(2)
    log.raw("2026-11-28 worker timed out waiting for db\n")
    entry, cursors = run(log.path)
    assert entry["counts"] == {"error": 3, "timeout": 1}
    assert entry["lines_read"] == 6
    assert entry["bytes_read"] == log.path.stat().st_size
    assert entry["samples"]["error"][-1].endswith("#3")
    assert len(entry["samples"]["error"]) == 3
    assert (entry["error"], entry["rotated"], entry["cursor_reset"], entry["backlog"]) == \
        (None, False, False, False)
    assert set(cursors[str(log.path)]) == {"dev", "ino", "offset", "head_len", "head_sha1"}

    entry, cursors = run(log.path, cursors)
    assert entry["counts"] == {"error": 0, "timeout": 0}
    assert entry["bytes_read"] == 0

    log.error(2)
    entry, cursors = run(log.path, cursors)
    assert entry["counts"] == {"error": 2, "timeout": 0}
    assert entry["samples"]["error"][-1].endswith("#7")


def test_samples_keep_the_most_recent_and_are_cut(log):
    log.raw("x" * 1000 + " ERROR long\n")
    log.error(4)
    entry, _ = run(log.path, max_samples=2)
    assert entry["counts"]["error"] == 5
    assert [s[-2:] for s in entry["samples"]["error"]] == ["#3", "#4"]
    entry, _ = run(log.path, max_samples=5)
    assert len(entry["samples"]["error"][0]) == 400


def test_rename_rotation_counts_old_and_new_file_once(log):
    log.error(2)
    entry, cursors = run(log.path)
    assert errors_seen(entry) == 2
    log.error(2)  # after the last run, before rotation
    log.rotate()
    log.error(1, to=log.sibling(".1"))  # the writer had not reopened yet
    log.error(3)  # the new file
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 6
    assert entry["rotated"] and not entry["cursor_reset"]
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 0 and not entry["rotated"]


def test_rotated_twice_between_runs(log):
    log.error(1)
    _, cursors = run(log.path)
    log.error(2)
    log.rotate()
    log.error(3)
    log.rotate()
    log.error(4)
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 9
    assert entry["rotated"] and not entry["cursor_reset"]
    log.error(1)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 1


@pytest.mark.parametrize("mode", ["compress", "delaycompress"])
def test_rotated_and_compressed(log, mode):
    log.error(1)
    _, cursors = run(log.path)
    log.error(2)
    log.rotate(compress=True, delaycompress=(mode == "delaycompress"))
    log.error(1)
    log.rotate(compress=True, delaycompress=(mode == "delaycompress"))
    log.error(3)
    if mode == "compress":
        assert log.sibling(".1.gz").exists() and log.sibling(".2.gz").exists()
    else:
        assert log.sibling(".1").exists() and log.sibling(".2.gz").exists()
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 6
    assert entry["rotated"] and not entry["cursor_reset"]
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 0


@pytest.mark.parametrize(("suffix", "opener"), [(".bz2", bz2.open), (".xz", lzma.open)])
def test_other_compressors(log, suffix, opener):
    log.error(1)
    _, cursors = run(log.path)
    log.error(2)
    log.rotate()
    gzip_file(log.sibling(".1"), suffix, opener)
    log.error(1)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 3 and not entry["cursor_reset"]


def test_copytruncate(log):
    log.error(2)
    _, cursors = run(log.path)
    log.error(3)
    log.copytruncate()
    log.error(1)
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 4
    assert entry["rotated"] and not entry["cursor_reset"]
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 0


def test_copytruncate_compressed_and_twice(log):
    log.error(2)
    _, cursors = run(log.path)
    log.error(3)
    log.copytruncate(compress=True)
    log.error(1)
    log.copytruncate(compress=True)
    log.error(5)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 9 and not entry["cursor_reset"]


def test_truncated_without_copy_is_a_possible_loss(log):
    log.error(2)
    _, cursors = run(log.path)
    log.error(3)  # lost: truncated before anyone read it
    os.truncate(log.path, 0)
    log.error(1)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 1
    assert entry["rotated"] and entry["cursor_reset"]


def test_empty_log_then_copytruncate(log):
    # An empty file has no content to recognise after copytruncate.
    _, cursors = run(log.path)
    log.error(2)
    log.copytruncate()
    log.error(1)
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 3
    log.error(1)
    log.copytruncate()
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 1
    entry, cursors = run(log.path, cursors)  # empty live file, nothing rotated since
    assert errors_seen(entry) == 0 and not entry["rotated"]
    log.error(2)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 2 and not entry["rotated"]


def test_partial_last_line_counted_once_complete(log):
    log.error(1)
    log.raw("2026-11-28 ERROR half writ")
    entry, cursors = run(log.path)
    assert errors_seen(entry) == 1 and entry["lines_read"] == 1
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 0
    log.raw("ten line\n")
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 1
    assert entry["samples"]["error"] == ["2026-11-28 ERROR half written line"]
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 0


def test_partial_line_left_in_a_rotated_file_is_counted(log):
    log.error(1)
    log.raw("2026-11-28 ERROR cut by rotation")
    _, cursors = run(log.path)
    log.rotate()
    log.error(1)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 2


def test_dateext_rotation(log):
    log.error(1)
    _, cursors = run(log.path)
    log.error(2)
    old = log.sibling("-20261127")
    log.path.rename(old)
    os.utime(old, (1_795_000_000, 1_795_000_000))
    log.path.touch()
    log.error(1)
    log.path.rename(log.sibling("-20261128"))
    log.path.touch()
    gzip_file(old)
    log.error(4)
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 7
    assert entry["rotated"] and not entry["cursor_reset"]
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 0


def test_cursor_lost_resets(log):
    log.error(1)
    _, cursors = run(log.path)
    log.error(2)
    log.rotate()
    log.sibling(".1").unlink()
    log.error(3)
    entry, cursors = run(log.path, cursors)
    assert errors_seen(entry) == 3
    assert entry["cursor_reset"]
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 0 and not entry["cursor_reset"]


def test_initial_position_end(log):
    log.error(5)
    log.raw("2026-11-28 ERROR still being writ")
    entry, cursors = run(log.path, initial_position="end")
    assert errors_seen(entry) == 0 and entry["lines_read"] == 0
    log.raw("ten\n")
    log.error(1)
    entry, _ = run(log.path, cursors, initial_position="end")
    assert errors_seen(entry) == 2


def test_initial_position_start_ignores_older_rotations(log):
    log.error(2)
    log.rotate()
    log.error(1)
    entry, _ = run(log.path)
    assert errors_seen(entry) == 1 and not entry["rotated"]
    log.rotate()  # the live file is now empty: the start is the end of the rotated one
    entry, cursors = run(log.path, {})
    assert errors_seen(entry) == 0
    log.error(1)
    entry, _ = run(log.path, cursors)
    assert errors_seen(entry) == 1


def test_backlog_continues_next_run_without_loss(log):
    log.error(30)
    log.noise(30)
    size = log.path.stat().st_size
    total, runs, cursors = 0, 0, {}
    while True:
        entry, cursors = run(log.path, cursors, max_read_bytes=1000)
        runs += 1
        total += errors_seen(entry)
        assert entry["bytes_read"] <= 1000
        if not entry["backlog"]:
            break
        assert runs < 50
    assert total == 30
    assert runs == -(-size // 1000) or runs == size // 1000 + 1
    assert cursors[str(log.path)]["offset"] == size


def test_backlog_across_a_rotation(log):
    log.error(1)
    _, cursors = run(log.path)
    log.error(20)
    log.rotate(compress=True)
    log.error(20)
    total = 0
    for _ in range(20):
        entry, cursors = run(log.path, cursors, max_read_bytes=700)
        total += errors_seen(entry)
        if not entry["backlog"]:
            break
    assert total == 40


def test_line_longer_than_the_budget_still_moves_on(log):
    # Pieces of a line longer than the whole budget are counted as lines of their own.
    log.raw("ERROR " + "y" * 5000 + "\n")
    log.error(1)
    entry, cursors = run(log.path, max_read_bytes=1000)
    assert errors_seen(entry) == 1 and entry["backlog"]
    total, runs = 0, 0
    while entry["backlog"]:
        entry, cursors = run(log.path, cursors, max_read_bytes=1000)
        total, runs = total + errors_seen(entry), runs + 1
        assert runs < 10
    assert total == 1


def test_missing_and_unreadable_logs_keep_their_cursor(tmp_path, log):
    log.error(1)
    _, cursors = run(log.path)
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    args = {"cpu_sample_seconds": 0, "system_logs": "none",
            "logs": [{"path": str(tmp_path / "gone.log")},
                     {"path": str(tmp_path)},
                     {"path": str(fifo)},
                     {"path": str(log.path), "patterns": {"error": "("}}],
            "cursors": {str(tmp_path / "gone.log"): {"kept": 1},
                        str(log.path): cursors[str(log.path)]}}
    result = mc.collect(args)
    errors = [entry["error"] for entry in result["logs"]]
    assert errors[:3] == ["missing", "unreadable", "unreadable"]
    assert errors[3].startswith("invalid pattern")
    assert result["cursors"] == {str(tmp_path / "gone.log"): {"kept": 1},
                                 str(log.path): cursors[str(log.path)]}


def test_unreadable_file_for_the_current_user(tmp_path):
    path = tmp_path / "secret.log"
    path.write_text("ERROR x\n")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("this user can read a mode-000 file (root)")
        entry, _ = run(path)
        assert entry["error"] == "unreadable"
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)


def test_system_logs_list_and_no_source(tmp_path):
    syslog = tmp_path / "syslog"
    syslog.write_text("kernel: Out of memory: Killed process 1 (x)\nsshd: Failed password\n"
                      "cron: ok\n")
    result = mc.collect({"cpu_sample_seconds": 0, "system_logs": [str(syslog)],
                         "system_log_patterns": {"error": r"(?i)\b(fail(ed)?|oom)\b",
                                                 "oom": "Out of memory"}})
    (entry,) = result["logs"]
    assert entry["kind"] == "system" and entry["source"] == "file"
    assert entry["counts"] == {"error": 1, "oom": 1}
    assert str(syslog) in result["cursors"]

    if mc._journald_present() or any(os.path.exists(p) for p in mc.SYSTEM_LOG_FILES):
        return
    result = mc.collect({"cpu_sample_seconds": 0})
    (entry,) = result["logs"]
    assert entry["path"] is None and entry["source"] is None and entry["kind"] == "system"
    assert entry["error"] == "no system log source found"
    assert result["cursors"] == {}


def test_journal_output_parsing():
    text = ("-- Journal begins at Mon 2026-11-23 10:00:00 UTC. --\n"
            "2026-11-28T10:00:01+0000 host kernel: app[99]: segfault at 0 ip 0 sp 0\n"
            "2026-11-28T10:00:02+0000 host sshd[12]: Accepted publickey for ops\n"
            "-- Boot 0123456789abcdef --\n"
            "2026-11-28T10:00:03+0000 host app[7]: request failed: upstream\n"
            "-- cursor: s=abc;i=1f;b=0123;m=99;t=5f;x=42\n")
    counter = mc._Counter(mc.DEFAULT_SYSTEM_PATTERNS, 3)
    cursor = mc.parse_journal_output(text, counter)
    assert cursor == "s=abc;i=1f;b=0123;m=99;t=5f;x=42"
    assert counter.counts == {"error": 2}
    assert counter.lines == 3
    assert counter.sample_lists()["error"][0].endswith("segfault at 0 ip 0 sp 0")
    assert mc.parse_journal_output("", mc._Counter({"e": "x"}, 1)) is None


def test_invalid_utf8_is_replaced_not_fatal(log):
    log.raw("")
    with open(log.path, "ab") as fh:
        fh.write(b"\xff\xfe ERROR bad bytes\n")
    entry, _ = run(log.path)
    assert errors_seen(entry) == 1
    assert "\ufffd" in entry["samples"]["error"][0]


# --- properties -------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("error"), st.integers(1, 4)),
        st.tuples(st.just("noise"), st.integers(1, 3)),
        st.tuples(st.just("lag"), st.integers(1, 2)),
        st.tuples(st.just("rotate"), st.just(0)),
        st.tuples(st.just("copytruncate"), st.just(0)),
        st.tuples(st.just("collect"), st.just(0)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, scheme=st.sampled_from(["plain", "compress", "delaycompress"]),
       gap=st.integers(1, 3))
def test_every_matching_line_is_counted_exactly_once(ops, scheme, gap):
    """Random appends, rotations and collects: the counts add up to the lines written.

    gap is how many rotations may happen between two collects (the spec needs 1;
    with five rotated files kept, up to 3 must work too).
    """
    with tempfile.TemporaryDirectory() as folder:
        log = AppLog(Path(folder) / "app.log")
        cursors, counted = {}, 0
        rotations_since_collect, lag_file = 0, None

        def collect():
            nonlocal cursors, counted, rotations_since_collect, lag_file
            result = mc.collect_logs({"logs": [{"path": str(log.path), "patterns": PATTERNS}],
                                      "system_logs": "none", "cursors": cursors})
            assert result["errors"] == []
            (entry,) = result["logs"]
            assert entry["error"] is None
            counted += errors_seen(entry)
            cursors = result["cursors"]
            rotations_since_collect, lag_file = 0, None

        collect()  # the collector has known this log since it was created
        for op, k in ops:
            if op in ("rotate", "copytruncate"):
                if rotations_since_collect >= gap:
                    collect()
                rotations_since_collect += 1
                compress, delay = scheme != "plain", scheme == "delaycompress"
                if op == "rotate":
                    log.rotate(compress=compress, delaycompress=delay)
                    lag_file = log.sibling(".1") if log.sibling(".1").exists() else None
                else:
                    log.copytruncate(compress=compress, delaycompress=delay)
                    lag_file = None
            elif op == "error":
                log.error(k)
            elif op == "noise":
                log.noise(k)
            elif op == "lag":
                # Until the next collect, a writer may still hold the renamed file.
                log.error(k, to=lag_file if rotations_since_collect == 1 else None)
            else:
                collect()
        collect()
        assert counted == log.matches


LINE_PATTERNS = ["E", "^a", "a$", "^$", r"b\s*$", r"\ba", r"a\s+b", "[^a]+$", "(?s)a.*b",
                 "(?i)e", "a(?!b)", r"\Aa", r"a\Z", "", r"\B", r"(a|b\n?)$", "^(?:a|)$",
                 r"\s", "(?m)^b", "(?>a+)b", "a++"]


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(st.text(alphabet="ab E\t\r", max_size=6), min_size=1, max_size=10),
       pattern=st.sampled_from(LINE_PATTERNS))
def test_chunk_matching_equals_line_by_line(lines, pattern):
    text = "\n".join(lines)
    rx = re.compile(pattern)
    fast = None if mc._LINE_BOUND.search(pattern) else re.compile(pattern, re.MULTILINE)
    expected = [line for line in text.split("\n") if rx.search(line)]
    assert list(mc._matching_lines(text, rx, fast)) == expected


@pytest.mark.parametrize("present, chosen", [
    (["syslog", "kern.log"], "syslog"),
    (["messages", "kern.log"], "messages"),
    (["kern.log"], "kern.log"),
])
def test_auto_system_logs_reads_one_source(tmp_path, monkeypatch, present, chosen):
    """kern.log lines are also in syslog on rsyslog hosts: auto must not count them twice."""
    files = tuple(str(tmp_path / n) for n in ("syslog", "messages", "kern.log"))
    for name in present:
        (tmp_path / name).write_text("kernel: app[42]: segfault at 0 ip 0 sp 0\n")
    monkeypatch.setattr(mc, "SYSTEM_LOG_FILES", files)
    monkeypatch.setattr(mc, "_journald_present", lambda: False)
    result = mc.collect({"cpu_sample_seconds": 0})
    assert [e["path"] for e in result["logs"]] == [str(tmp_path / chosen)]
    assert result["logs"][0]["counts"] == {"error": 1}
