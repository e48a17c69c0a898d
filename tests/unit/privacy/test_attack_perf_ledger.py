"""Attacks on the ledger's performance work (f7cd1d8 gathering, 2098dc2 deferred records
beside the queue). Each test is a control that held; its docstring says what it tries.

- Lost wake-up: deferred commit records appended on the event loop while the writer drains the
  deque (reservations and commits interleaved, many rounds) must all be written without a
  close(), within a bound far above DEFERRED_MAX_DELAY_SECONDS.
- A lone deferred record, with no other traffic at all, is written on its own (≤ 50 ms hold).
- More than MAX_BATCH deferred records queued in one tick are all written before close().
- close() right after queueing many records writes every one.
- Overspend under gathering: many concurrent reservations against a small shared budget, split
  over two ledgers on one store (SQLite file, PostgreSQL), while other reservations stay open
  (so the writers gather): exactly the budget is admitted, again after refunds.
- The gather wait as a DoS: one abandoned reservation (reserved, never settled) makes every
  later lone operation wait for company; the wait is bounded by GATHER_SECONDS per batch and
  stops once the abandoned reservation is stale (OPEN_STALE_SECONDS).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest
from fdp_router.privacy.api import BudgetExceeded
from fdp_router.privacy.ledger import core, open_ledger

from .conftest import LedgerEnv, policy_admitting
from .test_ledger_contract import _charge, _rows

BIG = 100_000  # queries a user may make: no budget refusal in the deferred tests


def _deferred(env: LedgerEnv):
    return env.ledger_cfg.model_copy(update={"commit_mode": "deferred"})


def _states(env: LedgerEnv) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in _rows(env, "SELECT id, state FROM fdp_reservations")}


async def _until_committed(env: LedgerEnv, ids: set[str], limit: float) -> float:
    """Seconds until every id in `ids` reads as committed in the store (fails after `limit`)."""
    t0 = time.monotonic()
    while True:
        states = await asyncio.to_thread(_states, env)
        missing = {i for i in ids if states.get(i) != "committed"}
        if not missing:
            return time.monotonic() - t0
        if time.monotonic() - t0 > limit:
            raise AssertionError(
                f"{len(missing)} deferred commit record(s) never written: {sorted(missing)[:3]}"
            )
        await asyncio.sleep(0.01)


async def test_deferred_records_appended_while_the_writer_drains_are_never_lost(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    """Lost wake-up race: commits (deque appends, a wake only for the first of a hold) land
    while the writer takes the deque for a batch of reservations; a record appended between
    the writer's `_take_deferred` and its `held_since` check must still be written (not only
    at close())."""
    env = ledger_env_sqlite
    policy = policy_admitting(BIG)
    ledger = await open_ledger(_deferred(env), policy)
    rng = random.Random(7)
    try:
        for round_no in range(12):
            reserved = await asyncio.gather(
                *(ledger.reserve(_charge(policy, f"u{i % 5}")) for i in range(24))
            )
            ids = {r.id for r in reserved}
            more = [asyncio.create_task(ledger.reserve(_charge(policy, "x"))) for _ in range(8)]
            for r in reserved:  # commits interleaved with the writer running `more`
                await ledger.commit(r.id, ("n",))
                if rng.random() < 0.5:
                    await asyncio.sleep(0 if rng.random() < 0.7 else 0.0005)
            extra = await asyncio.gather(*more)
            for r in extra:
                await ledger.commit(r.id, ("n",))
            ids |= {r.id for r in extra}
            await _until_committed(env, ids, 3.0)
            assert ledger._deferred_ops == type(ledger._deferred_ops)(), round_no
    finally:
        await ledger.close()


async def test_a_lone_deferred_record_is_written_on_its_own(ledger_env: LedgerEnv) -> None:
    """A hold that exceeds 50 ms with no other traffic: the record must be written by the
    writer's timeout, not left waiting for a batch that never comes (or for close())."""
    policy = policy_admitting(BIG)
    ledger = await open_ledger(_deferred(ledger_env), policy)
    try:
        r = await ledger.reserve(_charge(policy))
        await ledger.commit(r.id, ("n",))
        took = await _until_committed(ledger_env, {r.id}, 3.0)
        assert took < 3.0
        # And a second hold after an idle period starts its own clock.
        await asyncio.sleep(0.2)
        r2 = await ledger.reserve(_charge(policy))
        await ledger.commit(r2.id, ("n",))
        await _until_committed(ledger_env, {r2.id}, 3.0)
    finally:
        await ledger.close()


async def test_more_than_max_batch_deferred_records_are_all_written_before_close(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    """More than MAX_BATCH records in one hold: the writer takes MAX_BATCH per batch and must
    come back for the rest soon (held_since restarted), without any other traffic."""
    env = ledger_env_sqlite
    policy = policy_admitting(BIG)
    ledger = await open_ledger(_deferred(env), policy)
    n = core.MAX_BATCH * 2 + 37
    try:
        reserved = await asyncio.gather(*(ledger.reserve(_charge(policy, f"u{i % 50}")) for i in range(n)))
        for r in reserved:  # one tick: all appended before the writer sees the wake
            await ledger.commit(r.id, ("n",))
        await _until_committed(env, {r.id for r in reserved}, 10.0)
    finally:
        await ledger.close()


async def test_close_writes_every_held_record(ledger_env: LedgerEnv) -> None:
    """Records left behind at close(): queued in one tick (more than MAX_BATCH) and close()
    called at once, while the writer may be holding them; all are written."""
    policy = policy_admitting(BIG)
    ledger = await open_ledger(_deferred(ledger_env), policy)
    n = core.MAX_BATCH + 88
    reserved = await asyncio.gather(*(ledger.reserve(_charge(policy, f"u{i % 20}")) for i in range(n)))
    for r in reserved:
        await ledger.commit(r.id, ("n",))
    await ledger.close()
    states = await asyncio.to_thread(_states, ledger_env)
    assert [states[r.id] for r in reserved] == ["committed"] * n


async def test_no_overspend_across_two_gathering_ledgers_on_one_store(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many concurrent reservations of one user against a budget of 7 queries, split over two
    ledgers on one store, with other reservations held open so that both writers gather (a
    longer gather, 20 ms, widens every window): exactly 7 admitted; after 3 refunds, exactly 3
    more."""
    monkeypatch.setattr(core, "GATHER_SECONDS", 0.02)
    policy = policy_admitting(7)
    a = await ledger_env.open(policy)
    b = await ledger_env.open(policy)
    try:
        # Open reservations of other users keep both writers gathering.
        keep = [await led.reserve(_charge(policy, f"other{i}")) for i, led in enumerate((a, b, a, b))]

        async def one(led) -> object | None:
            try:
                return await led.reserve(_charge(policy, "victim"))
            except BudgetExceeded:
                return None

        got = await asyncio.gather(*(one(a if i % 2 else b) for i in range(40)))
        admitted = [(i, r) for i, r in enumerate(got) if r is not None]
        assert len(admitted) == 7
        for i, r in admitted[:3]:
            await (a if i % 2 else b).release(r.id)
        again = await asyncio.gather(*(one(a if i % 3 else b) for i in range(30)))
        assert sum(r is not None for r in again) == 3
        for i, led in enumerate((a, b, a, b)):
            await led.release(keep[i].id)
    finally:
        await a.close()
        await b.close()


class _TimedEvent(threading.Event):
    """The writer's gather event, recording how long each wait for company took."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout: float | None = None) -> bool:
        t0 = time.perf_counter()
        try:
            return super().wait(timeout)
        finally:
            self.waits.append(time.perf_counter() - t0)


async def test_an_abandoned_reservation_costs_each_lone_operation_at_most_one_gather(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DoS: a client whose request reserved and never settles (a stalled stream, a crashed
    task) keeps `_open` non-empty, so every later lone operation waits for company. The wait
    must stay bounded by GATHER_SECONDS per batch (one wait per batch, never stacked), and
    must stop altogether once the abandoned reservation is stale."""
    monkeypatch.setattr(core, "OPEN_STALE_SECONDS", 1.0)
    policy = policy_admitting(BIG)
    ledger = await ledger_env_sqlite.open(policy)
    ev = _TimedEvent()
    ledger._gathered = ev
    try:
        await ledger.reserve(_charge(policy, "abandoned"))  # never committed nor released
        for _ in range(30):
            r = await ledger.reserve(_charge(policy, "lone"))
            await ledger.release(r.id)
        # Every lone reserve waited for company (release: nothing else open by then? the
        # abandoned one still is): at most one wait per operation, each about GATHER_SECONDS.
        assert 30 <= len(ev.waits) <= 60
        assert max(ev.waits) < core.GATHER_SECONDS + 0.25  # timer slack on a loaded host
        ev.waits.clear()
        await asyncio.sleep(1.1)  # the abandoned reservation is now stale
        for _ in range(10):
            r = await ledger.reserve(_charge(policy, "lone"))
            await ledger.release(r.id)
        assert ev.waits == []
    finally:
        await ledger.close()
