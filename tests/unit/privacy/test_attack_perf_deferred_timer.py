"""Attack (found by the perf-round attack review): a deferred commit record with no other
traffic must be durable within DEFERRED_MAX_DELAY_SECONDS (docs/privacy.md: "rides with the
next batch somebody waits for (at most 50 ms later)") even while the event loop is busy (a
CPU-heavy request, an idle-fast-path fsync that stalls). Here the loop is blocked for 0.8 s
right after the commit; a thread reads the store after 0.4 s. It failed when the 50 ms limit
was an event-loop timer (2a2b6ad, b62464a); the writer thread owns that clock again."""

from __future__ import annotations

import time

from fdp_router.privacy.ledger import open_ledger

from tests.unit.privacy.conftest import LedgerEnv, policy_admitting
from tests.unit.privacy.test_attack_perf_ledger import _deferred, _states
from tests.unit.privacy.test_ledger_contract import _charge


async def test_a_held_record_is_written_while_the_event_loop_is_busy(ledger_env: LedgerEnv) -> None:
    policy = policy_admitting(100)
    ledger = await open_ledger(_deferred(ledger_env), policy)
    try:
        r = await ledger.reserve(_charge(policy))
        await ledger.commit(r.id, ("n",))
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 0.8:  # the loop is busy: no callbacks run
            if seen is None and time.monotonic() - t0 > 0.4:
                seen = _states(ledger_env)[r.id]
        assert seen == "committed", f"after 0.4 s the record is still {seen!r} (limit 0.05 s)"
    finally:
        await ledger.close()
