"""Trend fitting, forecasts, the restart rule, bottleneck rules and period parsing (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mhops import perf, trends
from mhops.errors import MhopsError

TH = perf.validate_thresholds({})


def series(values, start=20000.0, step=1.0):
    return [(start + i * step, float(v)) for i, v in enumerate(values)]


# ------------------------------------------------------------------ periods

def test_quarter_and_month_bounds_in_the_hospital_zone():
    p = trends.parse_period("2026Q4", "Asia/Shanghai")
    assert (p.label, p.kind) == ("2026Q4", "quarter")
    assert p.start.isoformat() == "2026-10-01T00:00:00+08:00"
    assert p.end.isoformat() == "2027-01-01T00:00:00+08:00"
    assert trends.parse_period("2026-q1", "UTC").end == datetime(2026, 4, 1, tzinfo=UTC)
    m = trends.parse_period("2026-11", "Asia/Shanghai")
    assert (m.label, m.kind, m.days) == ("2026-11", "month", 30.0)
    assert trends.parse_period("2026-12", "UTC").end == datetime(2027, 1, 1, tzinfo=UTC)
    # A midnight in Shanghai is 16:00 UTC the day before: that instant belongs to Q4.
    assert p.contains(datetime(2026, 9, 30, 16, 0, tzinfo=UTC))
    assert not p.contains(datetime(2026, 9, 30, 15, 59, tzinfo=UTC))


@pytest.mark.parametrize("bad", ["2026Q5", "2026Q0", "Q4", "2026-13", "2026-00", "26Q4",
                                 "2026", "", "last quarter"])
def test_bad_periods_are_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="expected a quarter like 2026Q4|month"):
        trends.parse_period(bad, "UTC")
    with pytest.raises(MhopsError, match="--period"):
        perf.period_for(bad or "x", "UTC")


def test_default_period_is_the_current_quarter():
    assert trends.current_quarter(date(2026, 11, 28)) == "2026Q4"
    assert trends.current_quarter(date(2026, 1, 1)) == "2026Q1"
    assert perf.period_for(None, "Asia/Shanghai", date(2026, 5, 2)).label == "2026Q2"


# ------------------------------------------------------------------ fitting

@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.05, 5), start=st.floats(0, 60), n=st.integers(3, 90),
       step=st.floats(0.25, 3))
def test_linear_growth_gives_its_rate_and_days_until_full(rate, start, n, step):
    pts = [(i * step, start + rate * i * step) for i in range(n)]
    last = pts[-1][1]
    assume(last < 100)
    f = trends.fit(pts)
    assert f.slope_per_day == pytest.approx(rate, rel=1e-6)
    days = trends.days_until_full(pts, min_points=3, min_span_days=0)
    assert days == pytest.approx((100 - last) / rate, rel=1e-6, abs=1e-6)


@settings(max_examples=200, deadline=None)
@given(level=st.floats(0, 99), rate=st.floats(0, 5), n=st.integers(2, 60))
def test_flat_or_shrinking_series_gives_no_forecast(level, rate, n):
    pts = [(float(i), level - rate * i) for i in range(n)]
    assert trends.days_until_full(pts, min_points=2, min_span_days=0) is None


def test_too_few_points_give_no_trend_and_no_forecast():
    pts = series([50, 60, 70])
    t = trends.trend(pts, min_points=4)
    assert not t.enough and t.slope_per_day is None and t.stats["n"] == 3
    assert trends.days_until_full(pts, min_points=4) is None
    assert trends.fit([(1.0, 5.0), (1.0, 6.0)]) is None   # no spread in time
    assert trends.trend(series([50, 51, 52, 53], step=0.01), min_points=4).enough is False


def test_a_cleanup_restarts_the_fit_so_growth_after_it_is_seen():
    # 60 -> 90 in 10 days, cleaned to 40, then +2/day: the whole-period slope is small,
    # the segment after the drop is the real rate.
    pts = series([60 + 3 * i for i in range(11)] + [40 + 2 * i for i in range(10)])
    seg = trends.since_last_drop(pts, 5)
    assert seg[0][1] == 40 and len(seg) == 10
    assert trends.fit(seg).slope_per_day == pytest.approx(2)
    assert trends.days_until_full(seg) == pytest.approx((100 - 58) / 2)


def test_stats_mean_p95_max():
    s = trends.stats(list(range(1, 101)))
    assert s == {"n": 100, "mean": 50.5, "p95": 95.0, "min": 1.0, "max": 100.0}
    assert trends.stats([])["p95"] is None


def test_forecast_status_uses_the_day_limits():
    assert trends.forecast_status(None, 30, 7) == "normal"
    assert trends.forecast_status(31, 30, 7) == "normal"
    assert trends.forecast_status(30, 30, 7) == "warning"
    assert trends.forecast_status(6.5, 30, 7) == "critical"


# ------------------------------------------------------------------ restart rule

def _mem(values, step=7.0):
    return trends.trend(series(values, step=step), min_points=4)


def test_restart_needs_long_uptime_and_memory_growth():
    growing, flat = _mem([50, 54, 58, 62, 66]), _mem([60, 61, 60, 61, 60])
    yes = trends.restart_advice("h", 120, growing, max_uptime_days=90, growth_limit=10)
    assert yes.restart and yes.reason == "restart" and yes.growth == pytest.approx(16)
    assert not trends.restart_advice("h", 30, growing, max_uptime_days=90,
                                     growth_limit=10).restart
    no = trends.restart_advice("h", 200, flat, max_uptime_days=90, growth_limit=10)
    assert not no.restart and no.reason == "growth_small"
    assert trends.restart_advice("h", None, growing, max_uptime_days=90,
                                 growth_limit=10).reason == "no_uptime"
    assert trends.restart_advice("h", 200, _mem([50, 60]), max_uptime_days=90,
                                 growth_limit=10).reason == "no_trend"


def test_service_rss_growth_is_relative():
    rss = _mem([400, 440, 480, 520])        # +30 % of the fitted start
    a = trends.restart_advice("h/api", 100, rss, max_uptime_days=90, growth_limit=20,
                              relative=True)
    assert a.restart and a.unit == "percent" and a.growth == pytest.approx(30)


def test_reboot_found_from_uptime_going_down():
    assert trends.uptime_segment_start(series([10, 11, 12, 0.5, 1.5])) == 20003.0
    assert trends.uptime_segment_start(series([10, 11, 12])) is None


def test_restart_rule_counts_memory_only_since_the_reboot():
    base = datetime(2026, 10, 1, tzinfo=UTC)
    s = perf.Series("h")
    # Memory grew before a reboot on day 40, then stayed flat: no restart advice.
    for d in range(0, 80, 4):
        when = base + timedelta(days=d)
        s.memory.append((when, 40 + d if d < 40 else 45.0))
        s.uptime.append((when, 200 + d if d < 40 else d - 40 + 95.0))
    _, findings, advice, _ = perf.analyse_hosts({"h": s}, TH)
    assert advice[0]["reason"] == "growth_small" and not advice[0]["restart"]
    assert not [f for f in findings if f.kind == "restart"]


# ------------------------------------------------------------------ database rules

def test_pg_rules_name_the_evidence():
    fig = {"settings": {"max_connections": 100, "superuser_reserved_connections": 3,
                        "shared_buffers": "128MB"},
           "database": {"blks_hit": 91000, "blks_read": 9000},
           "connections": 93,
           "long_transactions": [{"pid": 7, "age_s": 900, "state": "idle in transaction"}],
           "tables": [{"schema": "public", "table": "appointments", "size_bytes": 50 << 20,
                       "seq_scan": 12345, "seq_tup_read": 12345 * 98000, "idx_scan": 10,
                       "n_live_tup": 100000},
                      {"schema": "public", "table": "small", "size_bytes": 1 << 20,
                       "seq_scan": 99999, "seq_tup_read": 1, "idx_scan": 0, "n_live_tup": 1}],
           "unused_indexes": [{"schema": "public", "index": "big_idx", "table": "t",
                               "size_bytes": 8 << 20},
                              {"schema": "public", "index": "tiny_idx", "table": "t",
                               "size_bytes": 8192}],
           "statements": [{"query": "SELECT * FROM appointments WHERE department_id = $1 "
                                    "AND visit_date >= $2 ORDER BY slot"}]}
    found = {f.kind: f for f in trends.pg_findings("h/db", fig, TH)}
    assert found["pg_cache_hit"].value == 91.0 and found["pg_cache_hit"].threshold == 99
    c = found["connections"]
    assert c.severity == "critical" and c.value == pytest.approx(95.9, abs=0.1)
    assert found["long_transaction"].value == 15.0
    seq = found["seq_scan"]
    assert seq.subject == "public.appointments" and seq.value == 12345
    assert seq.evidence["rows_per_scan_percent"] == 98.0
    assert seq.evidence["columns"] == ["department_id", "visit_date"]
    assert [f.subject for f in trends.pg_findings("h/db", fig, TH)
            if f.kind == "unused_index"] == ["public.big_idx"]


def test_healthy_figures_give_no_findings():
    fig = {"settings": {"max_connections": 100, "superuser_reserved_connections": 3},
           "database": {"blks_hit": 999_900, "blks_read": 100}, "connections": 10,
           "tables": [{"schema": "s", "table": "t", "size_bytes": 50 << 20, "seq_scan": 500,
                       "seq_tup_read": 500, "idx_scan": 10**6, "n_live_tup": 10**6}]}
    assert trends.pg_findings("h/db", fig, TH) == []
    few = {"settings": {}, "database": {"blks_hit": 10, "blks_read": 90}}
    assert trends.pg_findings("h/db", few, TH) == []   # too little activity to judge


def test_mariadb_rules():
    fig = {"settings": {"max_connections": 100, "innodb_buffer_pool_size": 128 << 20},
           "status": {"INNODB_BUFFER_POOL_READ_REQUESTS": 100000,
                      "INNODB_BUFFER_POOL_READS": 5000, "THREADS_CONNECTED": 10,
                      "MAX_USED_CONNECTIONS": 96},
           "tables": [{"table": "appointments", "size_bytes": 64 << 20, "table_rows": 1000}],
           "full_scans": [{"table": "appointments", "rows_read": 500_000}],
           "unused_indexes": [{"table": "appointments", "index": "x", "size_bytes": 4 << 20}],
           "statements": []}
    found = {f.kind: f for f in trends.mariadb_findings("h/my", fig, TH)}
    assert found["mariadb_buffer_pool_hit"].value == 95.0
    assert found["connections"].severity == "critical"
    assert found["connections"].evidence["peak"] == 96
    assert found["full_scan"].value == 500.0
    assert found["unused_index"].subject == "appointments.x"


def test_index_columns_only_from_simple_filters():
    qs = ["select id from messages m where m.category = ? and sent_at > ?",
          "SELECT count(*) FROM messages WHERE patient_id IN (?)"]
    assert trends.index_columns("messages", qs) == ["category", "patient_id", "sent_at"]
    assert trends.index_columns("messages", ["SELECT 1 FROM other WHERE a = 1"]) == []


# ------------------------------------------------------------------ settings

def test_thresholds_are_validated():
    with pytest.raises(MhopsError, match="unknown threshold"):
        perf.validate_thresholds({"disk_days": 3})
    with pytest.raises(MhopsError, match="non-negative"):
        perf.validate_thresholds({"forecast_warning_days": -1})
    with pytest.raises(MhopsError, match="non-negative"):
        perf.validate_thresholds({"min_points": True})
    with pytest.raises(MhopsError, match="must not exceed"):
        perf.validate_thresholds({"forecast_critical_days": 40})
    assert perf.validate_thresholds({"min_points": 6.0})["min_points"] == 6


def test_every_finding_kind_has_words_in_both_languages():
    kinds = {"disk_forecast", "inode_forecast", "cpu_saturated", "memory_saturated", "restart",
             "pg_cache_hit", "mariadb_buffer_pool_hit", "connections", "long_transaction",
             "seq_scan", "full_scan", "unused_index", "pgss_missing", "ps_off", "db_unreadable"}
    for lang in ("zh-CN", "en"):
        for kind in kinds:
            w = perf.words(trends.Finding(kind, "warning", "h/db", "x", "m", 1, 2,
                                          {"step": "preload", "slow": "off"}), lang)
            assert w["evidence_text"] and w["recommendation"] and w["title"] != kind, (lang, kind)


def test_label_files_have_no_duplicate_keys():
    import yaml

    class Strict(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        keys = [loader.construct_object(k) for k, _ in node.value]
        assert len(keys) == len(set(keys)), f"duplicate keys near line {node.start_mark.line}"
        return loader.construct_mapping(node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    for lang in ("zh-CN", "en"):
        path = perf.records.TEMPLATES / "i18n" / f"{lang}.d" / "perf.yml"
        yaml.load(path.read_text(encoding="utf-8"), Loader=Strict)
