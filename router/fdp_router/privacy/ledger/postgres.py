"""PostgreSQL backend: for several router replicas sharing one ledger.

Each batch of operations is one transaction that first locks the single ``fdp_head`` row
(``SELECT ... FOR UPDATE``): reservations from every replica are serialised there, the
budget is read under that lock (READ COMMITTED re-reads the latest committed rows per
statement) and the spend, reservation and audit record are written before COMMIT. Durability
is PostgreSQL's (fsync, synchronous_commit=on). Triggers make the audit table append-only.

Connections. The writer (group commit) owns one connection and budget reads share another;
each is replaced when it died, and the work that found it dead (a batch before its COMMIT,
an idempotent read) runs once more on the new one (core.py): after a restart or failover the
first request succeeds, with no round trip spent checking connections that are fine. (A
``psycopg_pool`` pool was tried for the reads: it re-establishes connections in the
background with exponential back-off, so reads kept failing for seconds after the server was
back.) Every connection gets libpq ``connect_timeout`` and the session's
``statement_timeout`` / ``lock_timeout`` from ``ledger.timeouts``; a call that still runs past
``statement_seconds`` (a frozen server enforces nothing) has its socket shut down by the
watchdog. libpq multi-host DSNs work as libpq defines them: ``host=a,b`` with
``target_session_attrs=read-write`` connects to whichever host accepts writes, so after a
failover the next connection finds the promoted primary (docs/router.md, "The ledger on
PostgreSQL").

Called by ``open_ledger``. The DSN comes from ledger.postgres_dsn_file or the env var named by
ledger.postgres_dsn_env.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from fdp_router.config import LedgerTimeouts
from fdp_router.privacy.ledger.core import SqlDriver

APPLICATION_NAME = "fdp-router-ledger"


class PostgresDriver(SqlDriver):
    def __init__(self, dsn: str, timeouts: LedgerTimeouts | None = None) -> None:
        super().__init__(timeouts)
        self.dsn = dsn
        # ledger.timeouts.connect_seconds wins over a connect_timeout in the DSN: one knob.
        extra: dict[str, Any] = {"connect_timeout": self.timeouts.connect_seconds}
        if "application_name" not in conninfo_to_dict(dsn):
            extra["application_name"] = APPLICATION_NAME
        self.conninfo = make_conninfo(dsn, **extra)
        self._session = (
            int(self.timeouts.statement_seconds * 1000),
            int(self.timeouts.lock_seconds * 1000),
        )

    def _set_session(self, conn: psycopg.Connection[Any]) -> None:
        statement_ms, lock_ms = self._session
        conn.execute(
            "SELECT set_config('synchronous_commit', 'on', false), "
            "set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)",
            (str(statement_ms), str(lock_ms)),
        )
        if not conn.autocommit:
            conn.commit()

    def connect_writer(self) -> Any:
        conn = psycopg.connect(self.conninfo, autocommit=False)
        self._set_session(conn)
        return conn

    def connect_reader(self) -> Any:
        conn = psycopg.connect(self.conninfo, autocommit=False)
        self._set_session(conn)
        return conn

    def begin_snapshot(self, conn: Any) -> None:
        # READ COMMITTED (the default) takes a new snapshot per statement
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def begin_locked(self, conn: Any) -> Any:
        cur = conn.cursor()
        cur.execute("SELECT seq FROM fdp_head WHERE id = 1 FOR UPDATE")
        cur.fetchone()
        return cur

    def begin_schema(self, conn: Any) -> Any:
        # Several replicas may start at once: serialise schema creation with an advisory lock.
        cur = conn.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(7291001)")
        return cur

    def table_exists(self, cur: Any, name: str) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (name,))
        return bool(cur.fetchone()[0])

    def extra_schema(self, cur: Any) -> None:
        # DELETE only of archived records (at or below the head's base_seq: maintenance.py).
        cur.execute(
            "CREATE OR REPLACE FUNCTION fdp_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN IF TG_OP = 'DELETE' AND OLD.seq <= (SELECT base_seq FROM fdp_head WHERE id = 1) "
            "THEN RETURN OLD; END IF; RAISE EXCEPTION 'fdp_audit is append-only'; END $$"
        )
        cur.execute("DROP TRIGGER IF EXISTS fdp_audit_no_change ON fdp_audit")
        cur.execute(
            "CREATE TRIGGER fdp_audit_no_change BEFORE UPDATE OR DELETE ON fdp_audit "
            "FOR EACH ROW EXECUTE FUNCTION fdp_audit_append_only()"
        )

    # --- availability ---------------------------------------------------------------------

    def classify(self, exc: BaseException) -> str | None:
        if not isinstance(exc, psycopg.Error):
            return None
        state = exc.sqlstate or ""
        if state == "57014":  # query_canceled: statement_timeout
            return "timeout"
        if state in ("55P03", "40001", "40P01"):  # lock_timeout, serialization, deadlock
            return "busy"
        if state == "53100":  # disk_full
            return "disk_full"
        if state.startswith("53"):  # out of memory, too many connections
            return "busy"
        if state == "25006":  # read_only_sql_transaction: a standby (failover in progress)
            return "read_only"
        if state.startswith(("08", "57P")):  # connection failures, admin/crash shutdown, starting up
            return "connection"
        if state.startswith("58"):  # system / I/O error
            return "io"
        if isinstance(exc, psycopg.errors.ConnectionTimeout):
            return "timeout"
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not state:
            return "connection"  # refused, reset, lost: libpq reports no SQLSTATE
        return None

    def usable(self, conn: Any) -> bool:
        return not (conn.closed or conn.broken)

    @contextlib.contextmanager
    def interrupter(self, conn: Any) -> Iterator[Callable[[], None]]:
        # Our own descriptor of the connection's socket: shutting it down wakes a call blocked
        # on it, and it cannot be a recycled descriptor of some other socket meanwhile.
        try:
            sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        except (psycopg.Error, OSError):  # already closed: any call on it fails at once
            yield _noop
            return
        try:
            yield lambda: _shutdown(sock)
        finally:
            sock.close()


def _noop() -> None:
    pass


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
