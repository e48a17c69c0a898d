"""Ledger factory: ``open_ledger(ledger_cfg, privacy_cfg)`` returns the configured backend.

SQLite (default, embedded) or PostgreSQL (several replicas; DSN from a file or an env var).
Both are the same engine (``core.SqlLedger``: group commit, one transaction per batch) over
a different driver, and both pass the same contract tests. ``ledger.timeouts`` bounds every
operation; a database that cannot be used raises ``LedgerUnavailable`` (503), see core.py and
tests/unit/privacy/test_ledger_faults.py. Opening checks the ledger's integrity (identity and
head rows under keyed MACs, ledger/integrity.py) and, with ``ledger.checkpoint_file``, that
the database contains the last exported checkpoint (core.SqlLedger). Called by the router at
start-up and by the CLI.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.audit import load_keyring
from fdp_router.privacy.ledger.core import SqlDriver, SqlLedger
from fdp_router.privacy.ledger.verify import verify_archive, verify_ledger

__all__ = ["SqlLedger", "open_ledger", "open_ledger_sync", "postgres_dsn", "verify_archive", "verify_ledger"]

log = logging.getLogger(__name__)


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
    from fdp_router.privacy.ledger.maintenance import load_checkpoint_file

    checkpoint = None
    if ledger_cfg.checkpoint_file:
        checkpoint = load_checkpoint_file(ledger_cfg.checkpoint_file, "ledger.checkpoint_file")
        if checkpoint is None:
            log.warning(
                "ledger.checkpoint_file %s is absent or empty: no checkpoint to compare with yet",
                ledger_cfg.checkpoint_file,
            )
    options: dict[str, Any] = {
        "deferred_commit": ledger_cfg.commit_mode == "deferred",
        "idle_fast_path": ledger_cfg.idle_fast_path,
        "retention": ledger_cfg.retention,
        "checkpoint": checkpoint,
        "restore_gap": ledger_cfg.restore_gap,
    }
    if ledger_cfg.backend == "postgres":
        from fdp_router.privacy.ledger.postgres import PostgresDriver

        driver: SqlDriver = PostgresDriver(postgres_dsn(ledger_cfg), ledger_cfg.timeouts)
        return SqlLedger(driver, privacy_cfg, load_keyring(ledger_cfg), now, **options)
    from fdp_router.privacy.ledger.sqlite import SqliteDriver

    path = Path(ledger_cfg.sqlite_path)
    keyring = load_keyring(ledger_cfg, dev_key_path=path.with_name(path.name + ".audit-key"))
    return SqlLedger(SqliteDriver(path, ledger_cfg.timeouts), privacy_cfg, keyring, now, **options)


async def open_ledger(
    ledger_cfg: LedgerConfig, privacy_cfg: PrivacyConfig, *, now: Callable[[], datetime] | None = None
) -> SqlLedger:
    """Open (creating the schema if needed) the ledger the config names."""
    return await asyncio.to_thread(open_ledger_sync, ledger_cfg, privacy_cfg, now=now)
