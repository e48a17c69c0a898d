"""Attack review of the node client's per-host pool (backends._HostPool): whatever mix of
calls finish, fail to connect, or are cancelled while queued (or just as they are granted a
slot), at most `limit` are ever in use, no slot is lost and no queued call is stranded."""

from __future__ import annotations

import asyncio
import random

from fdp_router.backends import _HostPool


class _FakeConn:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.eof = False
        self.idle_since = 0.0
        self.buf = b""

    def reusable(self, now: float) -> bool:
        return not self.eof

    def close(self) -> None:
        self.eof = True


async def test_random_calls_cancellations_and_failures_keep_the_pool_exact() -> None:
    loop = asyncio.get_running_loop()
    for seed in range(30):
        rng = random.Random(seed)
        limit = rng.randint(1, 4)
        pool = _HostPool(limit)
        using = 0
        peak = 0

        async def connect(fail: bool) -> _FakeConn:
            await asyncio.sleep(rng.choice([0, 0.001]))
            if fail:
                raise OSError("refused")
            return _FakeConn(loop)

        async def call() -> None:
            nonlocal using, peak
            fail = rng.random() < 0.2
            conn = await pool.acquire(lambda: connect(fail))
            using += 1
            peak = max(peak, using)
            try:
                await asyncio.sleep(rng.choice([0, 0.001, 0.003]))
            finally:
                using -= 1
                pool.release(conn, reuse=rng.random() < 0.7)  # type: ignore[arg-type]

        tasks = [asyncio.ensure_future(call()) for _ in range(rng.randint(5, 40))]
        for _ in range(rng.randint(0, 15)):
            await asyncio.sleep(rng.choice([0, 0, 0.001]))
            rng.choice(tasks).cancel()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
        assert peak <= limit, (seed, peak, limit)
        assert pool.in_use == 0 and not pool.waiters, (seed, pool.in_use, len(pool.waiters))
        # and the pool still serves
        await asyncio.wait_for(asyncio.gather(*(call() for _ in range(limit + 2)), return_exceptions=True), 5)
        assert pool.in_use == 0
