"""PostgreSQL backend: for several router replicas sharing one ledger.

Each batch of operations is one transaction that first locks the single ``fdp_head`` row
(``SELECT ... FOR UPDATE``): reservations from every replica are serialised there, the
budget is read under that lock (READ COMMITTED re-reads the latest committed rows per
statement) and the spend, reservation and audit record are written before COMMIT. Durability
is PostgreSQL's (fsync, synchronous_commit=on). Triggers make the audit table append-only.

Called by ``open_ledger``. The DSN comes from ledger.postgres_dsn_file or the env var named by
ledger.postgres_dsn_env.
"""

from __future__ import annotations

from typing import Any

import psycopg

from fdp_router.privacy.ledger.core import SqlDriver


class PostgresDriver(SqlDriver):
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def connect_writer(self) -> Any:
        conn = psycopg.connect(self.dsn, autocommit=False)
        conn.execute("SET synchronous_commit = on")
        conn.commit()
        return conn

    def connect_reader(self) -> Any:
        return psycopg.connect(self.dsn, autocommit=False)

    def sql(self, text: str) -> str:
        return text.replace("?", "%s")

    def begin_locked(self, conn: Any) -> Any:
        cur = conn.cursor()
        cur.execute("SELECT seq FROM fdp_head WHERE id = 1 FOR UPDATE")
        cur.fetchone()
        return cur

    def init_schema(self, conn: Any) -> None:
        # Several replicas may start at once: serialise schema creation with an advisory lock.
        cur = conn.cursor()
        cur.execute("SELECT pg_advisory_xact_lock(7291001)")
        super().init_schema(conn)

    def extra_schema(self, cur: Any) -> None:
        cur.execute(
            "CREATE OR REPLACE FUNCTION fdp_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'fdp_audit is append-only'; END $$"
        )
        cur.execute("DROP TRIGGER IF EXISTS fdp_audit_no_change ON fdp_audit")
        cur.execute(
            "CREATE TRIGGER fdp_audit_no_change BEFORE UPDATE OR DELETE ON fdp_audit "
            "FOR EACH ROW EXECUTE FUNCTION fdp_audit_append_only()"
        )
