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
from fdp_router.privacy.ledger import core, verify_ledger
from fdp_router.privacy.ledger.core import SqlLedger

from .conftest import LedgerEnv, policy_admitting
from .test_attack_deferred_ledger import _records, _states
from .test_ledger_contract import _charge, _driver


@pytest.fixture(autouse=True)
def _deferred_fast_path(ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """Deferred commit (the default) with the idle fast path on (opt-in). The stall guard
    only where a test asks for it: on a loaded test machine one inline transaction over
    100 ms would turn the path off and change which thread runs what."""
    env = ledger_env_sqlite
    env.ledger_cfg = env.ledger_cfg.model_copy(update={"commit_mode": "deferred", "idle_fast_path": True})
    monkeypatch.setattr(core, "IDLE_STALL_SECONDS", 30.0)


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
    """Until the writer thread has taken the hold's wake-up (its 50 ms clock starts then).
    Yields to the loop at least once, as a server does between requests: a record settled
    by an inline batch leaves _pending in its done-callback, which the loop runs."""
    await asyncio.sleep(0)
    t0 = time.monotonic()
    while not ledger._queue.empty() and time.monotonic() - t0 < 1.0:
        await asyncio.sleep(0.0005)


# A reserve this soon after the previous commit must find that record still held (the writer
# holds it 50 ms) and take it inline; a loaded test machine may be slower than this.
QUICK_SECONDS = 0.035


async def _requests(
    ledger: SqlLedger, policy: Any, seen: list[tuple[bool, list[str]]], n: int, pause: float = 0.0
) -> tuple[list[str], int]:
    """`n` requests one after the other (reserve, deferred commit). Each reserve that starts
    within QUICK_SECONDS of the previous commit must run inline with that record in its
    transaction. Returns the reservation ids and how many reserves were that quick."""
    ids: list[str] = []
    held_at: float | None = None
    quick = 0
    for _ in range(n):
        before = len(seen)
        soon = held_at is not None and time.monotonic() - held_at < QUICK_SECONDS
        r = await ledger.reserve(_charge(policy))
        if soon:
            quick += 1
            assert [e for e in seen[before:] if "reserve" in e[1]] == [(True, ["commit", "reserve"])]
        ids.append(r.id)
        await ledger.commit(r.id, ("n",))  # held (deferred) for company
        held_at = time.monotonic()
        await _writer_idle(ledger)
        if pause:
            await asyncio.sleep(pause)
    return ids, quick


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
        # The first reserve runs alone; each later one takes the previous commit record into
        # its transaction, on this thread.
        ids, quick = await _requests(ledger, policy, seen, 5)
        assert seen[0] == (True, ["reserve"])
        assert quick >= 1
        states = _states(ledger_env_sqlite)
        assert [states[i] for i in ids[:-1]] == ["committed"] * 4
        await asyncio.sleep(0.2)  # nobody takes the last: the writer writes it within 50 ms
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
    ids, quick = await _requests(ledger, policy, seen, 10)
    await ledger.close()  # the last record is held: close writes it
    assert quick >= 1
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


async def test_a_slow_inline_batch_with_a_held_record_turns_the_fast_path_off(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stall guard counts the whole inline batch, held records included: after one slower
    than IDLE_STALL_SECONDS the next operations (and the records they take) go to the writer."""
    policy = policy_admitting(20)
    ledger = await ledger_env_sqlite.open(policy)
    try:
        seen = _spy(ledger)
        r1 = await ledger.reserve(_charge(policy))
        await ledger.commit(r1.id, ("n",))
        await _writer_idle(ledger)
        monkeypatch.setattr(core, "IDLE_STALL_SECONDS", 0.0)  # every transaction counts as slow
        r2 = await ledger.reserve(_charge(policy))  # inline, with r1's record: "slow"
        await ledger.commit(r2.id, ("n",))
        await _writer_idle(ledger)
        r3 = await ledger.reserve(_charge(policy))
        assert seen == [(True, ["reserve"]), (True, ["commit", "reserve"]), (False, ["commit", "reserve"])]
        await ledger.commit(r3.id, ("n",))
    finally:
        await ledger.close()
    assert _states(ledger_env_sqlite) == dict.fromkeys((r1.id, r2.id, r3.id), "committed")
    _verified(ledger_env_sqlite)


async def test_the_writers_clock_runs_for_the_oldest_record_still_held(ledger_env_sqlite: LedgerEnv) -> None:
    """At concurrency 1 each inline reserve takes the record held since the last answer: the
    writer's 50 ms clock, started for a record taken since, must not write the younger one
    alone (an extra transaction, racing the next inline batch). Requests every ~20 ms for
    well over 50 ms: every record rides inline; the last, nobody taking it, is written by the
    writer within the 50 ms bound of its own hold."""
    policy = policy_admitting(50)
    ledger = await ledger_env_sqlite.open(policy)
    try:
        seen = _spy(ledger)
        ids, quick = await _requests(ledger, policy, seen, 10, pause=0.015)
        assert quick >= 3  # ~20 ms apart: 150 ms or more of holds, three 50 ms periods
        held = time.monotonic()
        while _states(ledger_env_sqlite)[ids[-1]] != "committed":
            assert time.monotonic() - held < 0.5, "the last record was never written"
            await asyncio.sleep(0.005)
        assert seen[-1] == (False, ["commit"])
    finally:
        await ledger.close()
    _verified(ledger_env_sqlite)
