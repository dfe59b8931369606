"""Database maintenance: ``invoke db.maintain`` from survey to plan, apply and record.

Owns the maintenance run for the databases listed in ``mhops_databases``: the
settings (thresholds, timeouts, the maintenance window), the pure classification
of survey figures into plan items (PostgreSQL index bloat by pgstatindex or an
estimate, invalid and leftover ``_ccnew``/``_ccold`` indexes, tables needing
VACUUM/ANALYZE; MariaDB free space and stale statistics), the SQL of each item,
the judgement of each applied item (done, gave up on a lock, failed), the
``db_maintain`` record and the exit code. The SQL runs on the database host
through the ``mhops_db_maintain`` role (ansible-runner); this module decides, the
role only reads figures and runs the planned statements.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mhops import records, state, thresholds
from mhops.errors import MhopsError
from mhops.redact import Redactor

KIND = "db_maintain"
SCHEMA_VERSION = 1
PLAYBOOK = "playbooks/db_maintain.yml"
ENGINES = ("postgresql", "mariadb")
EXIT_OK, EXIT_GAVE_UP, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2, 3
DONE, GAVE_UP, FAILED = "done", "gave_up", "failed"

# Keys of the invoke.yaml `db.thresholds` mapping, with their defaults.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "index_bloat_percent": 30,         # rebuild a btree index with at least this much waste
    "index_min_bytes": 1048576,        # ... and at least this big (smaller: not worth it)
    "dead_tuple_percent": 20,          # VACUUM (ANALYZE) at this share of dead rows
    "dead_tuple_min": 1000,            # ... and at least this many dead rows
    "analyze_percent": 10,             # ANALYZE when this share of rows changed since
    "analyze_min_rows": 1000,          # ... and at least this many rows changed
    "fragmentation_percent": 30,       # MariaDB: data_free / (data + index) at least this
    "fragmentation_min_bytes": 67108864,  # ... and data_free at least this many bytes
    "stats_max_age_days": 7,           # MariaDB: ANALYZE changed tables with older stats
}

# Actions in the order they run: drop leftovers first (a retried rebuild needs the name),
# then VACUUM/ANALYZE, then rebuilds.
ACTION_ORDER = ("drop_index", "vacuum_analyze", "analyze", "reindex", "rebuild")
_LEFTOVER = re.compile(r"^(?P<parent>.+)_cc(?P<kind>new|old)\d*$")
# psql-style size units, binary
_UNITS = ("B", "kB", "MB", "GB", "TB")


# ---------------------------------------------------------------- settings (pure)

def validate_thresholds(raw: Any, where: str = "db.thresholds") -> dict[str, float]:
    """Merge a thresholds mapping over the defaults, refusing unknown keys and bad values."""
    try:
        return thresholds.validate_flat(raw, DEFAULT_THRESHOLDS, where)
    except thresholds.ThresholdError as exc:
        raise MhopsError(str(exc)) from None


def parse_window(text: str) -> tuple[int, int]:
    """``"01:00-05:00"`` -> minutes of the day (start, end); end may be 24:00."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*", str(text or ""))
    if not m:
        raise MhopsError(f"db.window {text!r}: expected HH:MM-HH:MM, e.g. 01:00-05:00")
    h1, m1, h2, m2 = map(int, m.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 24 * 60 or start == end:
        raise MhopsError(f"db.window {text!r}: not a valid time range")
    return start, end


def in_window(now: datetime, window: str) -> bool:
    """Whether the local time `now` falls inside the window (which may wrap midnight)."""
    start, end = parse_window(window)
    minute = now.hour * 60 + now.minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


# -------------------------------------------------------------- classification (pure)

@dataclass
class Item:
    """One planned maintenance step on one object."""

    host: str
    database: str
    engine: str
    kind: str       # index_bloat, invalid_index, leftover_index, retry_rebuild,
    #                 dead_tuples, stale_stats, fragmentation
    action: str     # drop_index, reindex, vacuum_analyze, analyze, rebuild
    schema: str
    name: str       # the object acted on (index or table)
    table: str
    size_bytes: int | None = None
    value: float | None = None      # bloat %, dead %, changed %, free %
    threshold: float | None = None
    method: str = ""                # pgstatindex, estimate, information_schema, pg_stat
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @property
    def id(self) -> str:
        return f"{self.host}/{self.database}/{self.action}/{self.target}"

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(id=self.id, target=self.target)
        return d


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover


def bloat_from_pgstatindex(stat: dict[str, Any], fillfactor: int, block_size: int) -> float:
    """Share of a btree index that a fresh build would not need (0..1).

    A rebuilt index packs its leaf pages to the fillfactor; the live leaf data is
    ``leaf_pages * avg_leaf_density``, so a fresh build needs that divided by the
    fillfactor, plus the internal pages and the metapage. Empty and deleted pages
    are all waste.
    """
    total = stat["index_size"] / block_size
    if total <= 1:
        return 0.0
    leaf = stat["leaf_pages"] * float(stat["avg_leaf_density"] or 0) / max(fillfactor, 10)
    needed = math.ceil(leaf) + stat["internal_pages"] + 1
    return max(0.0, min(1.0, 1 - needed / total))


def bloat_estimate(reltuples: float, relpages: int, key_width: int, block_size: int,
                   fillfactor: int) -> float | None:
    """Estimate btree waste from the catalogue when pgstattuple is not installed.

    Each leaf entry costs its key (average width from pg_stats) plus the 8-byte index
    tuple header, MAXALIGNed, plus a 4-byte line pointer; pages lose 24 bytes of
    header and 16 of btree special space. None when the figures are not there
    (never analyzed, an expression key without statistics).
    """
    if reltuples is None or reltuples < 0 or relpages <= 1 or key_width <= 0:
        return None
    entry = (8 + key_width + 7) // 8 * 8 + 4
    usable = (block_size - 24 - 16) * max(fillfactor, 10) / 100
    leaf = math.ceil(reltuples * entry / usable)
    internal = math.ceil(leaf * entry / (block_size - 40))
    needed = leaf + internal + 1
    return max(0.0, min(1.0, 1 - needed / relpages))


def classify_postgresql(host: str, database: str, settings: dict[str, Any],
                        indexes: list[dict[str, Any]], tables: list[dict[str, Any]],
                        th: dict[str, float]) -> tuple[list[Item], list[str]]:
    """Plan items for one PostgreSQL database, and notes on what could not be judged."""
    block = int(settings.get("block_size") or 8192)
    use_stat = bool(settings.get("pgstattuple_schema"))
    items: list[Item] = []
    notes: list[str] = []
    by_name = {(i["schema"], i["index"]): i for i in indexes}
    rebuilt: set[tuple[str, str]] = set()

    def mk(kind, action, ix, **kw) -> Item:
        return Item(host=host, database=database, engine="postgresql", kind=kind,
                    action=action, schema=ix["schema"], name=ix["index"], table=ix["table"],
                    size_bytes=ix.get("size_bytes"), **kw)

    for ix in indexes:
        key = (ix["schema"], ix["index"])
        m = _LEFTOVER.match(ix["index"])
        if not ix["valid"] and m:
            items.append(mk("leftover_index", "drop_index", ix, method="pg_index",
                            evidence={"valid": False, "leftover_of": m["kind"]}))
            parent = by_name.get((ix["schema"], m["parent"]))
            # _ccnew: the swap never happened, the old index is still in use: rebuild it.
            # _ccold: the swap happened, only the old copy is left to drop.
            if m["kind"] == "new" and parent and parent["valid"] and \
                    (ix["schema"], m["parent"]) not in rebuilt:
                rebuilt.add((ix["schema"], m["parent"]))
                items.append(mk("retry_rebuild", "reindex", parent, method="pg_index",
                                evidence={"interrupted_by": ix["index"]}))
        elif not ix["valid"]:
            if key not in rebuilt:
                rebuilt.add(key)
                items.append(mk("invalid_index", "reindex", ix, method="pg_index",
                                evidence={"valid": False}))
        elif ix["method"] == "btree" and (ix.get("size_bytes") or 0) >= th["index_min_bytes"]:
            stat = ix.get("pgstatindex")
            if use_stat and stat:
                ratio, method = bloat_from_pgstatindex(stat, ix["fillfactor"], block), \
                    "pgstatindex"
                evidence = {k: stat.get(k) for k in ("leaf_pages", "internal_pages",
                                                     "empty_pages", "deleted_pages",
                                                     "avg_leaf_density")}
            else:
                ratio = None
                if ix.get("stats_columns") == ix.get("columns"):
                    ratio = bloat_estimate(ix["reltuples"], ix["relpages"],
                                           ix["stats_width"], block, ix["fillfactor"])
                method = "estimate"
                evidence = {k: ix.get(k) for k in ("reltuples", "relpages", "stats_width")}
            if ratio is None:
                notes.append(f"{database}: {ix['schema']}.{ix['index']}: bloat not "
                             "measurable (no statistics; run ANALYZE or install pgstattuple)")
                continue
            pct = round(ratio * 100, 1)
            if pct >= th["index_bloat_percent"] and key not in rebuilt:
                rebuilt.add(key)
                evidence["fillfactor"] = ix["fillfactor"]
                items.append(mk("index_bloat", "reindex", ix, value=pct,
                                threshold=th["index_bloat_percent"], method=method,
                                evidence=evidence))
    for t in tables:
        live, dead = int(t.get("n_live_tup") or 0), int(t.get("n_dead_tup") or 0)
        mod = int(t.get("n_mod_since_analyze") or 0)
        evidence = {k: t.get(k) for k in ("n_live_tup", "n_dead_tup", "n_mod_since_analyze",
                                          "last_vacuum", "last_autovacuum", "last_analyze",
                                          "last_autoanalyze")}
        base = {"host": host, "database": database, "engine": "postgresql",
                "schema": t["schema"], "name": t["table"], "table": t["table"],
                "size_bytes": t.get("size_bytes"), "method": "pg_stat", "evidence": evidence}
        dead_pct = round(100 * dead / (live + dead), 1) if live + dead else 0.0
        mod_pct = round(100 * mod / max(live, 1), 1)
        never = not (t.get("last_analyze") or t.get("last_autoanalyze"))
        if dead >= th["dead_tuple_min"] and dead_pct >= th["dead_tuple_percent"]:
            items.append(Item(kind="dead_tuples", action="vacuum_analyze", value=dead_pct,
                              threshold=th["dead_tuple_percent"], **base))
        elif mod >= th["analyze_min_rows"] and (mod_pct >= th["analyze_percent"] or never):
            items.append(Item(kind="stale_stats", action="analyze", value=mod_pct,
                              threshold=th["analyze_percent"], **base))
    return order(items), notes


def classify_mariadb(host: str, database: str, tables: list[dict[str, Any]],
                     th: dict[str, float]) -> tuple[list[Item], list[str]]:
    """Plan items for one MariaDB database from information_schema.TABLES figures."""
    items: list[Item] = []
    notes: list[str] = []
    for t in tables:
        used = int(t.get("data_length") or 0) + int(t.get("index_length") or 0)
        free = int(t.get("data_free") or 0)
        pct = round(100 * free / used, 1) if used else (100.0 if free else 0.0)
        engine = str(t.get("engine") or "")
        base = {"host": host, "database": database, "engine": "mariadb", "schema": "",
                "name": t["table"], "table": t["table"], "size_bytes": used}
        evidence = {"data_length": t.get("data_length"), "index_length": t.get("index_length"),
                    "data_free": free, "table_rows": t.get("table_rows"),
                    "engine": engine}
        fragmented = free >= th["fragmentation_min_bytes"] and pct >= th["fragmentation_percent"]
        if fragmented and engine.lower() != "innodb":
            notes.append(f"{database}: {t['table']}: {engine} table has {human_bytes(free)} "
                         "free but cannot be rebuilt online; not planned")
            continue
        if fragmented:
            items.append(Item(kind="fragmentation", action="rebuild", value=pct,
                              threshold=th["fragmentation_percent"],
                              method="information_schema", evidence=evidence, **base))
            continue
        if engine.lower() != "innodb":
            continue
        stats, changed, now = t.get("stats_epoch"), t.get("update_epoch"), t.get("now_epoch")
        evidence = {"stats_epoch": stats, "update_epoch": changed,
                    "table_rows": t.get("table_rows")}
        if stats is None and int(t.get("table_rows") or 0) > 0:
            items.append(Item(kind="stale_stats", action="analyze", method="innodb_table_stats",
                              evidence=evidence, **base))
        elif stats is not None and changed is not None and now is not None \
                and changed > stats and now - stats >= th["stats_max_age_days"] * 86400:
            age = round((now - stats) / 86400, 1)
            items.append(Item(kind="stale_stats", action="analyze", value=age,
                              threshold=th["stats_max_age_days"], method="innodb_table_stats",
                              evidence=evidence, **base))
    return order(items), notes


def order(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda i: (i.host, i.database, ACTION_ORDER.index(i.action),
                                        i.target))


# ------------------------------------------------------------------ SQL (pure)

def pg_ident(*parts: str) -> str:
    return ".".join('"' + p.replace('"', '""') + '"' for p in parts if p)


def pg_literal(text: str) -> str:
    # standard_conforming_strings is on (the default since 9.1): only quotes are special.
    return "'" + text.replace("'", "''") + "'"


def my_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def my_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def statements(item: Item) -> tuple[list[str], int]:
    """The statements of one item and the position of the one doing the work.

    Sizes are read just before and after in the same session; the role adds the
    lock and statement timeouts in front (PostgreSQL) or as session variables.
    """
    if item.engine == "postgresql":
        rel = pg_ident(item.schema, item.name)
        tab = pg_ident(item.schema, item.table)
        if item.action in ("reindex", "drop_index"):
            size = (f"SELECT coalesce(pg_relation_size(to_regclass({pg_literal(rel)})), 0) "
                    "AS bytes")
        else:
            size = f"SELECT pg_table_size(to_regclass({pg_literal(tab)})) AS bytes"
        work = {"reindex": f"REINDEX INDEX CONCURRENTLY {rel}",
                "drop_index": f"DROP INDEX CONCURRENTLY IF EXISTS {rel}",
                "vacuum_analyze": f"VACUUM (ANALYZE) {tab}",
                "analyze": f"ANALYZE {tab}"}[item.action]
        return [size, work, size], 1
    size = ("SELECT CAST(DATA_LENGTH + INDEX_LENGTH AS SIGNED) AS bytes, "
            "CAST(DATA_FREE AS SIGNED) AS free FROM information_schema.TABLES "
            f"WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = {my_literal(item.name)}")
    t = my_ident(item.name)
    if item.action == "rebuild":
        # INPLACE/LOCK=NONE makes the server refuse rather than silently copy under a lock.
        return [size, f"ALTER TABLE {t} FORCE, ALGORITHM=INPLACE, LOCK=NONE",
                f"ANALYZE TABLE {t}", size], 1
    return [size, f"ANALYZE TABLE {t}", size], 1


_GAVE_UP = re.compile(r"lock timeout|lock wait timeout|deadlock", re.I)
_STMT_TIMEOUT = re.compile(r"statement timeout|max_statement_time", re.I)


@dataclass
class Applied:
    status: str            # done, gave_up, failed
    reason: str
    before_bytes: int | None
    after_bytes: int | None
    duration_s: float
    free_before: int | None = None
    free_after: int | None = None
    started_utc: str | None = None
    finished_utc: str | None = None


def judge(item: Item, entry: dict[str, Any] | None, lock_timeout_s: float) -> Applied:
    """Turn the role's raw result for one item into done / gave up / failed (with when)."""
    a = _judge(item, entry, lock_timeout_s)
    if entry and entry.get("t0") and entry.get("t1"):
        a.started_utc, a.finished_utc = _stamp(entry["t0"]), _stamp(entry["t1"])
    return a


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def _judge(item: Item, entry: dict[str, Any] | None, lock_timeout_s: float) -> Applied:
    if entry is None:
        return Applied(FAILED, "no result from Ansible for this item", item.size_bytes,
                       None, 0.0)
    res = entry.get("result") or {}
    wall = round(max(0.0, float(entry.get("t1", 0)) - float(entry.get("t0", 0))), 2)
    rows = res.get("query_all_results") if item.engine == "postgresql" \
        else res.get("query_result")
    sql, work = statements(item)
    # The role puts its SETs (timeouts, session settings) in front of the item's statements.
    prefix = max(0, len(rows) - len(sql)) if rows is not None else 0
    if rows is None:  # the module failed: the message says why
        msg = " ".join(str(res.get("msg") or "unknown error").split())
        reason = _error_reason(msg)
        if _GAVE_UP.search(msg):
            extra = (" An interrupted REINDEX CONCURRENTLY may leave an invalid *_ccnew index; "
                     "the next run drops it.") if item.action == "reindex" else ""
            return Applied(GAVE_UP, f"lock not granted within {lock_timeout_s:g}s "
                           f"(held by another session; nothing was killed): {reason}.{extra}",
                           item.size_bytes, item.size_bytes, wall)
        if _STMT_TIMEOUT.search(msg):
            return Applied(FAILED, f"statement timeout: {reason}", item.size_bytes, None, wall)
        return Applied(FAILED, reason, item.size_bytes, None, wall)
    rows = rows[prefix:]
    times = (res.get("execution_time_ms") or [])[prefix:]

    def first(i: int) -> dict[str, Any]:
        r = rows[i] if i < len(rows) else None
        return r[0] if isinstance(r, list) and r else {}

    before, after = first(0), first(len(sql) - 1)
    for r in rows[work:-1]:  # ANALYZE TABLE reports its errors as rows, not exceptions
        for row in r if isinstance(r, list) else []:
            if str(row.get("Msg_type", "")).lower() == "error":
                return Applied(FAILED, str(row.get("Msg_text")), before.get("bytes"),
                               after.get("bytes"), wall)
    duration = sum(times[work:len(sql) - 1]) / 1000 if len(times) >= len(sql) - 1 else wall
    return Applied(DONE, "", before.get("bytes"), after.get("bytes"),
                   round(duration, 3), before.get("free"), after.get("free"))


def _error_reason(msg: str) -> str:
    # Drop the module's echo of the statement list: the reason is the server's message.
    m = re.search(r"'(?: None| args \[[^\]]*\]): (.*?)(?:,? query list:|$)", msg, re.S)
    return (m.group(1) if m else msg)[:400].strip()


def exit_code(applied: list[Applied], survey_failures: int) -> int:
    if survey_failures or any(a.status == FAILED for a in applied):
        return EXIT_FAILED
    if any(a.status == GAVE_UP for a in applied):
        return EXIT_GAVE_UP
    return EXIT_OK


# ----------------------------------------------------------------------- the run

@dataclass
class Options:
    inventory: list[str]
    records_dir: Path
    state_dir: Path
    limit: str | None = None
    databases: list[str] = field(default_factory=list)   # logical names; empty: all
    apply: bool = False
    force: bool = False
    window: str = "01:00-05:00"
    thresholds: dict[str, Any] = field(default_factory=dict)
    lock_timeout_s: float = 5
    statement_timeout_s: float = 3600
    lang: str = "zh-CN"
    operator: str = ""
    timezone: str = "Asia/Shanghai"
    vault_password_file: str | None = None
    now: Callable[[], datetime] | None = None           # tests: a fixed local time
    echo: Callable[[str], None] = print


@dataclass
class _Db:
    host: str
    name: str
    engine: str
    database: str
    entry: dict[str, Any]
    method: str = ""
    server_version: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)


def _local_now(opts: Options) -> datetime:
    if opts.now:
        return opts.now()
    try:
        from zoneinfo import ZoneInfo
        return datetime.now(ZoneInfo(opts.timezone))
    except Exception:  # no tz database: the machine's local time
        return datetime.now().astimezone()


def _databases(selection, wanted: list[str]) -> list[_Db]:
    """The mhops_databases entries of the selected hosts, checked (file/line on error)."""
    out: list[_Db] = []
    for h in selection.hosts:
        dbs = h.vars.get("mhops_databases")
        if dbs is None:
            continue
        path, line = h.where("mhops_databases")
        if not isinstance(dbs, list):
            raise MhopsError(f"host {h.name}: mhops_databases must be a list", path=path,
                             line=line)
        seen = set()
        for i, d in enumerate(dbs):
            p, ln = h.where(f"mhops_databases[{i}]")
            where = {"path": p or path, "line": ln or line}
            if not isinstance(d, dict) or not d.get("name") or not d.get("database"):
                raise MhopsError(f"host {h.name}: mhops_databases[{i}] needs name and "
                                 "database", **where)
            if d.get("engine") not in ENGINES:
                raise MhopsError(f"host {h.name}: mhops_databases[{i}] ({d['name']}): engine "
                                 f"{d.get('engine')!r} is not one of {', '.join(ENGINES)}",
                                 **where)
            if d["name"] in seen:
                raise MhopsError(f"host {h.name}: database name {d['name']!r} appears twice",
                                 **where)
            seen.add(d["name"])
            if not wanted or d["name"] in wanted:
                out.append(_Db(h.name, str(d["name"]), d["engine"], str(d["database"]), d))
    if not out and not any("mhops_databases" in h.vars for h in selection.hosts):
        raise MhopsError("no selected host defines mhops_databases in inventory "
                         + ", ".join(selection.sources))
    unknown = sorted(set(wanted) - {d.name for d in out})
    if unknown:
        raise MhopsError(f"--database {', '.join(unknown)}: not in any selected host's "
                         "mhops_databases")
    return out


def run(opts: Options) -> records.Outcome:
    from mhops.inventory import select
    from mhops.runner import run_playbook

    records.labels(opts.lang)
    th = validate_thresholds(opts.thresholds)
    for key in ("lock_timeout_s", "statement_timeout_s"):
        v = getattr(opts, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise MhopsError(f"db.{key} must be a positive number of seconds, got {v!r}")
    parse_window(opts.window)
    local = _local_now(opts)
    inside = in_window(local, opts.window)
    if opts.apply and not inside and not opts.force:
        raise MhopsError(f"outside the maintenance window {opts.window} (local time now "
                         f"{local:%H:%M} {opts.timezone}); nothing was changed. Run inside "
                         "the window or pass --force")
    started = records.utc_now()
    selection = select(opts.inventory, opts.limit, opts.vault_password_file)
    dbs = _databases(selection, list(opts.databases))
    redactor = Redactor(secrets=selection.secrets)
    hosts = sorted({d.host for d in dbs})
    common = {"mhops_db_maintain_names": [d.name for d in dbs],
              "mhops_db_maintain_index_min_bytes": int(th["index_min_bytes"]),
              "mhops_db_maintain_lock_timeout_s": opts.lock_timeout_s,
              "mhops_db_maintain_statement_timeout_s": opts.statement_timeout_s}
    w = records.labels(opts.lang)[KIND]
    with state.locked(opts.state_dir, KIND):
        survey = run_playbook(PLAYBOOK, inventory=opts.inventory, limit=",".join(hosts),
                              extravars={**common, "mhops_db_maintain_action": "survey"},
                              task_action="ansible.builtin.set_fact", redactor=redactor)
        plan = _plan(dbs, survey.hosts, th)
        for it in plan:
            opts.echo(f"[{w['plan_word']}] {_line(it, opts.lang)}")
        if not plan:
            opts.echo(w["plan_empty"])
        for d in dbs:
            for n in d.notes:
                opts.echo(f"  {w['note']}: {n}")
            if d.error:
                opts.echo(f"  {w['survey_failed']}: {d.host}/{d.name}: {d.error}")
        applied: dict[str, Applied] = {}
        if opts.apply and plan:
            applied = _apply(plan, opts, common, redactor, run_playbook)
            for it in plan:
                a = applied[it.id]
                size = (f"{human_bytes(a.before_bytes)} -> {human_bytes(a.after_bytes)}"
                        if a.status == DONE else human_bytes(a.before_bytes))
                opts.echo(f"[{w['results'][a.status]}] {it.id}: {size}, {a.duration_s:g}s"
                          + (f" — {a.reason}" if a.reason else ""))
        record = _record(opts, selection, dbs, plan, applied, th, started, local, inside)
        run_dir = records.write_run(opts.records_dir, KIND, record, redactor)
    status = records.labels(opts.lang)["statuses"][record["status"]]
    opts.echo(f"{w['overall']}: {status} (exit {record['exit_code']})")
    opts.echo(str(run_dir))
    return records.Outcome(record["exit_code"], run_dir, record)


def _plan(dbs: list[_Db], outcomes: dict[str, Any], th: dict[str, float]) -> list[Item]:
    plan: list[Item] = []
    for d in dbs:
        o = outcomes.get(d.host)
        if o is None or o.status != "ok":
            d.error = o.message if o else "no result from Ansible"
            continue
        rep = o.result.get("ansible_facts", {}).get("mhops_db_maintain_report", {})
        if d.engine == "postgresql":
            settings = next((r for r in rep.get("pg_settings", []) if r.get("item") == d.name),
                            None)
            objects = next((r for r in rep.get("pg_objects", [])
                            if (r.get("item") or {}).get("item") == d.name), None)
            if settings is None or "query_result" not in settings:
                d.error = _error_reason(str((settings or {}).get("msg") or "not surveyed"))
                continue
            if objects is None or "query_all_results" not in objects:
                d.error = _error_reason(str((objects or {}).get("msg") or "not surveyed"))
                continue
            s = settings["query_result"][0]
            d.server_version = str(s.get("server_version", ""))
            d.method = "pgstatindex" if s.get("pgstattuple_schema") else "estimate"
            _, ix, tabs = (list(x) if isinstance(x, list) else [] for x in
                           objects["query_all_results"])
            items, d.notes = classify_postgresql(d.host, d.name, s, ix, tabs, th)
        else:
            r = next((r for r in rep.get("mariadb", []) if r.get("item") == d.name), None)
            if r is None or "query_result" not in r:
                d.error = _error_reason(str((r or {}).get("msg") or "not surveyed"))
                continue
            rows = r["query_result"][0] if r["query_result"] else []
            d.server_version = str(rows[0]["server_version"]) if rows else ""
            d.method = "information_schema"
            items, d.notes = classify_mariadb(d.host, d.name, rows, th)
        plan.extend(items)
    return plan


def _apply(plan: list[Item], opts: Options, common: dict[str, Any], redactor: Redactor,
           run_playbook) -> dict[str, Applied]:
    by_host: dict[str, list[Item]] = {}
    for it in plan:
        by_host.setdefault(it.host, []).append(it)
    out: dict[str, Applied] = {}
    for host, items in by_host.items():
        payload = [{"id": it.id, "database": it.database, "engine": it.engine,
                    "sql": statements(it)[0]} for it in items]
        t0 = time.monotonic()
        run = run_playbook(PLAYBOOK, inventory=opts.inventory, limit=host,
                           extravars={**common, "mhops_db_maintain_action": "apply",
                                      "mhops_db_maintain_items": payload},
                           task_action="ansible.builtin.set_fact", redactor=redactor)
        o = run.hosts.get(host)
        done = {}
        if o is not None and o.status == "ok":
            rep = o.result.get("ansible_facts", {}).get("mhops_db_maintain_report", {})
            done = {e.get("id"): e for e in rep.get("applied", [])}
        for it in items:
            if it.id in done:
                out[it.id] = judge(it, done[it.id], opts.lock_timeout_s)
            else:
                why = o.message if o is not None else "no result from Ansible"
                out[it.id] = Applied(FAILED, f"not run: {why}", it.size_bytes, None,
                                     round(time.monotonic() - t0, 2))
    return out


def _line(it: Item, lang: str) -> str:
    w = records.labels(lang)[KIND]
    what = w["kinds"].get(it.kind, it.kind)
    measure = ""
    if it.value is not None:
        unit = w["days"] if it.kind == "stale_stats" and it.engine == "mariadb" else "%"
        measure = f" {it.value:g}{unit} ≥ {it.threshold:g}{unit}"
    method = f" ({it.method})" if it.method else ""
    return (f"{it.host}/{it.database} {w['actions'].get(it.action, it.action)} {it.target}: "
            f"{what}{measure}, {human_bytes(it.size_bytes)}{method}")


def _record(opts, selection, dbs, plan, applied, th, started, local, inside) -> dict[str, Any]:
    finished = records.utc_now()
    rows = []
    for it in plan:
        row = it.as_dict()
        row["line"] = _line(it, opts.lang)
        a = applied.get(it.id)
        if a is not None:
            row.update(status=a.status, reason=a.reason or None, before_bytes=a.before_bytes,
                       after_bytes=a.after_bytes, duration_s=a.duration_s,
                       free_before=a.free_before, free_after=a.free_after,
                       started_utc=a.started_utc, finished_utc=a.finished_utc)
        else:
            row.update(status="planned", reason=None, before_bytes=it.size_bytes,
                       after_bytes=None, duration_s=None, free_before=None, free_after=None,
                       started_utc=None, finished_utc=None)
        rows.append(row)
    failures = sum(1 for d in dbs if d.error)
    code = exit_code(list(applied.values()), failures)
    counts = {s: sum(1 for a in applied.values() if a.status == s)
              for s in (DONE, GAVE_UP, FAILED)}
    done = [applied[i.id] for i in plan if i.id in applied and applied[i.id].status == DONE]
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": KIND,
        "run_id": records.run_id(KIND, started),
        "lang": opts.lang,
        "mode": "apply" if opts.apply else "plan",
        "status": {EXIT_OK: "normal", EXIT_GAVE_UP: "warning"}.get(code, "critical"),
        "exit_code": code,
        "time": records.time_block(started, finished, opts.timezone),
        "window": {"configured": opts.window, "local_time": local.strftime("%H:%M"),
                   "inside": inside, "forced": bool(opts.force and opts.apply and not inside)},
        "operator": records.operator_name(opts.operator),
        "scope": {"inventory": list(selection.sources), "limit": selection.limit,
                  "hosts": sorted({d.host for d in dbs})},
        "settings": {"thresholds": th, "lock_timeout_s": opts.lock_timeout_s,
                     "statement_timeout_s": opts.statement_timeout_s},
        "databases": [{"host": d.host, "name": d.name, "engine": d.engine,
                       "database": d.database, "server_version": d.server_version,
                       "method": d.method, "error": d.error or None, "notes": d.notes,
                       "planned": sum(1 for i in plan if i.host == d.host
                                      and i.database == d.name)} for d in dbs],
        "plan": rows,
        "summary": {"planned": len(plan), **counts,
                    "survey_failures": failures,
                    "bytes_before": sum(a.before_bytes or 0 for a in done),
                    "bytes_after": sum(a.after_bytes or 0 for a in done),
                    "duration_s": round(sum(a.duration_s for a in applied.values()), 2)},
        "ops_revision": records.ops_revision(),
    }

