"""SQLite backend (the embedded default): one file, WAL, durable commit before reserve() returns.

``BEGIN IMMEDIATE`` takes SQLite's single write lock before the budget is read, so the check
and the record are one step across threads and processes sharing the file (the writer
thread batches concurrent requests into one such transaction: group commit).
``synchronous=FULL`` makes each commit durable (WAL fsync) before futures are resolved.

Called by ``open_ledger``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from fdp_router.privacy.ledger.core import SqlDriver


class SqliteDriver(SqlDriver):
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def connect_writer(self) -> Any:
        return _Tx(self._connect())

    def connect_reader(self) -> Any:
        return _Tx(self._connect())

    def begin_locked(self, conn: Any) -> Any:
        conn.raw.execute("BEGIN IMMEDIATE")
        return conn.raw.cursor()

    def extra_schema(self, cur: Any) -> None:
        for op in ("UPDATE", "DELETE"):
            cur.execute(
                f"CREATE TRIGGER IF NOT EXISTS fdp_audit_no_{op.lower()} BEFORE {op} ON fdp_audit "
                "BEGIN SELECT RAISE(ABORT, 'fdp_audit is append-only'); END"
            )


class _Tx:
    """A connection in autocommit mode whose commit()/rollback() end an explicit BEGIN."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def cursor(self) -> sqlite3.Cursor:
        return self.raw.cursor()

    def commit(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()
