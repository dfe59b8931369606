"""Database connections exhausted (PostgreSQL, MariaDB): top clients, idle transactions."""

from __future__ import annotations

import json

META = {
    "id": "db-connections",
    "title": {"zh-CN": "数据库连接数耗尽", "en": "Database connections exhausted"},
    "symptoms": {
        "zh-CN": ["应用报错 too many connections / remaining connection slots are reserved",
                  "挂号、缴费接口超时，连接池等待", "数据库中大量“idle in transaction”会话"],
        "en": ["Applications report too many connections / remaining connection slots are "
               "reserved", "Registration and payment APIs time out waiting for the pool",
               "Many sessions are idle in transaction"],
    },
    "classification": {"scope": "hospital", "type": "software", "severity": "clinical"},
    "diagnosis": [
        ("diagnose_usage", "比较当前连接数与 max_connections",
         "Compare the connections in use with max_connections"),
        ("diagnose_top_clients", "按用户、客户端地址、应用和库统计连接最多的客户端",
         "Count connections by user, client address, application and database"),
        ("diagnose_idle_transactions", "找出空闲事务（idle in transaction）超过 N 分钟的会话",
         "Find sessions idle in a transaction for more than N minutes"),
    ],
    "remediation": [
        ("remediate_terminate_idle",
         "逐个确认后终止超时的空闲事务会话（pg_terminate_backend / KILL CONNECTION）",
         "Terminate each long idle-in-transaction session, only after confirmation "
         "(pg_terminate_backend / KILL CONNECTION)"),
    ],
    "verification": [
        ("verify_sessions_gone", "用 Testinfra 重新查询，确认被终止的会话已消失、连接数低于阈值",
         "With Testinfra, query again: the terminated sessions are gone, usage below threshold"),
    ],
    "owner": "数据库组 / DBA team",
    "reviewed": "2026-11-28",
    "settings": {
        "engine": "postgresql",        # postgresql or mariadb
        "host": "127.0.0.1",
        "port": 0,                     # 0 = the engine's default
        "user": "",                    # "" = postgres / root
        "password": "",
        "database": "",                # database to connect to ("" = postgres / none)
        "databases": [],               # only sessions on these databases; [] = all
        "idle_minutes": 10,
        "usage_warning": 80,           # percent of max_connections
        "usage_critical": 95,
        "top": 10,
        "max_terminate": 20,           # never more sessions than this in one run
    },
}

_PG_IDLE = """select coalesce(json_agg(t), '[]') from (
 select pid, usename as "user", datname as db, coalesce(client_addr::text, 'local') as client,
 application_name as app, round((extract(epoch from now() - state_change) / 60)::numeric, 1)
 as minutes, left(query, 200) as query from pg_stat_activity
 where state in ('idle in transaction', 'idle in transaction (aborted)')
 and now() - state_change > interval '{seconds} seconds' {filter} order by minutes desc) t"""

_MY_IDLE = """SELECT COALESCE(JSON_ARRAYAGG(JSON_OBJECT('pid', p.id, 'user', p.user, 'db', p.db,
 'client', SUBSTRING_INDEX(p.host, ':', 1), 'app', '', 'query', '',
 'minutes', ROUND(TIMESTAMPDIFF(SECOND, t.trx_started, NOW()) / 60, 1))), '[]')
 FROM information_schema.innodb_trx t JOIN information_schema.processlist p
 ON p.id = t.trx_mysql_thread_id WHERE p.command = 'Sleep'
 AND t.trx_started < NOW() - INTERVAL {seconds} SECOND {filter}"""


def _pg(rb) -> bool:
    engine = rb.settings["engine"]
    if engine not in ("postgresql", "mariadb"):
        raise ValueError(f"engine {engine!r}: valid: postgresql, mariadb")
    return engine == "postgresql"


def _client(rb, sql: str) -> str:
    s, q = rb.settings, rb.quote
    if _pg(rb):
        env = f"PGPASSWORD={q(s['password'])} " if s["password"] else ""
        return (f"{env}psql -X -q -At -v ON_ERROR_STOP=1 -h {q(s['host'])} "
                f"-p {int(s['port'] or 5432)} -U {q(s['user'] or 'postgres')} "
                f"-d {q(s['database'] or 'postgres')} -c {q(sql)}")
    env = f"MYSQL_PWD={q(s['password'])} " if s["password"] else ""
    db = f"-D {q(s['database'])} " if s["database"] else ""
    return (f"{env}mariadb -N -B --raw -h {q(s['host'])} -P {int(s['port'] or 3306)} "
            f"-u {q(s['user'] or 'root')} {db}-e {q(sql)}")


def query(run, rb, sql: str):
    """One JSON value from the database; `run` is c.run or rb.probe (Testinfra)."""
    res = run(_client(rb, sql))
    code = getattr(res, "exited", getattr(res, "rc", 1))
    if code != 0:
        raise RuntimeError(f"{rb.settings['engine']} query failed: "
                           f"{(res.stderr or res.stdout).strip()[:300]}")
    return json.loads(res.stdout.strip() or "null")


def _filter(rb, column: str) -> str:
    names = ["'" + str(d).replace("'", "''") + "'" for d in rb.settings["databases"]]
    return f"and {column} in ({', '.join(names)})" if names else ""


def idle_sessions(run, rb) -> list[dict]:
    seconds = int(float(rb.settings["idle_minutes"]) * 60)
    if _pg(rb):
        sql = _PG_IDLE.format(seconds=seconds, filter=_filter(rb, "datname"))
    else:
        sql = _MY_IDLE.format(seconds=seconds, filter=_filter(rb, "p.db").replace("and", "AND"))
    return query(run, rb, " ".join(sql.split())) or []


def _usage(run, rb) -> dict:
    if _pg(rb):
        sql = ("select json_build_object('used', (select count(*) from pg_stat_activity "
               "where backend_type = 'client backend'), 'max', "
               "current_setting('max_connections')::int)")
    else:
        sql = ("SELECT JSON_OBJECT('used', (SELECT COUNT(*) FROM information_schema.processlist"
               " WHERE command <> 'Daemon'), 'max', @@max_connections)")
    u = query(run, rb, sql)
    u["percent"] = round(100.0 * u["used"] / max(1, u["max"]), 1)
    return u


def diagnose_usage(c, rb):
    s = rb.settings
    u = _usage(c.run, rb)
    status = rb.level(u["percent"], s["usage_warning"], s["usage_critical"])
    return rb.result(status, rb.text(f"连接 {u['used']}/{u['max']}（{u['percent']}%）",
                                     f"connections {u['used']}/{u['max']} ({u['percent']}%)"),
                     **u)


def diagnose_top_clients(c, rb):
    top = int(rb.settings["top"])
    if _pg(rb):
        sql = ("select coalesce(json_agg(t), '[]') from (select usename as \"user\", "
               "coalesce(client_addr::text, 'local') as client, application_name as app, "
               "datname as db, count(*) as n from pg_stat_activity where backend_type = "
               f"'client backend' group by 1, 2, 3, 4 order by n desc limit {top}) t")
    else:
        sql = ("SELECT COALESCE(JSON_ARRAYAGG(JSON_OBJECT('user', user, 'client', client, "
               "'db', db, 'n', n)), '[]') FROM (SELECT user, SUBSTRING_INDEX(host, ':', 1) AS "
               "client, db, COUNT(*) AS n FROM information_schema.processlist GROUP BY 1, 2, 3 "
               f"ORDER BY n DESC LIMIT {top}) t")
    rows = query(c.run, rb, sql) or []
    shown = "; ".join(f"{r['user']}@{r['client']} {r.get('db') or ''}: {r['n']}" for r in rows[:5])
    return rb.result("normal", shown or rb.text("无客户端连接", "no client connections"),
                     clients=rows)


def diagnose_idle_transactions(c, rb):
    rows = idle_sessions(c.run, rb)
    rb.facts["idle"] = rows
    n = rb.settings["idle_minutes"]
    status = "warning" if rows else "normal"
    return rb.result(status, rb.text(f"{len(rows)} 个会话空闲事务超过 {n} 分钟",
                                     f"{len(rows)} sessions idle in transaction over {n} min"),
                     sessions=rows)


def remediate_terminate_idle(c, rb):
    done = []
    for r in rb.facts.get("idle", [])[: int(rb.settings["max_terminate"])]:
        pid = int(r["pid"])
        sql = (f"select pg_terminate_backend({pid})" if _pg(rb) else f"KILL CONNECTION {pid}")
        what = rb.text(f"终止会话 {pid}（{r['user']}@{r['client']} 库 {r['db']}，空闲事务 "
                       f"{r['minutes']} 分钟）",
                       f"terminate session {pid} ({r['user']}@{r['client']} db {r['db']}, "
                       f"idle in transaction {r['minutes']} min)")
        if rb.change(what, _client(rb, sql)):
            done.append(pid)
    rb.facts["terminated"] = done
    return rb.result("normal", rb.text(f"终止 {len(done)} 个会话", f"{len(done)} terminated"),
                     terminated=done)


def verify_sessions_gone(c, rb):
    s = rb.settings
    gone = set(rb.facts.get("terminated", []))
    state: dict = {}

    def settled() -> bool:
        live = {int(r["pid"]) for r in idle_sessions(rb.probe, rb)}
        state["remaining"] = sorted(live & gone)
        state["usage"] = _usage(rb.probe, rb)
        return not state["remaining"]

    ok = rb.wait(settled, 15, 0.5)
    status = "critical" if not ok else rb.level(state["usage"]["percent"], s["usage_warning"],
                                                s["usage_critical"])
    return rb.result(status, rb.text(
        f"仍在的会话 {state['remaining'] or '无'}；连接 {state['usage']['percent']}%",
        f"still there: {state['remaining'] or 'none'}; connections "
        f"{state['usage']['percent']}%"), **state)
