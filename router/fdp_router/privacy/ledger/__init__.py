"""Ledger factory: ``open_ledger(ledger_cfg, privacy_cfg)`` returns the configured backend.

SQLite (default, embedded) or PostgreSQL (several replicas; DSN from a file or an env var).
Both are the same engine (``core.SqlLedger``: group commit, one transaction per batch) over
a different driver, and both pass the same contract tests. ``ledger.timeouts`` bounds every
operation; a database that cannot be used raises ``LedgerUnavailable`` (503), see core.py and
tests/unit/privacy/test_ledger_faults.py. Called by the router at start-up and by the CLI.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy import events as ev
from fdp_router.privacy import filter as flt
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.audit import Keyring, VerifyResult, load_keyring, unseal, verify_chain
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

        return SqlLedger(
            PostgresDriver(postgres_dsn(ledger_cfg), ledger_cfg.timeouts),
            privacy_cfg,
            load_keyring(ledger_cfg),
            now,
            deferred_commit=ledger_cfg.commit_mode == "deferred",
        )
    from fdp_router.privacy.ledger.sqlite import SqliteDriver

    path = Path(ledger_cfg.sqlite_path)
    keyring = load_keyring(ledger_cfg, dev_key_path=path.with_name(path.name + ".audit-key"))
    return SqlLedger(
        SqliteDriver(path, ledger_cfg.timeouts),
        privacy_cfg,
        keyring,
        now,
        deferred_commit=ledger_cfg.commit_mode == "deferred",
    )


async def open_ledger(
    ledger_cfg: LedgerConfig, privacy_cfg: PrivacyConfig, *, now: Callable[[], datetime] | None = None
) -> SqlLedger:
    """Open (creating the schema if needed) the ledger the config names."""
    return await asyncio.to_thread(open_ledger_sync, ledger_cfg, privacy_cfg, now=now)


def verify_ledger(driver: SqlDriver, keyring: Keyring | None) -> VerifyResult:
    """Walk the audit table in sequence order and check the chain, hashes and tags; with the
    keyring, also replay the trail and check that every unit's recorded spend matches it (so
    editing or deleting budget rows to win budget back is detected too)."""
    conn = driver.connect_reader()
    try:
        cur = conn.cursor()
        cur.execute("SELECT seq, hash FROM fdp_head WHERE id = 1")
        head_row = cur.fetchone()
        cur.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit ORDER BY seq")  # noqa: S608
        rows = [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in cur.fetchall()]
        head = (int(head_row[0]), str(head_row[1])) if head_row else None
        result = verify_chain(rows, keyring, head)
        if not result.ok or keyring is None:
            return result
        cur.execute("SELECT scope, unit_key, window_id, rdp, n_queries FROM fdp_units")
        stored = {(r[0], r[1], int(r[2])): (json.loads(r[3]), int(r[4])) for r in cur.fetchall()}
        return _replay_units(rows, keyring, stored, result)
    finally:
        conn.close()


def _replay_units(
    rows: list[dict[str, Any]],
    keyring: Keyring,
    stored: dict[tuple[str, str, int], tuple[list[float], int]],
    chain: VerifyResult,
) -> VerifyResult:
    expected: dict[tuple[str, str, int], tuple[tuple[float, ...], int]] = {}
    reservations: dict[str, tuple[list[tuple[str, str, int]], tuple[float, ...]]] = {}
    for rec in rows:
        data = unseal(keyring, rec)
        if rec["kind"] == "reserve":
            win = int(data["window_id"])
            units = [("user", data["user_id"], win), ("department", data["department"], win)]
            units += [("hospital", h, win) for h in dict.fromkeys(data["hospitals"])]
            cost = flt.rdp_curve(ev.from_dict(data["event"]))
            reservations[rec["reservation_id"]] = (units, cost)
            sign = 1
        elif rec["kind"] == "release" and rec["reservation_id"] in reservations:
            units, cost = reservations[rec["reservation_id"]]
            sign = -1
        else:
            continue
        for u in units:
            spent, n = expected.get(u, (flt.zero(), 0))
            expected[u] = (flt.add(spent, cost) if sign > 0 else flt.subtract(spent, cost), n + sign)
    for unit in sorted(set(expected) | set(stored)):
        exp_spent, exp_n = expected.get(unit, (flt.zero(), 0))
        got_spent, got_n = stored.get(unit, (list(flt.zero()), 0))
        close = all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(exp_spent, got_spent, strict=True)
        )
        if exp_n != got_n or not close:
            return VerifyResult(
                False,
                chain.checked,
                None,
                f"unit {unit[0]} {unit[1]!r} (window {unit[2]}) records {got_n} queries but the audit trail "
                f"replays to {exp_n}" + ("" if close else " (RDP sums differ)"),
            )
    return chain
