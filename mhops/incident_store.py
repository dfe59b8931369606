"""The incident store: one embedded SQLite database under the records folder.

Owns the schema and its migrations (a ``schema_version`` table, each step applied
once inside a write transaction), the connection settings (WAL so readers never block
the writer, a busy timeout so a second command waits instead of failing, foreign
keys on), the write transaction (``BEGIN IMMEDIATE``: the write lock is taken before
anything is read, so a read-modify-write from two processes at once cannot lose an
update), and redaction of every text before it is stored: titles, notes and runbook
output may carry patient data, and the database is as durable as the records.

Times are stored as ISO-8601 UTC strings (``...Z``), which sort as text.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mhops.errors import MhopsError
from mhops.redact import Redactor

FILENAME = "incidents.sqlite3"
BUSY_TIMEOUT_MS = 60_000

# Append only: a released step is never edited, a later one changes what it must.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (1, """
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            title TEXT NOT NULL,
            scope TEXT NOT NULL, type TEXT NOT NULL, severity TEXT NOT NULL,
            priority TEXT NOT NULL, fault_class TEXT NOT NULL,
            emergency INTEGER NOT NULL DEFAULT 0,
            reporter TEXT NOT NULL DEFAULT '', host TEXT NOT NULL DEFAULT '',
            operator TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'open',
            reported_utc TEXT NOT NULL,
            acknowledged_utc TEXT, onsite_utc TEXT, resolved_utc TEXT,
            respond_by_utc TEXT NOT NULL, onsite_by_utc TEXT,
            resolution TEXT NOT NULL DEFAULT '', runbook TEXT NOT NULL DEFAULT '',
            feedback TEXT NOT NULL DEFAULT '',
            updated_utc TEXT NOT NULL,
            revision INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX incidents_reported ON incidents (reported_utc);
        CREATE TABLE notes (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            at_utc TEXT NOT NULL,
            author TEXT NOT NULL DEFAULT '',
            source TEXT NOT NULL DEFAULT 'note',
            text TEXT NOT NULL,
            data TEXT
        );
        CREATE INDEX notes_incident ON notes (incident_id, id);
    """),
    (2, """
        CREATE TABLE analysis_fields (
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            field TEXT NOT NULL,
            text TEXT NOT NULL,
            editor TEXT NOT NULL DEFAULT '',
            edited_utc TEXT NOT NULL,
            PRIMARY KEY (incident_id, field)
        );
        ALTER TABLE incidents ADD COLUMN record_dir TEXT NOT NULL DEFAULT '';
        ALTER TABLE incidents ADD COLUMN analysis_dir TEXT NOT NULL DEFAULT '';
    """),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def path_for(records_dir: Path, configured: str | Path | None = None) -> Path:
    """The database file: the configured path, else ``<records>/incidents.sqlite3``."""
    return Path(configured) if configured else Path(records_dir) / FILENAME


class Store:
    """One open connection to the incident database; use as a context manager."""

    def __init__(self, path: Path, redactor: Redactor | None = None):
        self.path = Path(path)
        self.redactor = redactor or Redactor()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000,
                                      isolation_level=None)
        except sqlite3.Error as exc:
            raise MhopsError(f"the incident database cannot be opened: {exc}",
                             path=str(self.path)) from None
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = self.db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise MhopsError(f"the incident database cannot use WAL mode ({mode})",
                                 path=str(self.path))
            self.db.execute("PRAGMA synchronous = FULL")
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
            # The WAL holds the same rows as the database: same permissions, whatever the umask.
            for f in (self.path, self.path.with_name(self.path.name + "-wal"),
                      self.path.with_name(self.path.name + "-shm")):
                if f.exists() and f.stat().st_mode & 0o077:
                    f.chmod(0o600)
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise MhopsError(f"the incident database cannot be opened: {exc}",
                             path=str(self.path)) from None
        except BaseException:
            self.db.close()
            raise

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.db.close()

    def _migrate(self) -> None:
        with self.write():
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self.db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            if current > SCHEMA_VERSION:
                raise MhopsError(f"the incident database has schema {current}, newer than "
                                 f"this code ({SCHEMA_VERSION}); update mhops",
                                 path=str(self.path))
            for version, sql in MIGRATIONS:
                if version > current:
                    for statement in filter(str.strip, sql.split(";")):
                        self.db.execute(statement)
                    self.db.execute("INSERT INTO schema_version (version) VALUES (?)",
                                    (version,))

    def schema_version(self) -> int:
        return self.db.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the write lock from its first statement."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ------------------------------------------------------------ incidents

    def _clean(self, value: Any) -> Any:
        return self.redactor.text(value) if isinstance(value, str) else value

    def create(self, fields: dict[str, Any]) -> int:
        clean = {k: self._clean(v) for k, v in fields.items()}
        cols = ", ".join(clean)
        marks = ", ".join("?" for _ in clean)
        with self.write() as db:
            cur = db.execute(f"INSERT INTO incidents ({cols}) VALUES ({marks})",
                             tuple(clean.values()))
            return int(cur.lastrowid)

    def get(self, incident_id: Any) -> dict[str, Any]:
        """The incident as a dict, or MhopsError naming the ids that exist."""
        try:
            n = int(incident_id)
        except (TypeError, ValueError):
            n = None
        row = None if n is None else self.db.execute(
            "SELECT * FROM incidents WHERE id = ?", (n,)).fetchone()
        if row is None:
            raise MhopsError(f"unknown incident {str(incident_id)!r}; valid ids: "
                             + self._known_ids())
        return dict(row)

    def _known_ids(self) -> str:
        ids = [r[0] for r in self.db.execute("SELECT id FROM incidents ORDER BY id DESC LIMIT 20")]
        if not ids:
            return "none yet (open one with `invoke incident.open`)"
        total = self.db.execute("SELECT count(*) FROM incidents").fetchone()[0]
        shown = ", ".join(map(str, sorted(ids)))
        return shown + (f" (latest 20 of {total})" if total > len(ids) else "")

    def update(self, incident_id: int, fields: dict[str, Any], at: str) -> None:
        """Set *fields* on one incident; call inside :meth:`write` after reading it."""
        clean = {k: self._clean(v) for k, v in fields.items()}
        sets = ", ".join(f"{k} = ?" for k in clean)
        self.db.execute(f"UPDATE incidents SET {sets}, updated_utc = ?, revision = revision + 1 "
                        "WHERE id = ?", (*clean.values(), at, incident_id))

    def query(self, since: str | None = None, until: str | None = None,
              open_only: bool = False) -> list[dict[str, Any]]:
        where, args = [], []
        if since:
            where.append("reported_utc >= ?")
            args.append(since)
        if until:
            where.append("reported_utc < ?")
            args.append(until)
        if open_only:
            where.append("status != 'resolved'")
        sql = "SELECT * FROM incidents" + (" WHERE " + " AND ".join(where) if where else "")
        return [dict(r) for r in self.db.execute(sql + " ORDER BY id", args)]

    # ---------------------------------------------------------------- notes

    def add_note(self, incident_id: int, at: str, text: str, *, author: str = "",
                 source: str = "note", data: Any = None) -> int:
        """Insert a note; call inside :meth:`write` (the caller checked the incident)."""
        payload = None if data is None else json.dumps(self.redactor.obj(data),
                                                       ensure_ascii=False)
        cur = self.db.execute(
            "INSERT INTO notes (incident_id, at_utc, author, source, text, data) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (incident_id, at, self._clean(author), self._clean(source), self._clean(text),
             payload))
        self.db.execute("UPDATE incidents SET updated_utc = ?, revision = revision + 1 "
                        "WHERE id = ?", (at, incident_id))
        return int(cur.lastrowid)

    def notes(self, incident_id: int) -> list[dict[str, Any]]:
        out = []
        for r in self.db.execute("SELECT * FROM notes WHERE incident_id = ? ORDER BY id",
                                 (incident_id,)):
            d = dict(r)
            d["data"] = json.loads(d["data"]) if d["data"] else None
            out.append(d)
        return out

    # ------------------------------------------------------ analysis fields

    def set_field(self, incident_id: int, field: str, text: str, *, editor: str,
                  at: str) -> None:
        self.db.execute(
            "INSERT INTO analysis_fields (incident_id, field, text, editor, edited_utc) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (incident_id, field) DO UPDATE SET "
            "text = excluded.text, editor = excluded.editor, edited_utc = excluded.edited_utc",
            (incident_id, field, self._clean(text), self._clean(editor), at))

    def fields(self, incident_id: int) -> dict[str, dict[str, Any]]:
        return {r["field"]: dict(r) for r in self.db.execute(
            "SELECT * FROM analysis_fields WHERE incident_id = ?", (incident_id,))}
