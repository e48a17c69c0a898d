"""SQLite backend (the embedded default): one file, WAL, durable commit before reserve() returns.

``BEGIN IMMEDIATE`` takes SQLite's single write lock before the budget is read, so the check
and the record are one step across threads and processes sharing the file (the writer
thread batches concurrent requests into one such transaction: group commit).
``synchronous=FULL`` makes each commit durable (WAL fsync) before futures are resolved.

Bounded: waiting for another process's write lock ends after ``timeouts.lock_seconds`` (the
busy timeout); a call running past ``statement_seconds`` is interrupted
(``Connection.interrupt``). A full disk (SQLITE_FULL), a read-only file or an I/O error is
"unavailable" (503), not a bug.

Called by ``open_ledger``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fdp_router.config import LedgerTimeouts
from fdp_router.privacy.ledger.core import SqlDriver

# Primary result codes (https://sqlite.org/rescode.html) -> LedgerUnavailable kinds.
_KINDS = {
    5: "busy",  # SQLITE_BUSY: another process holds the write lock past the busy timeout
    6: "busy",  # SQLITE_LOCKED
    8: "read_only",  # SQLITE_READONLY
    9: "timeout",  # SQLITE_INTERRUPT: the watchdog interrupted a call past its deadline
    10: "io",  # SQLITE_IOERR
    11: "io",  # SQLITE_CORRUPT
    13: "disk_full",  # SQLITE_FULL
    14: "io",  # SQLITE_CANTOPEN
    15: "io",  # SQLITE_PROTOCOL
    26: "io",  # SQLITE_NOTADB
}
_ERRNO_KINDS = {errno.ENOSPC: "disk_full", errno.EDQUOT: "disk_full", errno.EROFS: "read_only"}


class SqliteDriver(SqlDriver):
    """`read_only`: open the file read-only and never create it (``ledger verify``,
    ``checkpoint``, the source of a backup)."""

    def __init__(
        self, path: str | Path, timeouts: LedgerTimeouts | None = None, *, read_only: bool = False
    ) -> None:
        super().__init__(timeouts)
        self.path = str(path)
        self.read_only = read_only

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            if not Path(self.path).is_file():
                raise FileNotFoundError(f"no ledger database at {self.path}")
            return sqlite3.connect(
                f"{Path(self.path).resolve().as_uri()}?mode=ro",
                uri=True,
                timeout=self.timeouts.lock_seconds,
                isolation_level=None,
                check_same_thread=False,
            )
        conn = sqlite3.connect(
            self.path, timeout=self.timeouts.lock_seconds, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    inline = True  # a local file: the idle fast path may run a batch on the caller's thread

    def lock_wait(self, conn: Any, wait: bool) -> None:
        if conn.lock_wait != wait:  # a statement only when switching between the two paths
            ms = int(self.timeouts.lock_seconds * 1000) if wait else 0
            conn.raw.execute(f"PRAGMA busy_timeout = {ms}")
            conn.lock_wait = wait

    def connect_writer(self) -> Any:
        return _Tx(self._connect())

    def connect_reader(self) -> Any:
        return _Tx(self._connect())

    def begin_snapshot(self, conn: Any) -> None:
        conn.raw.execute("BEGIN")  # WAL: the first read fixes the snapshot until COMMIT/ROLLBACK

    def begin_locked(self, conn: Any) -> Any:
        conn.raw.execute("BEGIN IMMEDIATE")
        return conn.raw.cursor()

    def begin_schema(self, conn: Any) -> Any:
        return self.begin_locked(conn)

    def table_exists(self, cur: Any, name: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cur.fetchone() is not None

    def extra_schema(self, cur: Any) -> None:
        cur.execute(
            "CREATE TRIGGER IF NOT EXISTS fdp_audit_no_update BEFORE UPDATE ON fdp_audit "
            "BEGIN SELECT RAISE(ABORT, 'fdp_audit is append-only'); END"
        )
        cur.execute(
            "CREATE TRIGGER IF NOT EXISTS fdp_audit_no_delete BEFORE DELETE ON fdp_audit "
            "WHEN OLD.seq > (SELECT base_seq FROM fdp_head WHERE id = 1) "
            "BEGIN SELECT RAISE(ABORT, 'fdp_audit is append-only (only archived records are pruned)'); END"
        )

    def drop_old_triggers(self, cur: Any) -> None:
        """Schema 1's delete trigger refused every DELETE (migration replaces it)."""
        cur.execute("DROP TRIGGER IF EXISTS fdp_audit_no_delete")

    # --- backup and restore (SQLite's online backup API) ------------------------------------

    def backup_to(self, dest: str | Path) -> None:
        """A consistent copy of the live database at `dest` (a new file), taken with SQLite's
        online backup API while routers keep writing: the copy is one committed state."""
        dest = Path(dest)
        if dest.exists():
            raise FileExistsError(f"{dest} exists; choose a new file")
        tmp = dest.with_name(dest.name + ".partial")
        tmp.unlink(missing_ok=True)
        src = sqlite3.connect(
            f"{Path(self.path).resolve().as_uri()}?mode=ro", uri=True, timeout=self.timeouts.lock_seconds
        )
        try:
            out = sqlite3.connect(tmp)
            try:
                src.backup(out, pages=1024)
                out.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            finally:
                out.close()
        finally:
            src.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)

    def restore_from(self, backup: str | Path) -> None:
        """Overwrite this database with `backup`, page by page, through SQLite (so its WAL
        and any reader see one consistent switch). No router may be using it."""
        src = sqlite3.connect(f"{Path(backup).resolve().as_uri()}?mode=ro", uri=True)
        try:
            dst = sqlite3.connect(self.path, timeout=self.timeouts.lock_seconds)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode = WAL")
            finally:
                dst.close()
        finally:
            src.close()

    def classify(self, exc: BaseException) -> str | None:
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if code is not None:
                return _KINDS.get(code & 0xFF)
            text = str(exc).lower()  # errors raised before a result code exists
            if "locked" in text or "busy" in text:
                return "busy"
            if "disk is full" in text:
                return "disk_full"
            if "unable to open" in text or "disk i/o" in text:
                return "io"
            return None
        if isinstance(exc, OSError):
            return _ERRNO_KINDS.get(exc.errno or 0, "io")
        return None

    def usable(self, conn: Any) -> bool:
        return not conn.closed

    @contextlib.contextmanager
    def interrupter(self, conn: Any) -> Iterator[Callable[[], None]]:
        yield conn.raw.interrupt

    def simple_abort(self, conn: Any) -> Callable[[], None]:
        interrupt: Callable[[], None] = conn.raw.interrupt
        return interrupt


class _Tx:
    """A connection in autocommit mode whose commit()/rollback() end an explicit BEGIN."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw
        self.closed = False
        self.lock_wait = True  # the busy timeout is timeouts.lock_seconds (connect's)

    def cursor(self) -> sqlite3.Cursor:
        return self.raw.cursor()

    def commit(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.closed = True
        self.raw.close()
