"""Trends, forecasts and performance rules for the quarterly analysis (a pure leaf).

Owns the period grammar (``2026Q4``, ``2026-11``), least-squares trend fitting of
time series taken from inspection records, the days-until-full forecast, the
restart-recommendation rule, and naming bottlenecks from database figures: each
finding carries the metric, the measured value, the threshold and the evidence, and
a ``kind`` plus parameters from which the caller writes the sentence in the record's
language. Standard library only; imports nothing of the project.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

DAY = 86400.0
NORMAL, WARNING, CRITICAL = "normal", "warning", "critical"
_RANK = {NORMAL: 0, WARNING: 1, CRITICAL: 2}


# ------------------------------------------------------------------ periods

@dataclass(frozen=True)
class Period:
    """A calendar quarter or month in the hospital's time zone; end is exclusive."""

    label: str
    kind: str            # quarter | month
    start: datetime      # aware, local time zone
    end: datetime

    @property
    def days(self) -> float:
        return (self.end - self.start).total_seconds() / DAY

    def contains(self, when: datetime) -> bool:
        return self.start <= when < self.end


_QUARTER = re.compile(r"^\s*(\d{4})\s*-?\s*[Qq]\s*([1-4])\s*$")
_MONTH = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")


def zone(tz: str):
    try:
        from zoneinfo import ZoneInfo
        return ZoneInfo(tz)
    except Exception:  # no tz database: UTC keeps periods well defined
        return UTC


def parse_period(text: str, tz: str = "UTC") -> Period:
    """``2026Q4`` / ``2026-Q4`` (a quarter) or ``2026-11`` (a month); ValueError otherwise."""
    tzinfo = zone(tz)
    raw = str(text or "")
    m = _QUARTER.match(raw)
    if m:
        year, q = int(m[1]), int(m[2])
        first = 3 * (q - 1) + 1
        start = datetime(year, first, 1, tzinfo=tzinfo)
        end = datetime(year + (first + 3 > 12), (first + 2) % 12 + 1, 1, tzinfo=tzinfo)
        return Period(f"{year}Q{q}", "quarter", start, end)
    m = _MONTH.match(raw)
    if m:
        year, month = int(m[1]), int(m[2])
        if not 1 <= month <= 12:
            raise ValueError(f"period {raw!r}: month {month} is not 1-12")
        start = datetime(year, month, 1, tzinfo=tzinfo)
        end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=tzinfo)
        return Period(f"{year}-{month:02d}", "month", start, end)
    raise ValueError(f"period {raw!r}: expected a quarter like 2026Q4 or a month like 2026-11")


def current_quarter(today: date) -> str:
    return f"{today.year}Q{(today.month - 1) // 3 + 1}"


# ------------------------------------------------------------------ series

@dataclass(frozen=True)
class Fit:
    """A least-squares line through (day, value) points."""

    slope_per_day: float
    intercept: float      # value at the first point's time
    n: int
    span_days: float
    first_day: float
    last_day: float

    def at(self, day: float) -> float:
        return self.intercept + self.slope_per_day * (day - self.first_day)

    @property
    def fitted_first(self) -> float:
        return self.at(self.first_day)

    @property
    def fitted_last(self) -> float:
        return self.at(self.last_day)


def as_days(points: list[tuple[datetime, float]]) -> list[tuple[float, float]]:
    """Times as days since the epoch, sorted; None values dropped."""
    out = [(t.timestamp() / DAY, float(v)) for t, v in points
           if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sorted(out)


def fit(points: list[tuple[float, float]]) -> Fit | None:
    """Ordinary least squares; None for fewer than two distinct times."""
    if len(points) < 2:
        return None
    x0 = points[0][0]
    xs = [x - x0 for x, _ in points]
    ys = [y for _, y in points]
    n = len(points)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return None
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    return Fit(slope, my - slope * mx, n, xs[-1] - xs[0], x0, points[-1][0])


def stats(values: list[float]) -> dict[str, float | int | None]:
    """Mean, 95th percentile (nearest rank), min and max."""
    vals = sorted(float(v) for v in values if v is not None)
    if not vals:
        return {"n": 0, "mean": None, "p95": None, "min": None, "max": None}
    rank = max(1, math.ceil(0.95 * len(vals)))
    return {"n": len(vals), "mean": round(sum(vals) / len(vals), 2),
            "p95": round(vals[rank - 1], 2), "min": round(vals[0], 2),
            "max": round(vals[-1], 2)}


def since_last_drop(points: list[tuple[float, float]], drop: float) -> list[tuple[float, float]]:
    """The points after the last fall bigger than `drop` (a clean-up, a reboot).

    A line fitted across a clean-up would average the growth before and after it
    with the fall itself and can even come out negative while the disk is filling.
    """
    start = 0
    for i in range(1, len(points)):
        if points[i - 1][1] - points[i][1] > drop:
            start = i
    return points[start:]


@dataclass(frozen=True)
class Trend:
    """What the quarter's points say about one series."""

    n: int
    enough: bool                    # at least min_points over at least min_span_days
    slope_per_day: float | None
    per_week: float | None
    first: float | None             # fitted at the segment's start / end
    last: float | None
    span_days: float
    segment_start_day: float | None  # set when a drop restarted the fit
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def trend(points: list[tuple[float, float]], *, min_points: int, min_span_days: float = 1.0,
          drop: float | None = None) -> Trend:
    """Statistics over all points and a fitted line over the last segment."""
    st = stats([v for _, v in points])
    seg = since_last_drop(points, drop) if drop is not None else points
    restarted = seg[0][0] if seg and len(seg) < len(points) else None
    f = fit(seg)
    enough = f is not None and len(seg) >= max(2, min_points) and f.span_days >= min_span_days
    if not enough:
        return Trend(len(points), False, None, None, None, None,
                     f.span_days if f else 0.0, restarted, st)
    return Trend(len(points), True, round(f.slope_per_day, 4), round(f.slope_per_day * 7, 3),
                 round(f.fitted_first, 2), round(f.fitted_last, 2), round(f.span_days, 2),
                 restarted, st)


def days_until_full(points: list[tuple[float, float]], *, min_points: int = 3,
                    min_growth_per_day: float = 0.01, full: float = 100.0,
                    min_span_days: float = 1.0) -> float | None:
    """Days from the last point until the fitted line reaches `full`.

    None when there are too few points or the series is flat or shrinking: a
    forecast must come from a real upward trend, never from noise.
    """
    f = fit(points)
    if f is None or len(points) < max(2, min_points) or f.span_days < min_span_days:
        return None
    if not f.slope_per_day > min_growth_per_day:
        return None
    return max(0.0, (full - f.fitted_last) / f.slope_per_day)


def forecast_status(days: float | None, warning_days: float, critical_days: float) -> str:
    if days is None:
        return NORMAL
    if days <= critical_days:
        return CRITICAL
    if days <= warning_days:
        return WARNING
    return NORMAL


# ------------------------------------------------------------------ restart rule

@dataclass(frozen=True)
class RestartAdvice:
    """The restart rule's verdict for a host or a service, with every figure it used."""

    subject: str
    restart: bool
    uptime_days: float | None
    uptime_limit_days: float
    growth: float | None            # growth over the fitted segment
    growth_limit: float
    unit: str                       # points (host memory %) or percent (RSS)
    first: float | None
    last: float | None
    span_days: float
    reason: str                     # restart | uptime_short | growth_small | no_trend | no_uptime

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def restart_advice(subject: str, uptime_days: float | None, memory: Trend, *,
                   max_uptime_days: float, growth_limit: float,
                   relative: bool = False) -> RestartAdvice:
    """Recommend a restart when BOTH hold: up longer than the limit and memory growing.

    Long uptime alone is no reason (a stable service should stay up) and growth alone
    may be a workload change after a recent restart; together they point at a leak
    that only a restart in the maintenance window releases. For host memory the
    growth is in percentage points; for a service's RSS (``relative``) it is percent
    of the fitted start value.
    """
    unit = "percent" if relative else "points"
    growth = None
    if memory.enough and memory.first is not None and memory.last is not None:
        growth = memory.last - memory.first
        if relative:
            growth = 100 * growth / memory.first if memory.first > 0 else None
        growth = round(growth, 2) if growth is not None else None
    if uptime_days is None:
        reason = "no_uptime"
    elif growth is None:
        reason = "no_trend"
    elif uptime_days <= max_uptime_days:
        reason = "uptime_short"
    elif growth <= growth_limit:
        reason = "growth_small"
    else:
        reason = "restart"
    return RestartAdvice(subject, reason == "restart",
                         None if uptime_days is None else round(uptime_days, 1),
                         max_uptime_days, growth, growth_limit, unit, memory.first,
                         memory.last, memory.span_days, reason)


def uptime_segment_start(points: list[tuple[float, float]]) -> float | None:
    """Day of the last reboot seen in the quarter (uptime went down), else None."""
    start = None
    for i in range(1, len(points)):
        if points[i][1] < points[i - 1][1]:
            start = points[i][0]
    return start


# ------------------------------------------------------------------ findings

@dataclass
class Finding:
    """A bottleneck or a notable figure, named with its evidence."""

    kind: str            # see the perf.findings labels
    severity: str        # warning | critical
    scope: str           # host, or host/database
    subject: str         # table, index, filesystem, query id, setting
    metric: str
    value: float | int | str | None
    threshold: float | int | str | None
    evidence: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def worst(severities: list[str]) -> str:
    return max(severities, key=lambda s: _RANK.get(s, 0), default=NORMAL)


def _ratio(hit: float, miss: float) -> float | None:
    total = hit + miss
    return None if total <= 0 else 100.0 * hit / total


def host_findings(host: str, cpu: Trend, memory: Trend, th: dict[str, float]) -> list[Finding]:
    out = []
    for metric, t, limit in (("cpu_percent", cpu, th["cpu_p95_percent"]),
                             ("memory_percent", memory, th["memory_p95_percent"])):
        p95 = t.stats.get("p95")
        if p95 is not None and p95 >= limit:
            out.append(Finding(f"{metric.split('_')[0]}_saturated", WARNING, host, metric,
                               "p95", p95, limit, {"mean": t.stats.get("mean"),
                                                   "max": t.stats.get("max"), "n": t.n}))
    return out


def pg_findings(scope: str, fig: dict[str, Any], th: dict[str, float]) -> list[Finding]:
    """PostgreSQL bottlenecks from the role's figures (see roles/mhops_perf)."""
    out: list[Finding] = []
    s = fig.get("settings") or {}
    db = fig.get("database") or {}
    hit, read = float(db.get("blks_hit") or 0), float(db.get("blks_read") or 0)
    ratio = _ratio(hit, read)
    if ratio is not None and hit + read >= th["min_block_reads"] \
            and ratio < th["cache_hit_percent"]:
        out.append(Finding("pg_cache_hit", WARNING, scope, "shared_buffers",
                           "cache_hit_percent", round(ratio, 2), th["cache_hit_percent"],
                           {"blks_hit": int(hit), "blks_read": int(read),
                            "shared_buffers": s.get("shared_buffers")}))
    out.extend(_connections(scope, int(fig.get("connections") or 0),
                            int(s.get("max_connections") or 0),
                            int(s.get("superuser_reserved_connections") or 0), None, th))
    for x in fig.get("long_transactions") or []:
        out.append(Finding("long_transaction", WARNING, scope, f"pid {x.get('pid')}",
                           "xact_age_minutes", round(float(x.get("age_s") or 0) / 60, 2),
                           th["long_transaction_minutes"],
                           {k: x.get(k) for k in ("state", "application_name", "usename",
                                                  "xact_start", "query")}))
    out.extend(pg_seq_scans(scope, fig.get("tables") or [], fig.get("statements") or [], th))
    for ix in fig.get("unused_indexes") or []:
        if int(ix.get("size_bytes") or 0) >= th["unused_index_min_bytes"]:
            out.append(Finding("unused_index", WARNING, scope,
                               f"{ix.get('schema')}.{ix.get('index')}", "idx_scan", 0, 0,
                               {"table": ix.get("table"), "size_bytes": ix.get("size_bytes"),
                                "definition": ix.get("definition"),
                                "supports_fk": bool(ix.get("supports_fk")),
                                "stats_reset": s.get("stats_reset")}))
    return out


def pg_seq_scans(scope: str, tables: list[dict[str, Any]], statements: list[dict[str, Any]],
                 th: dict[str, float]) -> list[Finding]:
    """Large tables read mostly by whole-table scans: missing-index candidates."""
    out = []
    for t in tables:
        size, seq = int(t.get("size_bytes") or 0), int(t.get("seq_scan") or 0)
        live, read = float(t.get("n_live_tup") or 0), float(t.get("seq_tup_read") or 0)
        idx = int(t.get("idx_scan") or 0)
        if size < th["seq_scan_min_bytes"] or seq < th["seq_scan_min_count"] or live <= 0:
            continue
        share = 100.0 * read / seq / live
        if share < th["seq_scan_rows_percent"] or seq <= idx:
            continue
        name = str(t.get("table"))
        out.append(Finding("seq_scan", WARNING, scope, f"{t.get('schema')}.{name}",
                           "seq_scan", seq, th["seq_scan_min_count"],
                           {"seq_tup_read": int(read), "idx_scan": idx, "n_live_tup": int(live),
                            "rows_per_scan_percent": round(min(share, 100.0), 1),
                            "size_bytes": size,
                            "columns": index_columns(name, [q.get("query") or ""
                                                            for q in statements])}))
    return out


def mariadb_findings(scope: str, fig: dict[str, Any], th: dict[str, float]) -> list[Finding]:
    out: list[Finding] = []
    s = fig.get("settings") or {}
    st = {str(k).lower(): v for k, v in (fig.get("status") or {}).items()}
    req = float(st.get("innodb_buffer_pool_read_requests") or 0)
    reads = float(st.get("innodb_buffer_pool_reads") or 0)
    if req >= th["min_block_reads"]:
        ratio = 100.0 * (1 - reads / req)
        if ratio < th["buffer_pool_hit_percent"]:
            out.append(Finding("mariadb_buffer_pool_hit", WARNING, scope,
                               "innodb_buffer_pool_size", "buffer_pool_hit_percent",
                               round(ratio, 2), th["buffer_pool_hit_percent"],
                               {"read_requests": int(req), "reads": int(reads),
                                "innodb_buffer_pool_size": s.get("innodb_buffer_pool_size")}))
    out.extend(_connections(scope, int(st.get("threads_connected") or 0),
                            int(s.get("max_connections") or 0), 0,
                            int(st.get("max_used_connections") or 0), th))
    for x in fig.get("long_transactions") or []:
        out.append(Finding("long_transaction", WARNING, scope, f"thread {x.get('thread_id')}",
                           "xact_age_minutes", round(float(x.get("age_s") or 0) / 60, 2),
                           th["long_transaction_minutes"],
                           {k: x.get(k) for k in ("state", "user", "trx_started",
                                                  "rows_locked", "query")}))
    tables = {str(t.get("table")): t for t in fig.get("tables") or []}
    queries = [q.get("query") or "" for q in fig.get("statements") or []]
    for t in fig.get("full_scans") or []:
        name = str(t.get("table"))
        rows = int(t.get("rows_read") or 0)
        size = int((tables.get(name) or {}).get("size_bytes") or 0)
        live = int((tables.get(name) or {}).get("table_rows") or 0)
        # performance_schema counts rows read without an index, not scans: rows / table
        # rows is the number of whole-table reads.
        scans = round(rows / live, 1) if live > 0 else 0.0
        if size >= th["seq_scan_min_bytes"] and scans >= th["seq_scan_min_count"]:
            out.append(Finding("full_scan", WARNING, scope, name, "full_scans", scans,
                               th["seq_scan_min_count"],
                               {"rows_read": rows, "table_rows": live, "size_bytes": size,
                                "columns": index_columns(name, queries)}))
    for ix in fig.get("unused_indexes") or []:
        if int(ix.get("size_bytes") or 0) >= th["unused_index_min_bytes"]:
            out.append(Finding("unused_index", WARNING, scope,
                               f"{ix.get('table')}.{ix.get('index')}", "count_star", 0, 0,
                               {"table": ix.get("table"), "size_bytes": ix.get("size_bytes")}))
    return out


def _connections(scope: str, used: int, maximum: int, reserved: int, peak: int | None,
                 th: dict[str, float]) -> list[Finding]:
    usable = maximum - reserved
    if usable <= 0:
        return []
    top = max(used, peak or 0)
    pct = 100.0 * top / usable
    sev = CRITICAL if pct >= th["connections_critical_percent"] else (
        WARNING if pct >= th["connections_warning_percent"] else None)
    if sev is None:
        return []
    return [Finding("connections", sev, scope, "max_connections", "connections_percent",
                    round(pct, 1), th["connections_warning_percent"],
                    {"current": used, "peak": peak, "max_connections": maximum,
                     "reserved": reserved})]


_WORD = r"[A-Za-z_][A-Za-z0-9_$]*"
_CMP = re.compile(rf"(?:\b{_WORD}\.)?({_WORD})\s*(?:=|<=|>=|<|>|\bIN\b|\bBETWEEN\b|\bLIKE\b)",
                  re.I)
_KEYWORDS = {"and", "or", "not", "select", "from", "where", "null", "true", "false", "is",
             "case", "when", "then", "else", "end", "limit", "offset", "order", "by", "group"}


def index_columns(table: str, queries: list[str]) -> list[str]:
    """Columns the given statements filter `table` on (equality first), for an index hint.

    Only simple single-table WHERE clauses are read; anything else gives no hint and
    the record says to look at the statements instead of guessing.
    """
    seen: dict[str, int] = {}
    rx = re.compile(rf"\bFROM\s+(?:{_WORD}\.)?[`\"]?{re.escape(table)}[`\"]?\s"
                    rf"(?:(?:AS\s+)?{_WORD}\s+)?WHERE\s+(.*?)(?:\bGROUP\b|\bORDER\b|\bLIMIT\b|$)",
                    re.I | re.S)
    for q in queries:
        for m in rx.finditer(q or ""):
            for i, c in enumerate(_CMP.finditer(m.group(1))):
                col = c.group(1).strip('`"')
                if col.lower() not in _KEYWORDS:
                    rank = i if "=" in c.group(0) and "<" not in c.group(0) \
                        and ">" not in c.group(0) else 100 + i
                    seen[col] = min(seen.get(col, rank), rank)
    return [c for c, _ in sorted(seen.items(), key=lambda kv: kv[1])][:3]


def add_days(day: float) -> datetime:
    """A day number from as_days back to an aware UTC time."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)
