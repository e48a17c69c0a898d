"""The SQLite ledger's idle fast path (ledger/core.py): an operation submitted while nothing
else is pending runs its transaction on the caller's thread; when another process holds the
write lock it goes to the writer thread instead, which waits for the lock (the caller's event
loop is never blocked on the lock), and the outcome is the same either way."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import pytest
from fdp_router.privacy.api import Charge, Scope
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import core
from fdp_router.privacy.ledger.core import SqlLedger

from .conftest import LedgerEnv, policy_admitting


def _spy(ledger: SqlLedger) -> list[bool]:
    """Record, per batch, whether it ran on this (the event loop's) thread."""
    here = threading.get_ident()
    ran: list[bool] = []
    orig = ledger._run_batch

    def run_batch(*args: Any, **kwargs: Any) -> bool:
        ran.append(threading.get_ident() == here)
        return orig(*args, **kwargs)

    ledger._run_batch = run_batch  # type: ignore[method-assign]
    return ran


@pytest.fixture(autouse=True)
def _fast_path_on(ledger_env_sqlite: LedgerEnv) -> None:
    """The fast path is opt-in (ledger.idle_fast_path): these tests are about it."""
    ledger_env_sqlite.ledger_cfg = ledger_env_sqlite.ledger_cfg.model_copy(update={"idle_fast_path": True})


async def test_idle_operations_run_on_the_callers_thread(ledger_env_sqlite: LedgerEnv) -> None:
    policy = policy_admitting(3)
    ledger = await ledger_env_sqlite.open(policy)
    try:
        ran = _spy(ledger)
        event = event_for_request(policy, None)
        r = await ledger.reserve(Charge("u", "d", ("h",), event, query_hash="0" * 64))
        await ledger.commit(r.id, ("n",))
        r2 = await ledger.reserve(Charge("u", "d", ("h",), event, query_hash="0" * 64))
        await ledger.release(r2.id)
        assert ran == [True, True, True, True]
        st = await ledger.budget(Scope.USER, "u")
        assert st.consumed_epsilon > 0
        assert r.user_remaining_epsilon == st.remaining_epsilon  # the release refunded r2 exactly
    finally:
        await ledger.close()


async def test_a_held_write_lock_sends_the_operation_to_the_writer_thread(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    policy = policy_admitting(3)
    ledger = await ledger_env_sqlite.open(policy)
    other = sqlite3.connect(ledger_env_sqlite.ledger_cfg.sqlite_path, isolation_level=None)
    try:
        ran = _spy(ledger)
        event = event_for_request(policy, None)
        other.execute("BEGIN IMMEDIATE")  # another process's transaction holds the write lock
        task = asyncio.create_task(ledger.reserve(Charge("u", "d", ("h",), event, query_hash="0" * 64)))
        t0 = time.monotonic()
        await asyncio.sleep(0.2)
        assert time.monotonic() - t0 < 1.0  # the loop was not blocked waiting for the lock
        assert not task.done()
        other.execute("ROLLBACK")
        r = await asyncio.wait_for(task, 10)
        await ledger.commit(r.id, ("n",))
        # Tried on the caller's thread (the lock was busy: nothing done), then the writer
        # thread waited for the lock; idle again, the commit ran on the caller's thread.
        assert ran == [True, False, True]
        assert (await ledger.budget(Scope.USER, "u")).consumed_epsilon > 0
    finally:
        other.close()
        await ledger.close()


async def test_another_open_reservation_leaves_batching_to_the_writer(ledger_env_sqlite: LedgerEnv) -> None:
    """Another request in flight (its reservation open): its commit will follow, so this
    operation goes to the writer thread to be group-committed, not run alone inline."""
    policy = policy_admitting(3)
    ledger = await ledger_env_sqlite.open(policy)
    try:
        ran = _spy(ledger)
        event = event_for_request(policy, None)
        a = await ledger.reserve(Charge("u", "d", ("h",), event, query_hash="0" * 64))
        b = await ledger.reserve(Charge("v", "d", ("h",), event, query_hash="0" * 64))  # a is open
        await ledger.commit(a.id, ("n",))  # b is open
        await ledger.commit(b.id, ("n",))  # nothing else open
        assert ran == [True, False, False, True]
    finally:
        await ledger.close()


async def test_the_fast_path_can_be_turned_off(ledger_env_sqlite: LedgerEnv) -> None:
    policy = policy_admitting(3)
    env = ledger_env_sqlite
    env.ledger_cfg = env.ledger_cfg.model_copy(update={"idle_fast_path": False})
    ledger = await env.open(policy)
    try:
        ran = _spy(ledger)
        r = await ledger.reserve(
            Charge("u", "d", ("h",), event_for_request(policy, None), query_hash="0" * 64)
        )
        await ledger.commit(r.id, ("n",))
        assert ran == [False, False]
    finally:
        await ledger.close()


async def test_a_slow_inline_transaction_turns_the_fast_path_off(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalling disk must not keep stalling the event loop: after one inline transaction
    slower than IDLE_STALL_SECONDS the operations go to the writer thread for a while."""
    policy = policy_admitting(3)
    ledger = await ledger_env_sqlite.open(policy)
    try:
        ran = _spy(ledger)
        monkeypatch.setattr(core, "IDLE_STALL_SECONDS", 0.0)  # every transaction counts as slow
        r = await ledger.reserve(
            Charge("u", "d", ("h",), event_for_request(policy, None), query_hash="0" * 64)
        )
        await ledger.commit(r.id, ("n",))
        assert ran == [True, False]
    finally:
        await ledger.close()
