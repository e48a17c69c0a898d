"""The idle fast path with deferred commit (the default mode; ledger/core.py, "Idle fast path"):
held commit records do not count as pending work, so at concurrency 1 the next operation
still runs inline and takes the held records into its own transaction. Every record is still
written exactly once, a failed inline batch leaves their reservations spent, and close()
right after loses none."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from typing import Any

import pytest
from fdp_router.errors import LedgerUnavailableError
from fdp_router.privacy.api import Scope
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.ledger import verify_ledger
from fdp_router.privacy.ledger.core import SqlLedger

from .conftest import LedgerEnv, policy_admitting
from .test_attack_deferred_ledger import _records, _states
from .test_ledger_contract import _charge, _driver


@pytest.fixture(autouse=True)
def _deferred_fast_path(ledger_env_sqlite: LedgerEnv) -> None:
    """Deferred commit (the default) with the idle fast path on (opt-in)."""
    env = ledger_env_sqlite
    env.ledger_cfg = env.ledger_cfg.model_copy(update={"commit_mode": "deferred", "idle_fast_path": True})


def _spy(ledger: SqlLedger) -> list[tuple[bool, list[str]]]:
    """Per batch run: whether it ran on the calling (event loop's) thread, and its kinds."""
    here = threading.get_ident()
    seen: list[tuple[bool, list[str]]] = []
    orig = ledger._run_batch

    def run_batch(batch: Any, *args: Any, **kwargs: Any) -> bool:
        seen.append((threading.get_ident() == here, [op.kind for op in batch]))
        return orig(batch, *args, **kwargs)

    ledger._run_batch = run_batch  # type: ignore[method-assign]
    return seen


async def _writer_idle(ledger: SqlLedger) -> None:
    """Until the writer thread has taken the hold's wake-up (well within the 50 ms hold)."""
    t0 = time.monotonic()
    while not ledger._queue.empty() and time.monotonic() - t0 < 0.02:
        await asyncio.sleep(0.0005)


def _verified(env: LedgerEnv) -> None:
    result = verify_ledger(_driver(env), parse_keyring(env.key_file.read_text(), "k"))
    assert result.ok, result


def _commit_counts(env: LedgerEnv) -> dict[object, int]:
    counts: dict[object, int] = {}
    for rec in _records(env):
        if rec["kind"] == "commit":
            counts[rec["rid"]] = counts.get(rec["rid"], 0) + 1
    return counts


async def test_at_concurrency_1_the_held_record_rides_with_the_next_inline_reserve(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    policy = policy_admitting(20)
    ledger = await ledger_env_sqlite.open(policy)
    try:
        seen = _spy(ledger)
        ids = []
        for _ in range(5):
            r = await ledger.reserve(_charge(policy))
            ids.append(r.id)
            await ledger.commit(r.id, ("n",))  # held (deferred) for company
            await _writer_idle(ledger)
        # The first reserve ran alone; each later one took the previous commit record into
        # its transaction, on this thread; the writer thread ran no batch at all.
        assert seen == [(True, ["reserve"])] + [(True, ["commit", "reserve"])] * 4
        assert ledger._pending == 1  # the last record is still held
        states = _states(ledger_env_sqlite)
        assert [states[i] for i in ids] == ["committed"] * 4 + ["reserved"]
        await asyncio.sleep(0.2)  # nobody takes it: the writer writes it within 50 ms
        assert _states(ledger_env_sqlite)[ids[-1]] == "committed"
        assert seen[-1] == (False, ["commit"])
        assert ledger._pending == 0
    finally:
        await ledger.close()
    assert _commit_counts(ledger_env_sqlite) == dict.fromkeys(ids, 1)
    _verified(ledger_env_sqlite)


def _client(ledger: SqlLedger, policy: Any, seed: int, n: int, out: dict[str, str]) -> None:
    """One thread with its own event loop: n requests (reserve, then mostly a deferred
    commit, sometimes a release), with random pauses around the writer's 50 ms hold."""

    async def run() -> None:
        rng = random.Random(seed)
        for i in range(n):
            r = await ledger.reserve(_charge(policy, user=f"u{seed}-{i % 7}"))
            if rng.random() < 0.15:
                await ledger.release(r.id)
                out[r.id] = "released"
            else:
                await ledger.commit(r.id, (f"n{seed}",))
                out[r.id] = "committed"
            pause = rng.choice((0.0, 0.0, 0.0005, 0.002, 0.03, 0.06))
            if pause:
                await asyncio.sleep(pause)
        await asyncio.sleep(0.3)  # the last record's outcome comes back before the loop closes

    asyncio.run(run())


async def test_two_threads_with_their_own_loops_lose_and_repeat_no_record(
    ledger_env_sqlite: LedgerEnv, caplog: pytest.LogCaptureFixture
) -> None:
    policy = policy_admitting(10_000)
    ledger = await ledger_env_sqlite.open(policy)
    outcomes: list[dict[str, str]] = [{}, {}]
    took = 0
    orig_take = ledger._take_deferred

    def take(*, everything: bool) -> list[Any]:
        nonlocal took
        ops = orig_take(everything=everything)
        if threading.current_thread() is not ledger._thread:
            took += len(ops)
        return ops

    ledger._take_deferred = take  # type: ignore[method-assign]
    try:
        threads = [
            threading.Thread(target=_client, args=(ledger, policy, seed, 150, outcomes[seed]))
            for seed in (0, 1)
        ]
        for t in threads:
            t.start()
        for t in threads:
            await asyncio.to_thread(t.join, 120)
            assert not t.is_alive()
    finally:
        await ledger.close()
    assert took > 0, "no inline batch took a held record: the test exercised nothing"
    expected = {**outcomes[0], **outcomes[1]}
    assert len(expected) == 300
    assert _states(ledger_env_sqlite) == expected
    committed = {rid for rid, state in expected.items() if state == "committed"}
    assert _commit_counts(ledger_env_sqlite) == dict.fromkeys(committed, 1)
    assert "deferred commit failed" not in caplog.text  # no record ran twice (refused the 2nd time)
    assert ledger._pending == 0
    _verified(ledger_env_sqlite)


async def test_a_failed_inline_batch_leaves_the_taken_records_spent(ledger_env_sqlite: LedgerEnv) -> None:
    policy = policy_admitting(20)
    ledger = await ledger_env_sqlite.open(policy)
    errors: list[tuple[str, object]] = []
    ledger.set_observer(lambda op, _s, err: errors.append((op, err and err.kind)))
    try:
        seen = _spy(ledger)
        r1 = await ledger.reserve(_charge(policy))
        await ledger.commit(r1.id, ("n",))  # held
        await _writer_idle(ledger)
        driver = ledger._driver
        orig_begin = driver.begin_locked

        def failing_begin(conn: Any) -> Any:
            driver.begin_locked = orig_begin  # type: ignore[method-assign]  # once
            raise sqlite3.OperationalError("disk I/O error")

        driver.begin_locked = failing_begin  # type: ignore[method-assign]
        with pytest.raises(LedgerUnavailableError) as info:
            await ledger.reserve(_charge(policy))
        assert info.value.kind == "io"
        assert seen[-1] == (True, ["commit", "reserve"])  # the failed batch was inline, with r1's record
        await asyncio.sleep(0)  # the record's done-callback
        assert ("commit", "io") in errors  # the record's own outcome: not recorded
        assert ledger._pending == 0 and not ledger._deferred_ops  # settled, not held again
        await asyncio.sleep(0.1)  # and the writer does not write it later either
        assert _states(ledger_env_sqlite) == {r1.id: "reserved"}  # spent, never refunded
        st = await ledger.budget(Scope.USER, "alice")
        assert st.extra["queries"] == 1.0 and st.consumed_epsilon > 0
        r2 = await ledger.reserve(_charge(policy))  # the ledger goes on
        await ledger.commit(r2.id, ("n",))
    finally:
        await ledger.close()
    assert _states(ledger_env_sqlite) == {r1.id: "reserved", r2.id: "committed"}
    assert not [rec for rec in _records(ledger_env_sqlite) if rec["kind"] == "release"]
    _verified(ledger_env_sqlite)


async def test_close_right_after_an_inline_batch_took_records_loses_none(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    policy = policy_admitting(50)
    ledger = await ledger_env_sqlite.open(policy)
    seen = _spy(ledger)
    ids = []
    for _ in range(10):
        r = await ledger.reserve(_charge(policy))
        ids.append(r.id)
        await ledger.commit(r.id, ("n",))
        await _writer_idle(ledger)
    await ledger.close()  # the last record is held: close writes it
    assert seen.count((True, ["commit", "reserve"])) == 9
    assert _states(ledger_env_sqlite) == dict.fromkeys(ids, "committed")
    assert _commit_counts(ledger_env_sqlite) == dict.fromkeys(ids, 1)
    _verified(ledger_env_sqlite)


async def test_close_while_records_taken_by_a_busy_inline_batch_are_given_back(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    """Another process holds the write lock: the inline batch takes the held record, finds
    the lock busy, gives the record back and queues its reserve for the writer (which waits
    for the lock with both); close() comes right then. Once the lock is free both are
    written, the record exactly once."""
    policy = policy_admitting(20)
    ledger = await ledger_env_sqlite.open(policy)
    other = sqlite3.connect(ledger_env_sqlite.ledger_cfg.sqlite_path, isolation_level=None)
    try:
        seen = _spy(ledger)
        r1 = await ledger.reserve(_charge(policy))
        await ledger.commit(r1.id, ("n",))
        await _writer_idle(ledger)
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(ledger.reserve(_charge(policy)))
        await asyncio.sleep(0.01)
        # Tried inline with the record (busy: nothing done), then the writer took both.
        assert seen[-2:] == [(True, ["commit", "reserve"]), (False, ["commit", "reserve"])]
        closing = asyncio.create_task(ledger.close())
        await asyncio.sleep(0.1)
        other.execute("ROLLBACK")
        r2 = await asyncio.wait_for(task, 10)
        await asyncio.wait_for(closing, 10)
    finally:
        other.close()
        await ledger.close()
    assert _states(ledger_env_sqlite) == {r1.id: "committed", r2.id: "reserved"}
    assert _commit_counts(ledger_env_sqlite) == {r1.id: 1}
    _verified(ledger_env_sqlite)
