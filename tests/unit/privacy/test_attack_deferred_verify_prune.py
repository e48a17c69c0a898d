"""Attack on the one-snapshot `ledger verify` (2618d61) with the router's own pruning
(ledger.retention, no --archive): hold verify after it read the head and the live trail and
before it reads the reservation and unit rows, and let a prune archive and delete the oldest
records, their reservations and move the base meanwhile (then a deferred commit and a new
reservation land too). The prune must not wait for verify, and verify must still pass: it
sees the ledger of one moment, not a trail whose reservations vanished under it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from fdp_router.config import LedgerRetention, PrivacyConfig
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.ledger import open_ledger, verify, verify_ledger
from fdp_router.privacy.ledger.maintenance import prune

from .conftest import LedgerEnv
from .test_ledger_integrity import _driver
from .test_ledger_retention import BIG, Clock, _charge


async def test_verify_holding_its_snapshot_while_the_router_prunes_reports_no_tampering(
    ledger_env: LedgerEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ledger_env
    clock = Clock()
    cfg = PrivacyConfig(budgets=BIG)
    retention = LedgerRetention(audit_seconds=3600, archive_dir=str(tmp_path / "archive"))
    keyring = parse_keyring(env.key_file.read_text(), "k")
    ledger = await open_ledger(env.ledger_cfg.model_copy(update={"commit_mode": "deferred"}), cfg, now=clock)
    try:
        for i in range(8):
            r = await ledger.reserve(_charge(cfg, f"u{i}"), ("node-a",))
            if i % 3:
                await ledger.commit(r.id, ("node-a",))
            clock.advance(900)
        await asyncio.sleep(0.1)  # the deferred commit records are written
        clock.advance(3600)
        entered, go = threading.Event(), threading.Event()
        real = verify._check_rows

        def held(*args, **kw):
            entered.set()
            assert go.wait(30)
            return real(*args, **kw)

        monkeypatch.setattr(verify, "_check_rows", held)
        job = asyncio.create_task(asyncio.to_thread(verify_ledger, _driver(env), keyring))
        assert await asyncio.to_thread(entered.wait, 30)
        t0 = time.monotonic()
        report = await asyncio.to_thread(prune, _driver(env), keyring, cfg, retention, clock())
        r = await ledger.reserve(_charge(cfg, "late"), ("node-b",))
        await ledger.commit(r.id, ("node-b",))
        await ledger.check()
        took = time.monotonic() - t0
        go.set()
        result = await job
        assert report.archived > 0
        assert took < 3.0, f"the prune and the writes waited {took:.2f} s for verify's snapshot"
        assert result.ok, result
        monkeypatch.setattr(verify, "_check_rows", real)
        assert verify_ledger(_driver(env), keyring).ok
    finally:
        await ledger.close()
