"""The overload limiter: bounded concurrency, a priority queue with aging, 429 beyond it.

("Admission" in this project means privacy admission, the ledger's Rényi filter; this is
load shedding.) Used by ``request_path.py`` around the expensive part of a request (reservation + backend
calls). At most ``max_concurrency`` requests run; up to ``max_queue`` wait, served by
effective priority ``priority + waited_seconds / aging_seconds`` so that low priority
still runs. Because every waiter ages at the same rate, ordering by
``enqueued_at / aging - priority`` is the same order at every instant, so a plain heap
suffices. A full queue or a wait longer than ``queue_timeout_seconds`` raises
`Overloaded` (429 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Generator
from dataclasses import dataclass, field

from fdp_router.config import OverloadConfig
from fdp_router.errors import Overloaded


@dataclass(order=True)
class _Waiter:
    key: float
    seq: int
    future: asyncio.Future[None] = field(compare=False)


class _Slot:
    """`OverloadLimiter.slot`'s context manager: a class, not an ``asynccontextmanager``
    generator (on every request), and no coroutine at all when a slot is free."""

    __slots__ = ("_limiter", "_priority")

    def __init__(self, limiter: OverloadLimiter, priority: int) -> None:
        self._limiter = limiter
        self._priority = priority

    def __aenter__(self) -> Awaitable[None]:
        lim = self._limiter
        if not lim._heap and lim.running < lim.cfg.max_concurrency:
            lim.running += 1  # _acquire's fast path, without its coroutine
            return _DONE
        return lim._acquire(self._priority)

    def __aexit__(self, *exc: object) -> Awaitable[None]:
        self._limiter._release()
        return _DONE


class _Done:
    """An awaitable that is already done (``await`` returns None at once)."""

    __slots__ = ()

    def __await__(self) -> Generator[None, None, None]:
        return
        yield


_DONE = _Done()


class OverloadLimiter:
    """At most ``max_concurrency`` requests at once, a bounded priority queue behind them."""

    def __init__(self, cfg: OverloadConfig) -> None:
        self.cfg = cfg
        self.running = 0
        self._heap: list[_Waiter] = []
        self._seq = itertools.count()

    @property
    def queue_depth(self) -> int:
        if not self._heap:  # every request while the router is not overloaded
            return 0
        return sum(1 for w in self._heap if not w.future.done())

    def _retry_after(self) -> float:
        return max(1.0, self.cfg.queue_timeout_seconds / 2)

    def slot(self, priority: int = 5) -> _Slot:
        """``async with limiter.slot(priority):`` runs the block holding one of the
        ``max_concurrency`` slots (waiting for one in the queue, or `Overloaded`)."""
        return _Slot(self, priority)

    async def _acquire(self, priority: int) -> None:
        while self._heap and self._heap[0].future.done():
            heapq.heappop(self._heap)  # timed-out or cancelled waiters
        if self.running < self.cfg.max_concurrency and not self._heap:
            self.running += 1
            return
        if self.queue_depth >= self.cfg.max_queue:
            raise Overloaded(
                f"router overloaded: {self.running} running, {self.queue_depth} queued", self._retry_after()
            )
        loop = asyncio.get_running_loop()
        waiter = _Waiter(
            time.monotonic() / self.cfg.aging_seconds - priority, next(self._seq), loop.create_future()
        )
        heapq.heappush(self._heap, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), self.cfg.queue_timeout_seconds)
        except TimeoutError:
            if waiter.future.done() and not waiter.future.cancelled():
                # Granted at the last moment: we own a slot, give it back.
                self._release()
            waiter.future.cancel()
            raise Overloaded(
                f"router overloaded: waited {self.cfg.queue_timeout_seconds:g}s in the queue",
                self._retry_after(),
            ) from None
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self._release()
            waiter.future.cancel()
            raise

    def _release(self) -> None:
        while self._heap:
            waiter = heapq.heappop(self._heap)
            if not waiter.future.done():
                waiter.future.set_result(None)  # the slot passes to the waiter
                return
        self.running -= 1
