"""Attack (session 8 review): on a platform with os.sched_setscheduler but no os.SCHED_BATCH
(FreeBSD, other non-Linux Unixes) writer_scheduling raised AttributeError outside its try; in
_writer_loop the call sits outside the loop's `except BaseException`, so the writer thread died
after its first batch with several callers and close() waited forever. Now nothing changes."""

from __future__ import annotations

import os

import pytest
from fdp_router.privacy.ledger import core


def test_no_sched_batch_constant_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_setscheduler", lambda *a: None, raising=False)
    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    assert core.writer_scheduling(True) is False


async def test_the_writer_survives_a_scheduling_call_that_raises(
    ledger_env_sqlite: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the AttributeError does in the writer: every later operation times out and
    close() never returns (here bounded by wait_for)."""
    import asyncio

    from fdp_router.privacy.api import Charge
    from fdp_router.privacy.events import event_for_request

    from .conftest import policy_admitting

    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    policy = policy_admitting(100)
    ledger = await ledger_env_sqlite.open(policy)  # type: ignore[attr-defined]

    def charge(u: str) -> Charge:
        return Charge(u, "d", ("h",), event_for_request(policy, None), query_hash="0" * 64)

    for attempt in range(20):
        await asyncio.gather(*(ledger.reserve(charge(f"u{attempt}-{i}")) for i in range(8)))
        if not ledger._thread.is_alive():
            break
    assert ledger._thread.is_alive(), "the ledger writer thread died"
    await asyncio.wait_for(ledger.close(), 5)
