"""Attack review of the ledger's shared deadline sweep (core._Deadlines): whatever settles,
gets cancelled by its caller or arrives in between, every operation still waiting is expired
at (not long after) its own deadline, and none before it."""

from __future__ import annotations

import asyncio

from fdp_router.privacy.ledger import core

SECONDS = 0.05


def _op(loop: asyncio.AbstractEventLoop) -> core._Op:
    return core._Op("reserve", loop.create_future())


async def _expired_at(op: core._Op, loop: asyncio.AbstractEventLoop) -> float:
    assert op.future is not None
    try:
        await op.future
    except asyncio.CancelledError:
        pass
    return loop.time()


async def test_a_stuck_operation_behind_settled_and_cancelled_ones_expires_at_its_deadline() -> None:
    loop = asyncio.get_running_loop()
    d = core._Deadlines(loop, SECONDS)
    settled, cancelled, stuck = _op(loop), _op(loop), _op(loop)
    t0 = loop.time()
    for op in (settled, cancelled, stuck):
        d.add(op)
    settled.future.set_result(None)  # type: ignore[union-attr]
    cancelled.future.cancel()  # type: ignore[union-attr]  # its caller went away
    when = await asyncio.wait_for(_expired_at(stuck, loop), 2)
    assert stuck.expired and not cancelled.expired and not settled.expired
    assert SECONDS - 0.005 <= when - t0 <= SECONDS + 0.5


async def test_each_waiting_operation_expires_at_its_own_deadline_never_early() -> None:
    loop = asyncio.get_running_loop()
    d = core._Deadlines(loop, SECONDS)
    ops, added = [], []
    for i in range(5):
        op = _op(loop)
        d.add(op)
        ops.append(op)
        added.append(loop.time())
        await asyncio.sleep(0.02)
        if i == 1:
            op.future.set_result(None)  # type: ignore[union-attr]  # this one settles in time
    ends = await asyncio.wait_for(asyncio.gather(*(_expired_at(op, loop) for op in ops)), 2)
    for i, (op, start, end) in enumerate(zip(ops, added, ends, strict=True)):
        if i == 1:
            assert not op.expired
            continue
        assert op.expired, i
        assert end - start >= SECONDS - 0.005, (i, end - start)  # not before its deadline
        assert end - start <= SECONDS + 0.5, (i, end - start)  # and not much after


async def test_an_operation_after_an_idle_gap_gets_a_new_timer() -> None:
    loop = asyncio.get_running_loop()
    d = core._Deadlines(loop, SECONDS)
    first = _op(loop)
    d.add(first)
    first.future.set_result(None)  # type: ignore[union-attr]
    await asyncio.sleep(SECONDS * 2)  # the timer fired and found nothing waiting
    assert d.timer is None and not d.waiting
    late = _op(loop)
    d.add(late)
    await asyncio.wait_for(_expired_at(late, loop), 2)
    assert late.expired
