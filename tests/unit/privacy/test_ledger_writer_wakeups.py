"""How the event loop wakes the ledger's writer thread (ledger/core.py, "Writer scheduling"
and ``_hold``). Its scheduling policy: SCHED_BATCH while a batch carries several callers'
operations (the event loop is busy: a wake-up must not preempt it), the default policy after a
lone caller's batch (an idle loop: the wake-up should take a free CPU at once); Linux only,
elsewhere nothing changes. And a deferred commit record held while the writer waits with the
records' delay as its timeout costs no wake-up, and is still written on time."""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import pytest
from fdp_router.privacy.api import Charge
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import core, open_ledger

from .conftest import LedgerEnv, policy_admitting

linux_policies = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="Linux scheduling policies")


def _policy_in_thread(busy: bool) -> tuple[bool, int]:
    """What writer_scheduling(busy) returns and leaves, in a fresh thread (never this one)."""
    out: list[tuple[bool, int]] = []

    def run() -> None:
        ok = core.writer_scheduling(busy)
        out.append((ok, os.sched_getscheduler(0)))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out[0]


@linux_policies
def test_busy_is_sched_batch_and_idle_the_default() -> None:
    assert _policy_in_thread(True) == (True, os.SCHED_BATCH)
    assert _policy_in_thread(False) == (True, os.SCHED_OTHER)


@linux_policies
def test_a_refused_policy_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: Any) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    assert _policy_in_thread(True) == (False, os.SCHED_OTHER)


def count_wakes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on, one entry per wake-up operation queued for the writer (``_hold``)."""
    wakes: list[str] = []

    class Op(core._Op):
        def __init__(self, kind: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(kind, *args, **kwargs)
            if kind == "wake":
                wakes.append(kind)

    monkeypatch.setattr(core, "_Op", Op)
    return wakes


async def _policy_becomes(tid: int, policy: int, seconds: float = 2.0) -> bool:
    for _ in range(int(seconds / 0.01)):
        if os.sched_getscheduler(tid) == policy:
            return True
        await asyncio.sleep(0.01)
    return False


def _charge(policy: Any, user: str) -> Charge:
    return Charge(user, "d", ("h",), event_for_request(policy, None), query_hash="0" * 64)


@linux_policies
async def test_the_writer_follows_its_batches(ledger_env_sqlite: LedgerEnv) -> None:
    policy = policy_admitting(100)
    ledger = await ledger_env_sqlite.open(policy)
    writer = ledger._thread.native_id
    assert writer is not None
    try:
        assert os.sched_getscheduler(writer) == os.SCHED_OTHER  # nothing ran yet

        # Eight callers queue in one pass of the loop (no await in between): the writer, woken
        # by the first, gets the GIL only when the loop sleeps, and takes all eight at once.
        for attempt in range(20):
            batches: list[int] = []
            orig = ledger._run_batch

            def run_batch(batch: Any, *args: Any, **kwargs: Any) -> bool:
                batches.append(sum(1 for op in batch if op.kind == "reserve"))
                return orig(batch, *args, **kwargs)

            ledger._run_batch = run_batch  # type: ignore[method-assign]
            rs = await asyncio.gather(*(ledger.reserve(_charge(policy, f"u{attempt}-{i}")) for i in range(8)))
            ledger._run_batch = orig  # type: ignore[method-assign]
            if batches[-1] > 1:
                # The writer sets its policy right after it hands out the batch's results.
                assert await _policy_becomes(writer, os.SCHED_BATCH)
                await asyncio.gather(*(ledger.release(r.id) for r in rs))
                break
            await asyncio.gather(*(ledger.release(r.id) for r in rs))
        assert batches[-1] > 1, batches

        # One caller at a time: the writer is back under the default policy.
        for i in range(3):
            r = await ledger.reserve(_charge(policy, f"alone-{i}"))
            await ledger.commit(r.id, ("n",))
        assert await _policy_becomes(writer, os.SCHED_OTHER)
    finally:
        await ledger.close()


async def test_holding_a_commit_record_wakes_no_writer_that_will_look(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reservation the writer waits with the records' delay as its timeout: the
    commit record held next needs no wake-up (at concurrency 1 it came while the loop sent
    the answer), and the writer still writes it within the delay, with no other traffic."""
    wakes = count_wakes(monkeypatch)
    policy = policy_admitting(100)
    cfg = ledger_env_sqlite.ledger_cfg.model_copy(update={"commit_mode": "deferred"})
    ledger = await open_ledger(cfg, policy)
    try:
        for i in range(5):
            r = await ledger.reserve(_charge(policy, f"c1-{i}"))
            await asyncio.sleep(0.01)  # the writer is back waiting, with its timeout
            await ledger.commit(r.id, ("n",))
            assert ledger._deferred_ops, "the commit record is held for company"
            for _ in range(100):  # written on the writer's own clock: <= 50 ms (+ slack)
                if not ledger._deferred_ops:
                    break
                await asyncio.sleep(0.01)
            assert not ledger._deferred_ops, "a held record was left waiting"
        assert wakes == []
    finally:
        await ledger.close()


async def test_a_slow_nodes_answer_costs_the_writer_no_polling(ledger_env_sqlite: LedgerEnv) -> None:
    """After a reservation the writer waits once with the records' delay as its timeout, not
    every 50 ms while the reservation is open: a node that computes for half a second costs
    one timed-out wait (and the commit's wake-up), not ten (found by the attack review)."""
    import queue

    class CountingQueue:
        def __init__(self, inner: queue.SimpleQueue[Any]) -> None:
            self.inner = inner
            self.timeouts = 0

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            try:
                return self.inner.get(block, timeout)
            except queue.Empty:
                self.timeouts += 1
                raise

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    policy = policy_admitting(100)
    cfg = ledger_env_sqlite.ledger_cfg.model_copy(update={"commit_mode": "deferred"})
    ledger = await open_ledger(cfg, policy)
    counting = CountingQueue(ledger._queue)
    ledger._queue = counting  # type: ignore[assignment]
    try:
        r = await ledger.reserve(_charge(policy, "slow"))
        await asyncio.sleep(0.5)  # the node computes
        await ledger.commit(r.id, ("n",))
        for _ in range(100):
            if not ledger._deferred_ops:
                break
            await asyncio.sleep(0.01)
        assert not ledger._deferred_ops, "the commit record was left waiting"
        assert counting.timeouts <= 3, counting.timeouts
    finally:
        await ledger.close()
