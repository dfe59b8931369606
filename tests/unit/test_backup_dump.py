"""The dump side of `mhops_backup_files`: rows counted in a SQL dump stream, and a pipe
that fails when any of its processes fails (real processes, no database)."""

from __future__ import annotations

import importlib.util
import random

import pytest
from conftest import REPO
from hypothesis import given, settings
from hypothesis import strategies as st


def _module():
    spec = importlib.util.spec_from_file_location(
        "mhops_backup_files", REPO / "roles/mhops_backup/library/mhops_backup_files.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


M = _module()


def _escape(text: str) -> str:
    # What mariadb-dump does to a string value (mysql_real_escape_string).
    for a, b in (("\\", "\\\\"), ("'", "\\'"), ("\n", "\\n"), ("\r", "\\r"), ("\0", "\\0"),
                 ("\x1a", "\\Z")):
        text = text.replace(a, b)
    return f"'{text}'"


def _dump(tables: dict[str, list[list]], one_row_per_line: bool, chunk: int) -> str:
    out = ["-- MariaDB dump 10.19\n", "/*!40101 SET NAMES utf8mb4 */;\n"]
    for name, rows in tables.items():
        q = name.replace("`", "``")
        out.append(f"DROP TABLE IF EXISTS `{q}`;\n")
        out.append(f"CREATE TABLE `{q}` (\n  `id` int(11) NOT NULL,\n  `v` text DEFAULT "
                   "'a(b);c',\n  PRIMARY KEY (`id`)\n) ENGINE=InnoDB COMMENT='x''s (y)';\n")
        out.append(f"LOCK TABLES `{q}` WRITE;\n")
        for i in range(0, len(rows), chunk):
            vals = ["(" + ",".join("NULL" if v is None else str(v) if isinstance(v, int)
                                   else _escape(v) for v in row) + ")"
                    for row in rows[i:i + chunk]]
            sep = ",\n" if one_row_per_line else ","
            lead = "\n" if one_row_per_line else ""
            out.append(f"INSERT INTO `{q}` VALUES {lead}" + sep.join(vals) + ";\n")
        out.append("UNLOCK TABLES;\n")
    out.append("-- Dump completed on 2026-11-28 10:00:00\n")
    return "".join(out)


values = st.one_of(st.none(), st.integers(-10**6, 10**6),
                   st.text(alphabet=st.sampled_from(list("ab(),;'\\\n\r`\"-x 王 INSERT")),
                           max_size=30))
tables = st.dictionaries(
    # A quote in a table name is the counter's documented limit.
    st.text(alphabet=st.sampled_from(list("ab_`(; ")), min_size=1, max_size=8),
    st.lists(st.lists(values, min_size=1, max_size=4), max_size=25), max_size=4)


@settings(max_examples=150, deadline=None)
@given(tables=tables, one_row_per_line=st.booleans(), chunk=st.integers(1, 7),
       seed=st.integers(0, 2**16))
def test_row_counter_counts_every_row_whatever_the_values_and_the_blocks(
        tables, one_row_per_line, chunk, seed):
    data = _dump(tables, one_row_per_line, chunk).encode()
    rnd = random.Random(seed)
    counter = M.SqlRowCounter()
    pos = 0
    while pos < len(data):  # the pipe delivers arbitrary block sizes
        step = rnd.randint(1, 64)
        counter.feed(data[pos:pos + step])
        pos += step
    assert counter.close() == {name: len(rows) for name, rows in tables.items()}


def _params(tmp_path, argv, compress="gzip", **kw):
    return {"engine": "mariadb", "temp": str(tmp_path / ".x.sql.gz.partial"),
            "compress": compress, "compressors": {}, "timeout": 60, "dump_argv": argv,
            "client_argv": None, **kw}


def _script(tmp_path, name, body):
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def test_good_pipe_counts_and_compresses(tmp_path):
    sql = _dump({"t": [[1, "a"], [2, "b(c)"]]}, True, 5)
    src = tmp_path / "dump.sql"
    src.write_text(sql)
    got = M.dump(_params(tmp_path, ["cat", str(src)]))
    assert got["tables"] == {"t": 2} and got["tables_counted"] == "dump_content"
    assert [s["program"] for s in got["stages"]] == ["cat", "gzip"]
    import gzip
    assert gzip.decompress((tmp_path / ".x.sql.gz.partial").read_bytes()).decode() == sql


@pytest.mark.parametrize("compress", ["none", "gzip", "zstd"])
def test_killed_dump_fails_and_leaves_no_file(tmp_path, compress):
    argv = [_script(tmp_path, "dump", "printf 'INSERT INTO `t` VALUES (1);\\n'\nkill -9 $$\n")]
    with pytest.raises(M.DumpError, match="dump killed by signal 9"):
        M.dump(_params(tmp_path, argv, compress))
    assert list(tmp_path.glob(".*partial")) == []


def test_failing_compressor_fails_even_when_the_dump_succeeds(tmp_path):
    src = tmp_path / "big.sql"
    src.write_text(_dump({"t": [[i, "x" * 50] for i in range(5000)]}, True, 100))
    bad = _script(tmp_path, "gz", "head -c 10 >/dev/null\necho 'disk full' >&2\nexit 1\n")
    with pytest.raises(M.DumpError, match="disk full"):
        M.dump(_params(tmp_path, ["cat", str(src)], compressors={"gzip": bad}))
    assert list(tmp_path.glob(".*partial")) == []


def test_timeout_kills_the_pipe(tmp_path):
    argv = [_script(tmp_path, "slow", "sleep 30\n")]
    with pytest.raises(M.DumpError, match="longer than 1 s"):
        M.dump(_params(tmp_path, argv, timeout=1))
    assert list(tmp_path.glob(".*partial")) == []
