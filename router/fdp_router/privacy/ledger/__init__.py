"""Ledger factory: ``open_ledger(ledger_cfg, privacy_cfg)`` returns the configured backend.

SQLite (default, embedded) or PostgreSQL (several replicas; DSN from a file or an env var).
Both are the same engine (``core.SqlLedger``: group commit, one transaction per batch) over
a different driver, and both pass the same contract tests. Called by the router at start-up
and by the CLI.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.audit import Keyring, VerifyResult, load_keyring, verify_chain
from fdp_router.privacy.ledger.core import AUDIT_COLUMNS, SqlDriver, SqlLedger

__all__ = ["SqlLedger", "open_ledger", "open_ledger_sync", "postgres_dsn", "verify_ledger"]


def postgres_dsn(ledger_cfg: LedgerConfig) -> str:
    if ledger_cfg.postgres_dsn_file:
        path = Path(ledger_cfg.postgres_dsn_file)
        if not path.is_file():
            raise InvalidPrivacyRequest("ledger.postgres_dsn_file", f"{path} does not exist")
        return path.read_text(encoding="utf-8").strip()
    if ledger_cfg.postgres_dsn_env and os.environ.get(ledger_cfg.postgres_dsn_env):
        return os.environ[ledger_cfg.postgres_dsn_env].strip()
    raise InvalidPrivacyRequest(
        "ledger.postgres_dsn_file", "backend is postgres but neither a DSN file nor the DSN env var is set"
    )


def open_ledger_sync(
    ledger_cfg: LedgerConfig, privacy_cfg: PrivacyConfig, *, now: Callable[[], datetime] | None = None
) -> SqlLedger:
    if ledger_cfg.backend == "postgres":
        from fdp_router.privacy.ledger.postgres import PostgresDriver

        return SqlLedger(PostgresDriver(postgres_dsn(ledger_cfg)), privacy_cfg, load_keyring(ledger_cfg), now)
    from fdp_router.privacy.ledger.sqlite import SqliteDriver

    path = Path(ledger_cfg.sqlite_path)
    keyring = load_keyring(ledger_cfg, dev_key_path=path.with_name(path.name + ".audit-key"))
    return SqlLedger(SqliteDriver(path), privacy_cfg, keyring, now)


async def open_ledger(
    ledger_cfg: LedgerConfig, privacy_cfg: PrivacyConfig, *, now: Callable[[], datetime] | None = None
) -> SqlLedger:
    """Open (creating the schema if needed) the ledger the config names."""
    return await asyncio.to_thread(open_ledger_sync, ledger_cfg, privacy_cfg, now=now)


def verify_ledger(driver: SqlDriver, keyring: Keyring | None) -> VerifyResult:
    """Walk the audit table in sequence order and check the chain, hashes and tags."""
    conn = driver.connect_reader()
    try:
        cur = conn.cursor()
        cur.execute("SELECT seq, hash FROM fdp_head WHERE id = 1")
        head_row = cur.fetchone()
        cur.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit ORDER BY seq")  # noqa: S608
        rows = (dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in cur)
        head = (int(head_row[0]), str(head_row[1])) if head_row else None
        return verify_chain(rows, keyring, head)
    finally:
        conn.close()
