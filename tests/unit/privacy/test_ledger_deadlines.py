"""Every ledger operation has an overall deadline (``ledger.timeouts.operation_seconds``,
queueing included): one per operation, kept by one sweep timer per event loop
(core._Deadlines). A stuck writer costs each waiting caller LedgerUnavailable ``timeout``
at its own deadline, an operation that expired before its turn records nothing, and the
ledger works again once the writer is free."""

from __future__ import annotations

import asyncio
import time

from fdp_router.config import LedgerTimeouts
from fdp_router.privacy.api import Charge, LedgerUnavailable, Scope
from fdp_router.privacy.events import event_for_request

from .conftest import LedgerEnv, policy_admitting

TIMEOUTS = LedgerTimeouts(connect_seconds=2, lock_seconds=0.2, statement_seconds=0.3, operation_seconds=0.6)


async def _outcome(aw: object) -> tuple[float, BaseException | None]:
    """When (monotonic) an operation ended, and its error."""
    try:
        await aw  # type: ignore[misc]
    except BaseException as exc:
        return time.monotonic(), exc
    return time.monotonic(), None


async def test_a_stuck_writer_costs_each_caller_a_timeout_at_its_own_deadline(
    ledger_env_sqlite: LedgerEnv,
) -> None:
    env = ledger_env_sqlite
    env.ledger_cfg = env.ledger_cfg.model_copy(update={"timeouts": TIMEOUTS})
    policy = policy_admitting(5)
    ledger = await env.open(policy)
    event = event_for_request(policy, None)
    try:
        first = await ledger.reserve(Charge("u", "d", ("h",), event))  # the writer works
        ledger._batch_lock.acquire()  # the writer thread now hangs at its next batch
        try:
            start = time.monotonic()
            early = asyncio.ensure_future(_outcome(ledger.reserve(Charge("u", "d", ("h",), event))))
            await asyncio.sleep(0.25)
            late_start = time.monotonic()
            late = asyncio.ensure_future(_outcome(ledger.commit(first.id, ("n",))))
            (t_early, e_early), (t_late, e_late) = await asyncio.gather(early, late)
        finally:
            ledger._batch_lock.release()
        for err in (e_early, e_late):
            assert isinstance(err, LedgerUnavailable) and err.kind == "timeout", err
        # Each at its own deadline (not both at the first one's, nor much later).
        assert 0.55 <= t_early - start <= 0.6 + 0.4
        assert 0.55 <= t_late - late_start <= 0.6 + 0.4
        assert t_late - t_early >= 0.15
        # Free again. The expired commit was still queued: dropped, so `first` is still open
        # and commits now. (The expired reserve had been taken by the writer, which then
        # waited: it may be recorded, spent and never used, the safe side.)
        await asyncio.wait_for(ledger.commit(first.id, ("n",)), 5)
        second = await asyncio.wait_for(ledger.reserve(Charge("u", "d", ("h",), event)), 5)
        await ledger.release(second.id)
        st = await ledger.budget(Scope.USER, "u")
        assert st.extra["queries"] in (1.0, 2.0)
    finally:
        await ledger.close()


async def test_operations_that_finish_leave_no_deadline_behind(ledger_env_sqlite: LedgerEnv) -> None:
    """Settled operations are forgotten as new ones arrive, and one timer per loop."""
    policy = policy_admitting(1000)
    ledger = await ledger_env_sqlite.open(policy)
    event = event_for_request(policy, None)
    try:
        for _ in range(3):
            rs = await asyncio.gather(*(ledger.reserve(Charge("u", "d", ("h",), event)) for _ in range(20)))
            await asyncio.gather(*(ledger.commit(r.id, ()) for r in rs))
        await ledger.check()
        deadlines = ledger._deadlines
        assert deadlines is not None and deadlines.loop is asyncio.get_running_loop()
        assert len(deadlines.waiting) <= 1 and deadlines.timer is not None
        assert list(ledger._all_deadlines) == [asyncio.get_running_loop()]
    finally:
        await ledger.close()


async def test_two_event_loops_each_keep_their_own_deadlines(ledger_env_sqlite: LedgerEnv) -> None:
    """A ledger awaited from two event loops (two threads): each loop's operations are timed
    by that loop's sweep, and both work."""
    policy = policy_admitting(1000)
    ledger = await ledger_env_sqlite.open(policy)
    event = event_for_request(policy, None)

    async def some(n: int) -> asyncio.AbstractEventLoop:
        for _ in range(n):
            r = await ledger.reserve(Charge("u", "d", ("h",), event))
            await ledger.commit(r.id, ())
        return asyncio.get_running_loop()

    try:
        other = asyncio.to_thread(asyncio.run, some(20))
        mine, theirs = await asyncio.gather(some(20), other)
        assert mine is asyncio.get_running_loop() and theirs is not mine
        assert mine in ledger._all_deadlines
        assert (await ledger.budget(Scope.USER, "u")).extra["queries"] == 40.0
    finally:
        await ledger.close()
