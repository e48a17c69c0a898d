"""The writer's wait for company (ledger/core.py, "Gathering"): while other reservations of
this process are open, the writer holds a batch's first operation up to GATHER_SECONDS for
more, and stops waiting once the last open reservation's settlement is queued; a lone request,
or one whose only company is a stale reservation, never waits. On both backends."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fdp_router.privacy.api import Charge, Scope
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import core
from fdp_router.privacy.ledger.core import SqlLedger

from .conftest import LedgerEnv, policy_admitting

LONG = 5.0  # a wait this long would show in every test below


def _batches(ledger: SqlLedger) -> list[list[str]]:
    """Record the kinds of the operations of every batch the ledger runs."""
    seen: list[list[str]] = []
    orig = ledger._run_batch

    def run_batch(batch: Any, *args: Any, **kwargs: Any) -> bool:
        seen.append([op.kind for op in batch])
        return orig(batch, *args, **kwargs)

    ledger._run_batch = run_batch  # type: ignore[method-assign]
    return seen


def _charge(policy: Any, user: str = "u") -> Charge:
    return Charge(user, "d", ("h",), event_for_request(policy, None), query_hash="0" * 64)


@pytest.fixture(autouse=True)
def _long_gather(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core, "GATHER_SECONDS", LONG)


async def test_a_lone_request_never_waits(ledger_env: LedgerEnv) -> None:
    policy = policy_admitting(5)
    ledger = await ledger_env.open(policy)
    try:
        seen = _batches(ledger)
        t0 = time.monotonic()
        r = await ledger.reserve(_charge(policy))
        await ledger.commit(r.id, ("n",))
        r2 = await ledger.reserve(_charge(policy))
        await ledger.release(r2.id)
        assert time.monotonic() - t0 < LONG / 2
        assert seen == [["reserve"], ["commit"], ["reserve"], ["release"]]
    finally:
        await ledger.close()


async def test_while_a_reservation_is_open_the_writer_gathers_until_it_settles(ledger_env: LedgerEnv) -> None:
    policy = policy_admitting(5)
    ledger = await ledger_env.open(policy)
    try:
        seen = _batches(ledger)
        first = await ledger.reserve(_charge(policy, "a"))  # open: another request in flight
        t0 = time.monotonic()
        b = asyncio.create_task(ledger.reserve(_charge(policy, "b")))
        c = asyncio.create_task(ledger.reserve(_charge(policy, "c")))
        await asyncio.sleep(0.2)
        assert not b.done() and not c.done()  # held for company while `first` is open
        await ledger.commit(first.id, ("n",))  # the last open one settles: the wait ends
        rb, rc = await asyncio.wait_for(asyncio.gather(b, c), LONG / 2)
        assert time.monotonic() - t0 < LONG / 2
        # One transaction for the three: the reservations and the commit that ended the wait.
        assert sorted(seen[-1]) == ["commit", "reserve", "reserve"]
        # Settled together (one after the other, the first would wait for the second's company).
        await asyncio.gather(ledger.release(rb.id), ledger.release(rc.id))
        st = await ledger.budget(Scope.USER, "a")
        assert st.consumed_epsilon > 0
        assert (await ledger.budget(Scope.USER, "b")).consumed_epsilon == 0  # refunded exactly
    finally:
        await ledger.close()


async def test_a_stale_open_reservation_is_no_reason_to_wait(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(core, "OPEN_STALE_SECONDS", 0.1)
    policy = policy_admitting(5)
    ledger = await ledger_env.open(policy)
    try:
        await ledger.reserve(_charge(policy, "abandoned"))  # its caller never settles it
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        r = await ledger.reserve(_charge(policy))
        await ledger.commit(r.id, ("n",))
        assert time.monotonic() - t0 < LONG / 2
    finally:
        await ledger.close()
