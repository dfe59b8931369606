"""The realistic test schema on real PostgreSQL and MariaDB: counts, keys, fake identifiers."""

from __future__ import annotations

import os
import re

import pytest

from mhops import dbseed
from mhops.errors import MhopsError

SERVERS = {"postgresql": {"host": "127.0.0.1", "port": 5432, "user": "postgres", "password": ""},
           "mariadb": {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}}
DB = f"mhb_seed_{os.getpid()}"


@pytest.fixture(scope="module")
def seeded():
    loaded = {}
    try:
        for engine, server in SERVERS.items():
            loaded[engine] = dbseed.seed(engine, database=DB, size=1, **server)
        yield loaded
    finally:
        for engine, server in SERVERS.items():
            dbseed.drop_database(engine, database=DB, **server)


def _rows(engine, sql):
    conn = dbseed.connect(engine, database=DB, **SERVERS[engine])
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


@pytest.mark.parametrize("engine", list(SERVERS))
def test_counts_keys_indexes_and_fake_identifiers(seeded, engine):
    loaded = seeded[engine]
    assert loaded["patients"] == 1000 and loaded["appointments"] == 2000
    assert 1000 < sum(loaded.values()) < 20000  # "a few thousand rows" at size=1
    for table, n in loaded.items():
        assert _rows(engine, f"SELECT COUNT(*) FROM {table}")[0][0] == n, table
    schema = "current_schema()" if engine == "postgresql" else "DATABASE()"
    fks = _rows(engine, "SELECT COUNT(*) FROM information_schema.referential_constraints "
                        f"WHERE constraint_schema = {schema}")[0][0]
    assert fks == 10
    if engine == "postgresql":
        idx = _rows(engine, "SELECT COUNT(*) FROM pg_indexes WHERE schemaname = 'public' "
                            "AND indexname LIKE '%\\_idx'")[0][0]
    else:
        idx = _rows(engine, "SELECT COUNT(DISTINCT index_name) FROM information_schema.statistics "
                            "WHERE table_schema = DATABASE() AND index_name LIKE '%\\_idx'")[0][0]
    assert idx >= 10
    for name, id_card, mobile in _rows(engine, "SELECT name, id_card, mobile FROM patients"):
        assert "某" in name
        assert re.fullmatch(r"110101\d{11}[\dX]", id_card) and mobile.startswith("1390000")
    channels = {r[0] for r in _rows(engine, "SELECT DISTINCT channel FROM payments")}
    assert channels == {"wechat", "alipay", "baidu"}
    couriers = {r[0] for r in _rows(engine, "SELECT DISTINCT courier_status "
                                            "FROM record_copy_orders")}
    assert couriers == set(dbseed.COURIER_STATUSES)
    today = _rows(engine, "SELECT COUNT(*) FROM appointments WHERE department_id = 1 "
                          "AND visit_date = CURRENT_DATE")[0][0]
    assert today > 0  # the drill's smoke query finds today's appointments


def test_id_cards_carry_a_wrong_check_character(seeded):
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    for (id_card,) in _rows("postgresql", "SELECT id_card FROM patients"):
        valid = "10X98765432"[sum(int(d) * w for d, w in zip(id_card[:17], weights,
                                                               strict=True)) % 11]
        assert id_card[17] != valid


def test_same_seed_same_rows_in_both_engines(seeded):
    sql = "SELECT id, id_card, mobile FROM patients ORDER BY id"
    assert [tuple(r) for r in _rows("postgresql", sql)] == [tuple(r) for r in _rows("mariadb", sql)]
    sql = "SELECT id, amount_cents, channel, trade_no FROM payments ORDER BY id"
    assert [tuple(r) for r in _rows("postgresql", sql)] == [tuple(r) for r in _rows("mariadb", sql)]


@pytest.mark.parametrize("engine", list(SERVERS))
def test_existing_schema_is_refused_without_drop_and_recreated_with_it(seeded, engine):
    with pytest.raises(MhopsError, match="drop=True"):
        dbseed.seed(engine, database=DB, size=1, **SERVERS[engine])
    _rows(engine, "DELETE FROM messages WHERE id <= 10")
    again = dbseed.seed(engine, database=DB, size=1, drop=True, **SERVERS[engine])
    assert again == seeded[engine]
    assert _rows(engine, "SELECT COUNT(*) FROM messages")[0][0] == again["messages"]


def test_bad_size_is_refused():
    with pytest.raises(MhopsError, match="size"):
        dbseed.seed("postgresql", database=DB, size=0, **SERVERS["postgresql"])
