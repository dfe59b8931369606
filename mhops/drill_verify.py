"""What a restore drill checks in the restored database: the verification SQL.

Owns, against a running scratch instance (``mhops.scratch``): every manifest table
present with its row count, the canary row, the md5 of sample tables' rows in
primary-key order (against the manifest's checksum or, read-only, the same query on
the source), and the application smoke query. Each check returns a one-line detail
or raises ``DrillFailed`` with the reason; results are kept in ``verification`` for
the record.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from mhops import records, scratch
from mhops.drill_rules import BAD, OK, UNKNOWN, compare_counts, sample_tables

_TOKEN = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_SMOKE_SQL = ("SELECT count(*) FROM appointments a JOIN departments d "
                     "ON d.id = a.department_id WHERE d.code = {department} "
                     "AND a.visit_date = {day}")
CHECKS = ("tables", "canary", "checksums", "smoke")


class DrillFailed(Exception):
    """A check failed: the drill stops here and records why."""


@dataclass
class Verifier:
    """The checks of one restored database, run in the order of ``CHECKS``."""

    instance: scratch.Instance
    engine: str
    database: str
    manifest: dict[str, Any]
    entry: dict[str, Any] | None
    opts: Any  # drill.Options: row_tolerance, sample_tables, compare_source, smoke_*
    verification: dict[str, Any] = field(default_factory=dict)

    def _present(self) -> dict[str, str]:
        """Tables in the restored database: manifest-style name → quoted SQL name."""
        inst = self.instance
        if self.engine == "postgresql":
            out = inst.client([
                "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%'"], self.database).stdout
            found = {}
            for full in filter(None, out.splitlines()):
                schema, _, table = full.partition(".")
                q = f"{scratch.quote_ident(schema, 'postgresql')}." \
                    f"{scratch.quote_ident(table, 'postgresql')}"
                found[full] = q
                if schema == "public":
                    found.setdefault(table, q)
            return found
        out = inst.client(["SELECT table_name FROM information_schema.tables WHERE "
                           "table_schema = DATABASE() AND table_type = 'BASE TABLE'"],
                          self.database).stdout
        found = {}
        for t in filter(None, out.splitlines()):
            q = scratch.quote_ident(t, "mariadb")
            found[t] = q
            found[f"{self.database}.{t}"] = q
        return found

    def tables(self) -> str:
        expected = dict(self.manifest["tables"])
        present = self._present()
        names = [t for t in expected if t in present]
        actual: dict[str, int | None] = {}
        if names:
            parts = [f"SELECT {i}, count(*) FROM {present[t]}" for i, t in enumerate(names)]
            out = self.instance.client([" UNION ALL ".join(parts)], self.database).stdout
            for line in filter(None, out.splitlines()):
                i, n = re.split(r"[|\t]", line)
                actual[names[int(i)]] = int(n)
        results = compare_counts(expected, actual, self.opts.row_tolerance)
        self.verification["tables"] = results
        bad = [r for r in results if r["status"] == BAD]
        if bad:
            raise DrillFailed("tables: " + "; ".join(f"{r['table']} {r['reason']}"
                                                     for r in bad))
        return f"{len(results)}/{len(results)} tables, row counts match"

    def canary(self) -> str:
        canary = self.manifest.get("canary") or {}
        token, table = str(canary.get("token") or ""), str(canary.get("table") or "")
        # Keyed "id", not "token": it is a random row marker, not a credential to redact.
        result = {"table": table, "id": token, "present": False, "status": BAD}
        self.verification["canary"] = result
        if not _TOKEN.match(token) or not re.fullmatch(r"[A-Za-z0-9_.]+", table):
            raise DrillFailed("canary: the manifest holds no valid canary table and token")
        q = ".".join(scratch.quote_ident(p, self.engine) for p in table.split("."))
        res = self.instance.client([f"SELECT count(*) FROM {q} WHERE token = '{token}'"],
                                   self.database, check=False)
        if res.returncode:
            raise DrillFailed(f"canary: table {table} is not readable: "
                              f"{res.stderr.strip()[-300:]}")
        result["present"] = res.stdout.strip() == "1"
        result["status"] = OK if result["present"] else BAD
        if not result["present"]:
            raise DrillFailed(f"canary: row {token} is missing from {table}")
        return f"{table} {token[:8]}… present"

    def _order_by(self, quoted: str) -> str:
        inst = self.instance
        if self.engine == "postgresql":
            out = inst.client([
                "SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY "
                "array_position(i.indkey::int2[], a.attnum)) FROM pg_index i JOIN pg_attribute a "
                "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
                f"WHERE i.indrelid = '{quoted.replace(chr(39), chr(39) * 2)}'::regclass "
                "AND i.indisprimary"], self.database).stdout.strip()
            return out or "t::text"
        name = quoted.strip("`").replace("``", "`")
        out = inst.client([
            "SELECT GROUP_CONCAT(CONCAT('`', REPLACE(column_name, '`', '``'), '`') ORDER BY "
            "ordinal_position) FROM information_schema.key_column_usage WHERE "
            "table_schema = DATABASE() AND constraint_name = 'PRIMARY' AND table_name = "
            f"{scratch.quote_literal(name, 'mariadb')}"], self.database).stdout.strip()
        if out and out != "NULL":
            return out
        cols = inst.client([
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() "
            f"AND table_name = {scratch.quote_literal(name, 'mariadb')}"],
            self.database).stdout.strip()
        return ", ".join(str(i) for i in range(1, int(cols or 1) + 1))

    def checksums(self) -> str:
        canary_table = str((self.manifest.get("canary") or {}).get("table") or "mhops_canary")
        tables = sample_tables(self.manifest["tables"], self.opts.sample_tables, canary_table)
        present = self._present()
        stored = self.manifest.get("checksums") or {}
        results = []
        self.verification["checksums"] = results
        for t in tables:
            if t not in present:
                results.append({"table": t, "md5": None, "reference": None,
                                "reference_md5": None, "status": BAD,
                                "reason": "sample table missing"})
                continue
            query = self._checksum_query(present[t])
            md5 = _md5(self.instance.stream(query, self.database, _STABLE_OUTPUT[self.engine]))
            r = {"table": t, "md5": md5, "reference": None, "reference_md5": None,
                 "status": UNKNOWN, "reason": ""}
            want = stored.get(t)
            if isinstance(want, dict):
                want = want.get("md5")
            if want:
                r.update(reference="manifest", reference_md5=want,
                         status=OK if want == md5 else BAD,
                         reason="" if want == md5 else "differs from the manifest's checksum")
            elif self.opts.compare_source and self.entry:
                r.update(self._against_source(t, present[t], query, md5))
            else:
                r["reason"] = "no reference: source not configured and no checksum in manifest"
            results.append(r)
        bad = [r for r in results if r["status"] == BAD]
        if bad:
            raise DrillFailed("checksums: " + "; ".join(f"{r['table']} {r['reason']}"
                                                        for r in bad))
        return ", ".join(f"{r['table']} {r['status']} ({r['reference'] or '-'})"
                         for r in results) or "no sample table"

    def _checksum_query(self, quoted: str) -> str:
        if self.engine == "postgresql":
            return f"SELECT * FROM {quoted} t ORDER BY {self._order_by(quoted)}"
        return f"SELECT * FROM {quoted} ORDER BY {self._order_by(quoted)}"

    def _against_source(self, table: str, quoted: str, query: str, md5: str) -> dict[str, Any]:
        e = self.entry
        want_rows = self.manifest["tables"].get(table)
        try:
            count_sql = f"SELECT count(*) FROM {quoted}"
            rows = int(b"".join(scratch.stream_rows(
                self._source_argv(count_sql), self._source_env())).decode().strip())
            if rows != want_rows:
                return {"reference": "source", "status": UNKNOWN,
                        "reason": f"not comparable: the source now has {rows} rows, the "
                                  f"backup {want_rows} (written since the backup)"}
            ref = _md5(scratch.stream_rows(self._source_argv(query), self._source_env()))
        except (scratch.ScratchError, ValueError, OSError) as exc:
            return {"reference": None, "status": UNKNOWN,
                    "reason": f"source {e.get('host')}:{e.get('port')} not reachable: "
                              f"{str(exc)[:200]}"}
        same = ref == md5
        return {"reference": "source", "reference_md5": ref, "status": OK if same else BAD,
                "reason": "" if same else "differs from the same query on the source (the "
                          "table may have been updated since the backup: list static tables "
                          "in drill.sample_tables)"}

    def _source_argv(self, query: str) -> list[str]:
        e = self.entry
        if self.engine == "postgresql":
            return ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                    "-h", str(e.get("host") or "127.0.0.1"), "-p", str(e.get("port") or 5432),
                    "-U", str(e.get("user") or "postgres"), "-d", str(e["database"]),
                    "-c", (f"COPY ({query}) TO STDOUT" if query.startswith("SELECT *")
                           else query)]
        return ["mariadb", "--no-defaults", "-h", str(e.get("host") or "127.0.0.1"),
                "-P", str(e.get("port") or 3306), "-u", str(e.get("user") or "root"),
                "--connect-timeout=5", "--batch", "--skip-column-names", "--quick",
                f"--database={e['database']}",
                "-e", "SET SESSION TRANSACTION READ ONLY; SET time_zone = '+00:00'; " + query]

    def _source_env(self) -> dict[str, str]:
        pw = str(self.entry.get("password") or "")
        env = dict(scratch.clean_env(), **_STABLE_OUTPUT[self.engine])
        if self.engine == "postgresql":
            env.update(PGPASSWORD=pw, PGCONNECT_TIMEOUT="5",
                       PGOPTIONS="-c default_transaction_read_only=on")
        else:
            env["MYSQL_PWD"] = pw
        return env

    def smoke(self) -> str:
        # Days in the data are the database servers' own dates (CURRENT_DATE), not the
        # records' display zone (mhops.timezone); the platform's servers and the machine
        # running the scratch instance share a zone, so this machine's zone decides.
        day = self.opts.smoke_day or ""
        if day == "today":
            day = datetime.now(UTC).astimezone().date().isoformat()
        elif not day:
            when = records.parse_time((self.manifest or {}).get("started_at")) or datetime.now(UTC)
            day = when.astimezone().date().isoformat()
        try:
            date.fromisoformat(day)
        except ValueError as exc:
            raise DrillFailed(f"smoke: --smoke-day {day!r} is not a date") from exc
        template = self.opts.smoke_sql.get(self.engine) or DEFAULT_SMOKE_SQL
        sql = template.format(
            department=scratch.quote_literal(self.opts.smoke_department, self.engine),
            day=scratch.quote_literal(day, self.engine))
        result = {"query": sql, "department": self.opts.smoke_department, "day": day,
                  "rows": None, "min_rows": self.opts.smoke_min_rows, "status": BAD}
        self.verification["smoke"] = result
        res = self.instance.client([sql], self.database, check=False)
        if res.returncode:
            raise DrillFailed(f"smoke query failed: {res.stderr.strip()[-300:]}")
        first = (res.stdout.strip().splitlines() or [""])[0]
        try:
            result["rows"] = int(re.split(r"[|\t]", first)[0])
        except ValueError as exc:
            raise DrillFailed(f"smoke query returned {first[:80]!r}, not a count") from exc
        if result["rows"] < self.opts.smoke_min_rows:
            raise DrillFailed(f"smoke query: {result['rows']} appointments for "
                              f"{self.opts.smoke_department} on {day}, expected at least "
                              f"{self.opts.smoke_min_rows}")
        result["status"] = OK
        return f"{self.opts.smoke_department} {day}: {result['rows']}"


# Both sides of a checksum print values the same way whatever the servers' settings.
_STABLE_OUTPUT = {
    "postgresql": {"PGTZ": "UTC", "PGDATESTYLE": "ISO, MDY", "PGCLIENTENCODING": "UTF8"},
    "mariadb": {},
}


def _md5(blocks) -> str:
    h = hashlib.md5(usedforsecurity=False)
    for b in blocks:
        h.update(b)
    return h.hexdigest()
