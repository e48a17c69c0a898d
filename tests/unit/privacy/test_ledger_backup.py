"""Backup and restore (issue 15 item 8): a restored ledger never gives budget back.

SQLite: ``fdp-router ledger backup`` (the online backup API, while a ledger writes) and
``ledger restore``. PostgreSQL: ``pg_dump -Fc`` / ``pg_restore``, as documented. Either way,
a ledger whose head is older than the last exported checkpoint is refused (the router does
not start) unless ``ledger.restore_gap: charge_full_window``: then the gap is sealed into
the trail and every unit counts as fully spent until the current window closes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from fdp_router.app import Settings, create_app
from fdp_router.cli import main as cli_main
from fdp_router.config import LedgerConfig, PrivacyConfig, RouterConfig
from fdp_router.privacy.api import BudgetExceeded, Charge, LedgerIntegrityError, Scope
from fdp_router.privacy.audit import parse_keyring, unseal
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger, verify_ledger
from fdp_router.privacy.ledger.core import AUDIT_COLUMNS
from fdp_router.privacy.ledger.maintenance import make_checkpoint
from fdp_router.privacy.ledger.postgres import PostgresDriver
from fdp_router.privacy.ledger.sqlite import SqliteDriver

from tests.support.postgres import PgServer

from .conftest import LedgerEnv

DAY = 86400
POLICY = PrivacyConfig(
    budgets={"per_user": 50.0, "per_department": 1e4, "per_hospital": 1e5},
    window={"kind": "period", "period_seconds": DAY},
)


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 4, 1, 9, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


async def _spend(ledger: Any, n: int, user: str = "alice") -> None:
    for _ in range(n):
        r = await ledger.reserve(Charge(user, "cardiology", ("h1",), event_for_request(POLICY, None)))
        await ledger.commit(r.id, ("node",))


async def _check_restored(
    cfg: LedgerConfig, driver: Any, key_file: Path, clock: Clock, cp_file: Path
) -> None:
    """The restored ledger is refused; accepted, it charges the gap conservatively."""
    keyring = parse_keyring(key_file.read_text(), "k")
    with_cp = cfg.model_copy(update={"checkpoint_file": str(cp_file)})
    with pytest.raises(LedgerIntegrityError, match="behind the last exported checkpoint") as info:
        await open_ledger(with_cp, POLICY, now=clock)
    assert "records missing" in str(info.value) and "restore_gap" in str(info.value)
    accepting = with_cp.model_copy(update={"restore_gap": "charge_full_window"})
    ledger = await open_ledger(accepting, POLICY, now=clock)
    try:
        for user in ("alice", "bob"):  # bob never spent: the lost records may have been his
            with pytest.raises(BudgetExceeded) as refused:
                await ledger.reserve(Charge(user, "cardiology", ("h1",), event_for_request(POLICY, None)))
            assert refused.value.available == 0.0
            assert (await ledger.budget(Scope.USER, user)).remaining_epsilon == 0.0
        clock.t += timedelta(days=1)  # the window closes: budgets as usual again
        await _spend(ledger, 1, "bob")
        assert (await ledger.budget(Scope.USER, "bob")).extra["queries"] == 1
    finally:
        await ledger.close()
    # accepted once, recorded: the flag may go back to refuse
    ledger = await open_ledger(with_cp, POLICY, now=clock)
    await ledger.close()
    assert verify_ledger(driver, keyring).ok
    conn = driver.connect_reader()
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit WHERE kind = 'gap'")
        (gap,) = [dict(zip(AUDIT_COLUMNS, r, strict=True)) for r in cur.fetchall()]
        conn.rollback()
    finally:
        conn.close()
    sealed = unseal(keyring, gap)
    assert sealed["checkpoint"]["seq"] == 20 and "records missing" in sealed["behind"]


async def test_sqlite_backup_while_writing_then_restore_is_refused_until_the_gap_is_accepted(
    ledger_env_sqlite: LedgerEnv, tmp_path: Path
) -> None:
    env = ledger_env_sqlite
    clock = Clock()
    ledger = await env.open(POLICY, now=clock)
    try:
        await _spend(ledger, 4)
        writer = asyncio.create_task(_spend(ledger, 30, "carol"))  # the backup runs meanwhile
        backup = tmp_path / "backup.sqlite"
        assert (
            await asyncio.to_thread(
                cli_main, ["ledger", "backup", "--sqlite", env.ledger_cfg.sqlite_path, "--out", str(backup)]
            )
            == 0
        )
        await writer
    finally:
        await ledger.close()
    assert verify_ledger(
        SqliteDriver(backup, read_only=True), parse_keyring(env.key_file.read_text(), "k")
    ).ok
    # start again from a clean, known state: 10 pairs, a backup, 10 more, a checkpoint
    fresh = tmp_path / "fresh.sqlite"
    cfg = env.ledger_cfg.model_copy(update={"sqlite_path": str(fresh)})
    ledger = await open_ledger(cfg, POLICY, now=clock)
    try:
        await _spend(ledger, 5)
        assert (
            cli_main(["ledger", "backup", "--sqlite", str(fresh), "--out", str(tmp_path / "b2.sqlite")]) == 0
        )
        await _spend(ledger, 5)
    finally:
        await ledger.close()
    cp_file = tmp_path / "cp.json"
    assert (
        cli_main(
            [
                "ledger",
                "checkpoint",
                "--sqlite",
                str(fresh),
                "--key-file",
                str(env.key_file),
                "--out",
                str(cp_file),
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "ledger",
                "restore",
                "--from",
                str(tmp_path / "b2.sqlite"),
                "--sqlite",
                str(fresh),
                "--key-file",
                str(env.key_file),
            ]
        )
        == 2
    )  # exists
    assert (
        cli_main(
            [
                "ledger",
                "restore",
                "--from",
                str(tmp_path / "b2.sqlite"),
                "--sqlite",
                str(fresh),
                "--key-file",
                str(env.key_file),
                "--force",
            ]
        )
        == 0
    )
    assert (
        cli_main(
            [
                "ledger",
                "verify",
                "--sqlite",
                str(fresh),
                "--key-file",
                str(env.key_file),
                "--expect-head",
                str(cp_file),
            ]
        )
        == 1
    )
    await _check_restored(cfg, SqliteDriver(fresh, read_only=True), env.key_file, clock, cp_file)


@pytest.mark.postgres
async def test_postgres_pg_dump_restore_is_refused_until_the_gap_is_accepted(
    ledger_env_pg: LedgerEnv, pg_server: PgServer, tmp_path: Path
) -> None:
    env = ledger_env_pg
    clock = Clock()
    ledger = await env.open(POLICY, now=clock)
    try:
        await _spend(ledger, 5)
    finally:
        await ledger.close()
    dump = tmp_path / "ledger.dump"
    await asyncio.to_thread(pg_server.dump, env.dsn or "", dump)
    ledger = await env.open(POLICY, now=clock)
    try:
        await _spend(ledger, 5)
    finally:
        await ledger.close()
    keyring = parse_keyring(env.key_file.read_text(), "k")
    cp_file = tmp_path / "cp.json"
    cp_file.write_text(make_checkpoint(PostgresDriver(env.dsn or ""), keyring).to_json())
    restored = await asyncio.to_thread(pg_server.restore, dump)
    dsn_file = tmp_path / "restored.dsn"
    dsn_file.write_text(restored)
    cfg = env.ledger_cfg.model_copy(update={"postgres_dsn_file": str(dsn_file)})
    assert verify_ledger(PostgresDriver(restored), keyring).ok  # a consistent snapshot ...
    await _check_restored(cfg, PostgresDriver(restored), env.key_file, clock, cp_file)  # ... but behind


async def test_a_router_does_not_start_on_a_ledger_behind_its_checkpoint(
    ledger_env_sqlite: LedgerEnv, tmp_path: Path, aiohttp_client: Callable[..., Awaitable[TestClient]]
) -> None:
    env = ledger_env_sqlite
    ledger = await env.open(POLICY)
    try:
        await _spend(ledger, 2)
    finally:
        await ledger.close()
    backup = tmp_path / "b.sqlite"
    assert cli_main(["ledger", "backup", "--sqlite", env.ledger_cfg.sqlite_path, "--out", str(backup)]) == 0
    ledger = await env.open(POLICY)
    try:
        await _spend(ledger, 2)
    finally:
        await ledger.close()
    cp_file = tmp_path / "cp.json"
    assert (
        cli_main(
            [
                "ledger",
                "checkpoint",
                "--config",
                str(_config(tmp_path, env.ledger_cfg)),
                "--out",
                str(cp_file),
            ]
        )
        == 0
    )
    SqliteDriver(env.ledger_cfg.sqlite_path).restore_from(backup)
    ledger_cfg = env.ledger_cfg.model_copy(update={"checkpoint_file": str(cp_file)})
    cfg = RouterConfig.model_validate({"privacy": POLICY.model_dump(), "ledger": ledger_cfg.model_dump()})
    app = create_app(
        Settings(config=cfg, hs256_secret=secrets.token_bytes(40), probes=False, access_log=False)
    )
    with pytest.raises(LedgerIntegrityError, match="behind the last exported checkpoint"):
        await aiohttp_client(app)


def _config(tmp_path: Path, ledger_cfg: LedgerConfig) -> Path:
    path = tmp_path / "router.json"
    path.write_text(RouterConfig(ledger=ledger_cfg).model_dump_json())
    return path
