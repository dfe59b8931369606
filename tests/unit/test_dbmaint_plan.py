"""db.maintain planning logic: thresholds, window, bloat figures, classification, SQL, verdicts."""

from datetime import datetime

import pytest

from mhops import dbmaint as dm
from mhops.errors import MhopsError

TH = dm.validate_thresholds({"index_min_bytes": 65536})
PG = {"block_size": 8192, "pgstattuple_schema": "public"}


def ix(name, *, valid=True, size=1 << 20, stat=None, table="t", method="btree", **kw):
    row = {"schema": "public", "index": name, "table": table, "method": method, "valid": valid,
           "columns": 1, "size_bytes": size, "relpages": size // 8192, "reltuples": 1000.0,
           "fillfactor": 90, "stats_columns": 1, "stats_width": 4, "pgstatindex": stat}
    row.update(kw)
    return row


def stat(size, leaf, density, internal=1):
    return {"index_size": size, "leaf_pages": leaf, "internal_pages": internal,
            "avg_leaf_density": density, "empty_pages": 0, "deleted_pages": 0}


# ---------------------------------------------------------------- settings

@pytest.mark.parametrize("raw, message", [
    ({"index_bloat": 30}, "unknown threshold"),
    ({"index_bloat_percent": "30"}, "non-negative number"),
    ({"index_bloat_percent": True}, "non-negative number"),
    ({"dead_tuple_min": -1}, "non-negative number"),
    ([1], "must be a mapping"),
])
def test_thresholds_refuse_bad_input(raw, message):
    with pytest.raises(MhopsError, match=message):
        dm.validate_thresholds(raw)


def test_thresholds_merge_over_defaults():
    th = dm.validate_thresholds({"index_bloat_percent": 50})
    assert th["index_bloat_percent"] == 50 and th["index_min_bytes"] == 1048576


@pytest.mark.parametrize("window, hhmm, inside", [
    ("01:00-05:00", (1, 0), True), ("01:00-05:00", (4, 59), True),
    ("01:00-05:00", (5, 0), False), ("01:00-05:00", (0, 59), False),
    ("22:00-02:00", (23, 30), True), ("22:00-02:00", (1, 59), True),
    ("22:00-02:00", (2, 0), False), ("22:00-02:00", (12, 0), False),
    ("00:00-24:00", (23, 59), True),
])
def test_window_including_wrap_past_midnight(window, hhmm, inside):
    assert dm.in_window(datetime(2026, 11, 28, *hhmm), window) is inside


@pytest.mark.parametrize("bad", ["", "1-5", "25:00-02:00", "01:00-01:00", "01:61-02:00",
                                 "01:00-24:01"])
def test_window_refuses_bad_text(bad):
    with pytest.raises(MhopsError, match="db.window"):
        dm.parse_window(bad)


# ---------------------------------------------------------------- bloat figures

def test_pgstatindex_fresh_index_is_not_bloated_and_sparse_one_is():
    fresh = dm.bloat_from_pgstatindex(stat(130 * 8192, 128, 90.0), 90, 8192)
    assert fresh == 0.0
    sparse = dm.bloat_from_pgstatindex(stat(130 * 8192, 128, 9.0), 90, 8192)
    assert 0.88 < sparse < 0.9  # a tenth of the leaf data is live: ~89% would be freed


def test_pgstatindex_counts_empty_and_deleted_pages_as_waste():
    s = stat(200 * 8192, 100, 90.0)  # 100 full leaves + root + meta; 98 pages empty or deleted
    assert dm.bloat_from_pgstatindex(s, 90, 8192) == pytest.approx(0.49)  # 102 of 200 needed


def test_estimate_matches_a_packed_index_and_flags_a_sparse_one():
    # 100k int4 keys: 16-byte entries -> ~454 per 90%-full page -> ~221 leaf pages
    assert dm.bloat_estimate(100_000, 224, 4, 8192, 90) == 0.0
    assert dm.bloat_estimate(100_000, 2240, 4, 8192, 90) > 0.85
    assert dm.bloat_estimate(-1, 2240, 4, 8192, 90) is None  # never analyzed
    assert dm.bloat_estimate(100_000, 2240, 0, 8192, 90) is None


# ---------------------------------------------------------------- PostgreSQL plan

def test_bloated_index_above_both_thresholds_is_rebuilt():
    items, notes = dm.classify_postgresql("h", "db", PG, [
        ix("t_big", stat=stat(1 << 20, 126, 10.0)),
        ix("t_ok", stat=stat(1 << 20, 126, 85.0)),
        ix("t_small", size=8192 * 4, stat=stat(8192 * 4, 2, 5.0)),
        ix("t_gin", method="gin"),
    ], [], TH)
    assert [(i.action, i.name, i.method) for i in items] == [
        ("reindex", "t_big", "pgstatindex")]
    assert items[0].value >= 30 and items[0].threshold == 30 and not notes


def test_leftover_ccnew_is_dropped_and_the_rebuild_retried_ccold_only_dropped():
    items, _ = dm.classify_postgresql("h", "db", PG, [
        ix("t_k", stat=stat(1 << 20, 126, 88.0)),
        ix("t_k_ccnew", valid=False),
        ix("u_k", table="u", stat=stat(1 << 20, 126, 88.0)),
        ix("u_k_ccold1", valid=False, table="u"),
        ix("w_broken", valid=False, table="w"),
    ], [], TH)
    assert [(i.action, i.kind, i.name) for i in items] == [
        ("drop_index", "leftover_index", "t_k_ccnew"),
        ("drop_index", "leftover_index", "u_k_ccold1"),
        ("reindex", "retry_rebuild", "t_k"),
        ("reindex", "invalid_index", "w_broken"),
    ]


def test_retried_rebuild_is_not_planned_twice_when_also_bloated():
    items, _ = dm.classify_postgresql("h", "db", PG, [
        ix("t_k", stat=stat(1 << 20, 126, 5.0)), ix("t_k_ccnew", valid=False)], [], TH)
    assert sorted(i.action for i in items) == ["drop_index", "reindex"]


def test_estimate_used_without_pgstattuple_and_unmeasurable_noted():
    no_ext = {"block_size": 8192, "pgstattuple_schema": None}
    items, notes = dm.classify_postgresql("h", "db", no_ext, [
        ix("t_k", reltuples=1000.0, relpages=128, size_bytes=128 * 8192),
        ix("t_expr", stats_columns=0),
    ], [], TH)
    assert [(i.name, i.method) for i in items] == [("t_k", "estimate")]
    assert len(notes) == 1 and "t_expr" in notes[0]


def table(**kw):
    row = {"schema": "public", "table": "t", "size_bytes": 1 << 20, "n_live_tup": 10_000,
           "n_dead_tup": 0, "n_mod_since_analyze": 0, "last_vacuum": None,
           "last_autovacuum": None, "last_analyze": "2026-11-27T01:00:00Z",
           "last_autoanalyze": None}
    row.update(kw)
    return row


@pytest.mark.parametrize("row, action", [
    (table(n_dead_tup=5000), "vacuum_analyze"),          # 33% dead
    (table(n_dead_tup=900, n_live_tup=100), None),        # ratio high, too few rows
    (table(n_dead_tup=1000, n_live_tup=9000), None),      # 10% < 20%
    (table(n_mod_since_analyze=2000), "analyze"),         # 20% changed
    (table(n_mod_since_analyze=500), None),
    (table(n_mod_since_analyze=1000, n_live_tup=1_000_000, last_analyze=None), "analyze"),
    (table(), None),
])
def test_tables_needing_vacuum_or_analyze(row, action):
    items, _ = dm.classify_postgresql("h", "db", PG, [], [row], TH)
    assert [i.action for i in items] == ([action] if action else [])


# ---------------------------------------------------------------- MariaDB plan

def my(**kw):
    row = {"table": "t", "engine": "InnoDB", "data_length": 16 << 20, "index_length": 4 << 20,
           "data_free": 0, "table_rows": 1000, "update_epoch": None,
           "stats_epoch": 1_000_000, "now_epoch": 1_000_100}
    row.update(kw)
    return row


def test_mariadb_fragmentation_ratio_and_floor():
    th = dm.validate_thresholds({"fragmentation_min_bytes": 8 << 20})
    items, _ = dm.classify_mariadb("h", "db", [my(data_free=10 << 20)], th)
    assert [(i.action, i.value) for i in items] == [("rebuild", 50.0)]
    assert dm.classify_mariadb("h", "db", [my(data_free=4 << 20)], th)[0] == []  # < floor
    assert dm.classify_mariadb("h", "db", [my(data_free=9 << 20, data_length=40 << 20)],
                               th)[0] == []  # 20% < 30%
    items, notes = dm.classify_mariadb("h", "db", [my(engine="Aria", data_free=50 << 20)], th)
    assert items == [] and "cannot be rebuilt online" in notes[0]


def test_mariadb_stale_statistics():
    week = 7 * 86400
    old = my(stats_epoch=1_000_000, update_epoch=1_000_000 + week,
             now_epoch=1_000_000 + week + 10)
    assert [i.action for i in dm.classify_mariadb("h", "db", [old], TH)[0]] == ["analyze"]
    fresh = dict(old, stats_epoch=old["now_epoch"] - 60)
    assert dm.classify_mariadb("h", "db", [fresh], TH)[0] == []
    missing = my(stats_epoch=None)
    assert [i.kind for i in dm.classify_mariadb("h", "db", [missing], TH)[0]] == ["stale_stats"]


# ---------------------------------------------------------------- SQL and verdicts

def item(**kw):
    base = {"host": "h", "database": "db", "engine": "postgresql", "kind": "index_bloat",
            "action": "reindex", "schema": "public", "name": 'we"ird', "table": "t",
            "size_bytes": 1 << 20}
    base.update(kw)
    return dm.Item(**base)


def test_statements_quote_identifiers():
    sql, work = dm.statements(item())
    assert sql[work] == 'REINDEX INDEX CONCURRENTLY "public"."we""ird"'
    assert "to_regclass('\"public\".\"we\"\"ird\"')" in sql[0]
    sql, work = dm.statements(item(engine="mariadb", action="rebuild", schema="",
                                   name="o`d'd"))
    assert sql[work] == "ALTER TABLE `o``d'd` FORCE, ALGORITHM=INPLACE, LOCK=NONE"
    assert sql[work + 1] == "ANALYZE TABLE `o``d'd`" and "'o`d''d'" in sql[0]


def test_judge_done_gave_up_failed():
    it = item(name="t_k")
    ok = {"t0": 10, "t1": 11, "result": {
        "query_all_results": [{}, {}, [{"bytes": 1 << 20}], {}, [{"bytes": 65536}]],
        "execution_time_ms": [0.1, 0.1, 1.0, 250.0, 1.0]}}
    a = dm.judge(it, ok, 2)
    assert (a.status, a.before_bytes, a.after_bytes, a.duration_s) == (
        dm.DONE, 1 << 20, 65536, 0.25)
    lock = {"t0": 10, "t1": 12.1, "result": {"msg": "Cannot execute SQL 'REINDEX INDEX "
            "CONCURRENTLY \"public\".\"t_k\"' None: canceling statement due to lock timeout\n"
            ", query list: ['SET ...']"}}
    a = dm.judge(it, lock, 2)
    assert a.status == dm.GAVE_UP and a.duration_s == 2.1 and "lock timeout" in a.reason
    assert "query list" not in a.reason and "_ccnew" in a.reason
    slow = {"t0": 0, "t1": 5, "result": {"msg": "... None: canceling statement due to "
                                                "statement timeout"}}
    assert dm.judge(it, slow, 2).status == dm.FAILED
    mdl = {"t0": 0, "t1": 5, "result": {"msg": "Cannot execute SQL 'ALTER TABLE `t` FORCE' "
           "args [None]: (1205, 'Lock wait timeout exceeded; try restarting transaction')"}}
    assert dm.judge(item(engine="mariadb", action="rebuild"), mdl, 5).status == dm.GAVE_UP
    assert dm.judge(it, None, 2).status == dm.FAILED


def test_judge_reads_analyze_table_error_rows():
    it = item(engine="mariadb", action="analyze", schema="", name="t")
    res = {"t0": 0, "t1": 1, "result": {
        "query_result": [[{"bytes": 10, "free": 0}],
                         [{"Table": "db.t", "Op": "analyze", "Msg_type": "Error",
                           "Msg_text": "Table 'db.t' doesn't exist"}],
                         [{"bytes": 10, "free": 0}]],
        "execution_time_ms": [1, 2, 1]}}
    a = dm.judge(it, res, 5)
    assert a.status == dm.FAILED and "doesn't exist" in a.reason


def test_exit_codes():
    done = dm.Applied(dm.DONE, "", 1, 1, 0)
    gave = dm.Applied(dm.GAVE_UP, "lock", 1, 1, 0)
    bad = dm.Applied(dm.FAILED, "x", 1, None, 0)
    assert dm.exit_code([], 0) == 0 and dm.exit_code([done], 0) == 0
    assert dm.exit_code([done, gave], 0) == 1
    assert dm.exit_code([gave, bad], 0) == 2 and dm.exit_code([], 1) == 2
