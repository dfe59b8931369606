"""The realistic test schema: the platform's kind of data in PostgreSQL or MariaDB.

Owns the demo/test schema (departments, doctors, patients, appointments, payments and
refunds by mini-program channel, medical-record copy orders with courier status,
message-center messages; foreign keys and indexes), the deterministic generator of
its rows, and loading them in bulk (COPY on PostgreSQL, multi-row INSERT on MariaDB).

Every identifier is fake and generated: names use the placeholder character 某, ID-card
numbers carry a deliberately wrong check character (so none can belong to a person),
mobiles are 1390000xxxx. ``size=1`` is a few thousand rows (tests); each unit adds
roughly 1.4 MB on disk: ``size=150`` is about 1 million rows, 213 MiB in PostgreSQL,
loaded in about 17 s (benchmarks).
The same seed, size and base date give the same rows in both engines.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Any

from mhops.errors import MhopsError

ENGINES = ("postgresql", "mariadb")
CHANNELS = ("wechat", "alipay", "baidu")
COURIER_STATUSES = ("pending", "picked_up", "in_transit", "delivered", "returned")

# Rows per unit of `size`; dependants scale with their parents.
_PER_SIZE = {"patients": 1000, "appointments": 2000, "record_copy_orders": 200,
             "messages": 2000}
_DEPARTMENTS = ("内科", "外科", "儿科", "妇产科", "眼科", "耳鼻喉科", "口腔科", "皮肤科",
                "中医科", "康复科", "急诊科", "神经内科", "心血管内科", "消化内科",
                "呼吸内科", "内分泌科", "肿瘤科", "骨科", "泌尿外科", "老年医学科")
_SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林罗高"
_GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂"
_TITLES = ("主任医师", "副主任医师", "主治医师", "住院医师")
_COURIERS = ("顺丰速运", "EMS", "京东物流")
_CATEGORIES = ("appointment", "payment", "report", "record_copy", "notice")
_TEMPLATES = (
    "您预约的{dept}号源已确认，请于就诊当日提前30分钟到院签到，携带有效证件。",
    "您的缴费已成功，支付渠道：{channel}，如需退款请在小程序“我的订单”中申请。",
    "您的检查报告已出，请登录掌上医院查看；如有疑问请咨询{dept}门诊。",
    "您申请的病案复印已寄出，快递单号请在“病案复印”页面查询。",
    "温馨提示：本院门诊时间调整，详情请关注医院公众号通知。",
)

# Parents before children: the load order, and reversed, the drop order.
TABLES = ("departments", "doctors", "patients", "appointments", "payments", "refunds",
          "record_copy_orders", "messages")

_DDL_PG = """
CREATE TABLE departments (
  id integer PRIMARY KEY, code varchar(8) NOT NULL UNIQUE, name varchar(32) NOT NULL,
  campus varchar(16) NOT NULL);
CREATE TABLE doctors (
  id integer PRIMARY KEY, department_id integer NOT NULL REFERENCES departments(id),
  name varchar(32) NOT NULL, title varchar(16) NOT NULL, created_at timestamp NOT NULL);
CREATE INDEX doctors_department_idx ON doctors (department_id);
CREATE TABLE patients (
  id bigint PRIMARY KEY, name varchar(32) NOT NULL, id_card char(18) NOT NULL UNIQUE,
  mobile char(11) NOT NULL, gender char(1) NOT NULL, birth_date date NOT NULL,
  created_at timestamp NOT NULL);
CREATE INDEX patients_mobile_idx ON patients (mobile);
CREATE TABLE appointments (
  id bigint PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients(id),
  doctor_id integer NOT NULL REFERENCES doctors(id),
  department_id integer NOT NULL REFERENCES departments(id),
  visit_date date NOT NULL, slot smallint NOT NULL, status varchar(16) NOT NULL,
  channel varchar(8) NOT NULL CHECK (channel IN ('wechat', 'alipay', 'baidu')),
  created_at timestamp NOT NULL);
CREATE INDEX appointments_department_date_idx ON appointments (department_id, visit_date);
CREATE INDEX appointments_patient_idx ON appointments (patient_id);
CREATE TABLE payments (
  id bigint PRIMARY KEY, appointment_id bigint NOT NULL REFERENCES appointments(id),
  patient_id bigint NOT NULL REFERENCES patients(id),
  channel varchar(8) NOT NULL CHECK (channel IN ('wechat', 'alipay', 'baidu')),
  amount_cents integer NOT NULL, status varchar(16) NOT NULL,
  trade_no varchar(32) NOT NULL UNIQUE, paid_at timestamp NOT NULL);
CREATE INDEX payments_patient_idx ON payments (patient_id);
CREATE INDEX payments_paid_at_idx ON payments (paid_at);
CREATE TABLE refunds (
  id bigint PRIMARY KEY, payment_id bigint NOT NULL REFERENCES payments(id),
  amount_cents integer NOT NULL, reason varchar(64) NOT NULL, status varchar(16) NOT NULL,
  refunded_at timestamp NOT NULL);
CREATE INDEX refunds_payment_idx ON refunds (payment_id);
CREATE TABLE record_copy_orders (
  id bigint PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients(id),
  department_id integer NOT NULL REFERENCES departments(id), copies smallint NOT NULL,
  courier varchar(16) NOT NULL, tracking_no varchar(24) NOT NULL,
  courier_status varchar(16) NOT NULL, fee_cents integer NOT NULL,
  created_at timestamp NOT NULL);
CREATE INDEX record_copy_orders_patient_idx ON record_copy_orders (patient_id);
CREATE INDEX record_copy_orders_status_idx ON record_copy_orders (courier_status);
CREATE TABLE messages (
  id bigint PRIMARY KEY, patient_id bigint NOT NULL REFERENCES patients(id),
  channel varchar(8) NOT NULL, category varchar(16) NOT NULL, title varchar(64) NOT NULL,
  body text NOT NULL, sent_at timestamp NOT NULL, read_at timestamp NULL);
CREATE INDEX messages_patient_sent_idx ON messages (patient_id, sent_at);
"""


def _ddl(engine: str) -> list[str]:
    stmts = [s.strip() for s in _DDL_PG.split(";\n") if s.strip()]
    if engine == "mariadb":
        # Same schema; InnoDB for foreign keys, utf8mb4 for the Chinese text.
        stmts = [s.replace("timestamp", "datetime")
                 + (" ENGINE=InnoDB DEFAULT CHARSET=utf8mb4" if s.startswith("CREATE TABLE")
                    else "") for s in stmts]
    return stmts


def _fake_id_card(birth: date, seq: int) -> str:
    body = f"110101{birth:%Y%m%d}{seq:03d}"
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    valid = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    # Deliberately the wrong check character: no generated number is a real person's.
    return body + "10X98765432"[("10X98765432".index(valid) + 1) % 11]


def counts(size: int) -> dict[str, int]:
    """Planned row counts for `size` (refunds and payments depend on the draw)."""
    if size < 1:
        raise MhopsError(f"size must be a positive integer, got {size}")
    return {"departments": len(_DEPARTMENTS), "doctors": 5 * len(_DEPARTMENTS),
            **{t: n * size for t, n in _PER_SIZE.items()}}


def generate(size: int = 1, seed: int = 20261128,
             base_date: date | None = None) -> Iterator[tuple[str, list[tuple]]]:
    """Yield (table, rows) batches in load order; deterministic for seed/size/base date."""
    rng = random.Random(seed)
    base = base_date or date.today()
    base_ts = datetime.combine(base, datetime.min.time())
    n = counts(size)
    yield "departments", [(i + 1, f"D{i + 1:03d}", name, ("总院", "东院", "西院")[i % 3])
                          for i, name in enumerate(_DEPARTMENTS)]
    doctors = []
    for i in range(n["doctors"]):
        doctors.append((i + 1, i % n["departments"] + 1,
                        rng.choice(_SURNAMES) + "某" + rng.choice(_GIVEN) + "医生",
                        rng.choice(_TITLES), base_ts - timedelta(days=rng.randrange(3000))))
    yield "doctors", doctors

    batch = 5000
    taken: set[tuple[date, int]] = set()
    for start in range(0, n["patients"], batch):
        rows = []
        for pid in range(start + 1, min(start + batch, n["patients"]) + 1):
            while True:  # the ID-card column is unique
                birth = date(1940, 1, 1) + timedelta(days=rng.randrange(365 * 80))
                seq = rng.randrange(1000)
                if (birth, seq) not in taken:
                    taken.add((birth, seq))
                    break
            rows.append((pid, rng.choice(_SURNAMES) + "某" + rng.choice(_GIVEN),
                         _fake_id_card(birth, seq),
                         f"1390000{rng.randrange(10000):04d}", rng.choice("MF"), birth,
                         base_ts - timedelta(minutes=rng.randrange(60 * 24 * 1500))))
        yield "patients", rows

    pay_id = refund_id = 0
    for start in range(0, n["appointments"], batch):
        appts, pays, refunds = [], [], []
        for aid in range(start + 1, min(start + batch, n["appointments"]) + 1):
            doctor = rng.randrange(n["doctors"]) + 1
            dept = (doctor - 1) % n["departments"] + 1
            patient = rng.randrange(n["patients"]) + 1
            channel = rng.choices(CHANNELS, weights=(6, 3, 1))[0]
            # A busy clinic day today, so "today's appointments" is never an empty answer.
            visit = base + timedelta(days=0 if rng.random() < 0.2 else rng.randrange(-60, 15))
            created = datetime.combine(visit, datetime.min.time()) - timedelta(
                minutes=rng.randrange(60 * 24 * 14))
            status = "booked" if visit >= base else rng.choice(("visited", "visited",
                                                                 "cancelled", "no_show"))
            appts.append((aid, patient, doctor, dept, visit, rng.randrange(1, 41), status,
                          channel, created))
            if status != "cancelled" and rng.random() < 0.8:
                pay_id += 1
                amount = rng.choice((500, 1000, 2500, 5000, 10000)) + rng.randrange(100)
                paid = created + timedelta(seconds=rng.randrange(600))
                pays.append((pay_id, aid, patient, channel, amount, "paid",
                             f"{channel[:2].upper()}{seed % 1000:03d}{pay_id:012d}", paid))
                if rng.random() < 0.1:
                    refund_id += 1
                    refunds.append((refund_id, pay_id, amount, rng.choice(
                        ("停诊退款", "患者取消", "重复支付")), rng.choice(("success", "pending")),
                        paid + timedelta(hours=rng.randrange(1, 72))))
        yield "appointments", appts
        yield "payments", pays
        yield "refunds", refunds

    for start in range(0, n["record_copy_orders"], batch):
        rows = []
        for oid in range(start + 1, min(start + batch, n["record_copy_orders"]) + 1):
            rows.append((oid, rng.randrange(n["patients"]) + 1,
                         rng.randrange(n["departments"]) + 1, rng.randrange(1, 4),
                         rng.choice(_COURIERS), f"SF{seed % 100:02d}{oid:012d}",
                         rng.choice(COURIER_STATUSES), 2000 + 1000 * rng.randrange(3),
                         base_ts - timedelta(minutes=rng.randrange(60 * 24 * 90))))
        yield "record_copy_orders", rows

    for start in range(0, n["messages"], batch):
        rows = []
        for mid in range(start + 1, min(start + batch, n["messages"]) + 1):
            k = rng.randrange(len(_TEMPLATES))
            sent = base_ts - timedelta(minutes=rng.randrange(60 * 24 * 90))
            body = _TEMPLATES[k].format(dept=rng.choice(_DEPARTMENTS),
                                        channel=rng.choice(CHANNELS))
            rows.append((mid, rng.randrange(n["patients"]) + 1, rng.choice(CHANNELS),
                         _CATEGORIES[k], body[:20], body,
                         sent, sent + timedelta(hours=1) if rng.random() < 0.6 else None))
        yield "messages", rows


def _copy_text(rows: list[tuple]) -> io.StringIO:
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join("\\N" if v is None else str(v) for v in row) + "\n")
    buf.seek(0)
    return buf


def connect(engine: str, *, host: str, port: int, user: str, password: str,
            database: str | None):
    """A DB-API connection (autocommit) to `database`, or the server's default one."""
    if engine == "postgresql":
        import psycopg2

        conn = psycopg2.connect(host=host, port=port, user=user, password=password or None,
                                dbname=database or "postgres", connect_timeout=10)
        conn.autocommit = True
        return conn
    if engine == "mariadb":
        import pymysql

        return pymysql.connect(host=host, port=int(port), user=user, password=password or "",
                               database=database, charset="utf8mb4", autocommit=True,
                               connect_timeout=10)
    raise MhopsError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")


def _ensure_database(engine: str, conn_args: dict[str, Any], database: str) -> None:
    conn = connect(engine, database=None, **conn_args)
    try:
        with conn.cursor() as cur:
            if engine == "postgresql":
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
                if cur.fetchone() is None:
                    cur.execute('CREATE DATABASE "{}"'.format(database.replace('"', '""')))
            else:
                cur.execute("CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4".format(
                    database.replace("`", "``")))
    finally:
        conn.close()


def seed(engine: str, *, host: str, port: int, user: str, password: str, database: str,
         size: int = 1, drop: bool = False, seed: int = 20261128,
         base_date: date | None = None) -> dict[str, int]:
    """Create the schema in `database` (created when missing) and load it; rows per table.

    `drop` removes the schema's own tables first (never anything else); without it an
    already seeded database is refused rather than mixed with new rows.
    """
    if engine not in ENGINES:
        raise MhopsError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    counts(size)
    conn_args = {"host": host, "port": int(port), "user": user, "password": password}
    _ensure_database(engine, conn_args, database)
    conn = connect(engine, database=database, **conn_args)
    loaded: dict[str, int] = dict.fromkeys(TABLES, 0)
    try:
        cur = conn.cursor()
        existing = _existing_tables(engine, cur)
        if existing and not drop:
            raise MhopsError(f"database {database} already holds seeded tables "
                             f"({', '.join(sorted(existing))}); pass drop=True to recreate them")
        for table in reversed(TABLES):
            if table in existing:
                cur.execute(f"DROP TABLE {table}")
        if engine == "postgresql":
            conn.autocommit = False  # one transaction: a failed load leaves nothing behind
        for stmt in _ddl(engine):
            cur.execute(stmt)
        for table, rows in generate(size, seed, base_date):
            if not rows:
                continue
            if engine == "postgresql":
                cur.copy_expert(f"COPY {table} FROM STDIN", _copy_text(rows))
            else:
                marks = ", ".join(["%s"] * len(rows[0]))
                # PyMySQL turns executemany of one INSERT into multi-row INSERTs.
                cur.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
            loaded[table] += len(rows)
        if engine == "postgresql":
            conn.commit()
            conn.autocommit = True
            cur.execute("ANALYZE")
        else:
            cur.execute("ANALYZE TABLE " + ", ".join(TABLES))
            cur.fetchall()
    except MhopsError:
        raise
    except Exception as exc:
        if engine == "postgresql" and not conn.autocommit:
            conn.rollback()
        raise MhopsError(f"seeding {engine} database {database} on {host}:{port} failed: "
                         f"{exc}") from exc
    finally:
        conn.close()
    return loaded


def _existing_tables(engine: str, cur) -> set[str]:
    if engine == "postgresql":
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()")
    else:
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = DATABASE()")
    return {r[0] for r in cur.fetchall()} & set(TABLES)


def drop_database(engine: str, *, host: str, port: int, user: str, password: str,
                  database: str) -> None:
    """Remove a whole database (tests' teardown)."""
    conn = connect(engine, database=None, host=host, port=int(port), user=user,
                   password=password)
    try:
        with conn.cursor() as cur:
            if engine == "postgresql":
                cur.execute('DROP DATABASE IF EXISTS "{}" WITH (FORCE)'.format(
                    database.replace('"', '""')))
            else:
                cur.execute("DROP DATABASE IF EXISTS `{}`".format(database.replace("`", "``")))
    finally:
        conn.close()
