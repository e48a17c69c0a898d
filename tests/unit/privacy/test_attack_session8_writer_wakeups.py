"""Attack session 8 on the ledger writer's wake-ups (ledger/core.py: `_hold` skips the wake-up
while `_writer_looks`). The invariant: a held deferred commit record is written within about
DEFERRED_MAX_DELAY_SECONDS with no other traffic, whatever the writer was doing when it was
held, and exactly once."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import pytest
from fdp_router.privacy.api import Charge
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import core, open_ledger

from .conftest import LedgerEnv, policy_admitting
from .test_ledger_writer_wakeups import count_wakes


def _charge(policy: Any, user: str) -> Charge:
    return Charge(user, "d", ("h",), event_for_request(policy, None), query_hash="0" * 64)


def _states(env: LedgerEnv) -> dict[str, str]:
    with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, state FROM fdp_reservations")}


def _commit_records(env: LedgerEnv) -> list[str]:
    """The reservation ids of the audit trail's commit records (one per settled commit)."""
    with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
        return [r[0] for r in conn.execute("SELECT reservation_id FROM fdp_audit WHERE kind = 'commit'")]


async def _written_within(ledger: Any, seconds: float) -> float | None:
    """Seconds until no record is held any more (None: still held after `seconds`)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if not ledger._deferred_ops:
            return time.monotonic() - start
        await asyncio.sleep(0.005)
    return None


async def test_a_record_held_while_the_writer_runs_a_batch_without_reservations_is_written_on_time(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer runs a batch (a release: no reservation in it) when the last open
    reservation's commit record is held. The writer looks (`_writer_looks` from its last wait),
    so no wake-up is queued; after the batch nothing is open, the batch reserved nothing and
    no other traffic comes: only the writer's own look at the held records before it waits
    (`held_since = self._oldest_held()` at the top of its loop) gives it a timeout."""
    wakes = count_wakes(monkeypatch)
    policy = policy_admitting(100)
    cfg = ledger_env_sqlite.ledger_cfg.model_copy(update={"commit_mode": "deferred"})
    ledger = await open_ledger(cfg, policy)
    try:
        for i in range(3):
            kept = await ledger.reserve(_charge(policy, f"kept-{i}"))
            dropped = await ledger.reserve(_charge(policy, f"dropped-{i}"))
            await asyncio.sleep(0.01)  # the writer waits, with the records' delay (it reserved)

            in_batch = threading.Event()
            go_on = threading.Event()
            orig = ledger._run_batch

            def run_batch(batch: Any, *args: Any, _orig: Any = orig, **kwargs: Any) -> bool:
                if any(op.kind == "release" for op in batch):
                    in_batch.set()
                    go_on.wait(5)
                return _orig(batch, *args, **kwargs)

            ledger._run_batch = run_batch  # type: ignore[method-assign]
            release = asyncio.create_task(ledger.release(dropped.id))
            assert await asyncio.to_thread(in_batch.wait, 5), "the writer never ran the release"
            assert ledger._writer_looks, "the writer looks while it is busy"
            await ledger.commit(kept.id, ("n",))  # held; the last open reservation settled
            assert ledger._deferred_ops, "the commit record is held for company"
            go_on.set()
            await release
            ledger._run_batch = orig  # type: ignore[method-assign]

            took = await _written_within(ledger, 1.0)
            assert took is not None, "a record held while the writer was busy was never written"
            assert took < core.DEFERRED_MAX_DELAY_SECONDS + 0.25, took
        assert wakes == [], "no wake-up was needed"
    finally:
        await ledger.close()
    states = _states(ledger_env_sqlite)
    assert sorted(states.values()) == ["committed"] * 3 + ["released"] * 3, states
    assert len(_commit_records(ledger_env_sqlite)) == 3


async def test_records_held_from_two_event_loops_are_all_written_once(ledger_env_sqlite: LedgerEnv) -> None:
    """Two threads, each with its own event loop, reserve and commit (deferred) on one ledger
    at once, with the idle fast path on: every commit record is written exactly once and none
    waits longer than the records' delay (+ slack) after the traffic stops."""
    policy = policy_admitting(1000)
    cfg = ledger_env_sqlite.ledger_cfg.model_copy(update={"commit_mode": "deferred", "idle_fast_path": True})
    ledger = await open_ledger(cfg, policy)
    ids: list[str] = []
    lock = threading.Lock()

    def worker(tag: str) -> None:
        async def run() -> None:
            for i in range(25):
                r = await ledger.reserve(_charge(policy, f"{tag}-{i}"))
                await ledger.commit(r.id, ("n",))
                with lock:
                    ids.append(r.id)
                if i % 5 == 0:
                    await asyncio.sleep(0.02)

        asyncio.run(run())

    try:
        await asyncio.gather(*(asyncio.to_thread(worker, t) for t in ("a", "b")))
        took = await _written_within(ledger, 1.0)
        assert took is not None and took < core.DEFERRED_MAX_DELAY_SECONDS + 0.25, took
    finally:
        await ledger.close()
    states = _states(ledger_env_sqlite)
    assert len(ids) == 50
    assert {states[i] for i in ids} == {"committed"}, states
    assert sorted(_commit_records(ledger_env_sqlite)) == sorted(ids)  # each written once
