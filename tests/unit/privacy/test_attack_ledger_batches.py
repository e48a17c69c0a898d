"""Attack review of the ledger's batched reservations (the writer thread applies many
operations in one transaction; unit states cached across batches, planned per charge,
prefetched per batch): a burst of concurrent reservations must never be admitted beyond a
shared budget, whether the units' states were cached, read one by one or prefetched."""

from __future__ import annotations

import asyncio

import pytest
from fdp_router.config import PrivacyConfig
from fdp_router.privacy.api import BudgetExceeded, Charge, Scope
from fdp_router.privacy.events import event_for_request

from .conftest import LedgerEnv, policy_admitting


def _department_admitting(k: int) -> PrivacyConfig:
    """Only the department's budget binds: it admits exactly `k` queries."""
    p = policy_admitting(k)
    data = p.model_dump()
    data["budgets"] = {"per_user": 1e6, "per_department": p.budgets.per_user, "per_hospital": 1e6}
    return PrivacyConfig.model_validate(data)


async def _burst(ledger, charges: list[Charge]) -> list[object]:
    """Submit every charge while the writer is held, so that they land in one batch."""
    ledger._batch_lock.acquire()
    try:
        tasks = [asyncio.ensure_future(ledger.reserve(c)) for c in charges]
        await asyncio.sleep(0.05)  # all queued behind the held writer
    finally:
        ledger._batch_lock.release()
    return await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("forget_cache", [False, True])
async def test_a_burst_of_new_users_cannot_overspend_their_department(
    ledger_env_sqlite: LedgerEnv, forget_cache: bool
) -> None:
    k, pre, burst = 5, 2, 12
    policy = _department_admitting(k)
    ledger = await ledger_env_sqlite.open(policy)
    event = event_for_request(policy, None)
    try:
        for i in range(pre):
            r = await ledger.reserve(Charge(f"early{i}", "cardio", ("h1",), event))
            await ledger.commit(r.id, ("n1",))
        if forget_cache:
            ledger._units.clear()  # as after another process wrote: every state read again
            ledger._plans.clear()
        results = await _burst(ledger, [Charge(f"new{i}", "cardio", ("h1",), event) for i in range(burst)])
        admitted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BudgetExceeded)]
        assert len(admitted) == k - pre, results
        assert len(refused) == burst - (k - pre)
        assert all(e.scope == Scope.DEPARTMENT for e in refused)  # type: ignore[attr-defined]
        st = await ledger.budget(Scope.DEPARTMENT, "cardio")
        assert st.extra["queries"] == k
    finally:
        await ledger.close()


async def test_a_burst_of_users_at_their_budget_is_refused_whole(ledger_env_sqlite: LedgerEnv) -> None:
    policy = policy_admitting(1)  # one query per user
    ledger = await ledger_env_sqlite.open(policy)
    event = event_for_request(policy, None)
    users = [f"u{i}" for i in range(10)]
    try:
        for u in users:
            await ledger.reserve(Charge(u, f"d{u}", ("h1",), event))
        ledger._units.clear()
        ledger._plans.clear()
        results = await _burst(
            ledger,
            [Charge(u, f"d{u}", ("h1",), event) for u in users]
            + [Charge(f"fresh{i}", "dz", ("h1",), event) for i in range(3)],
        )
        assert all(isinstance(r, BudgetExceeded) for r in results[: len(users)]), results
        assert not any(isinstance(r, BaseException) for r in results[len(users) :]), results
    finally:
        await ledger.close()
