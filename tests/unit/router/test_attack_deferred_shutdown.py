"""Attack: a clean shutdown right after a hot reload that replaced the ledger (any edit of
`privacy` or `ledger`), while a request of the old runtime finishes. docs/privacy.md:
"`close()` drains the queue (shutdown and hot reload lose nothing)". The replaced ledger is
closed by a task that waits for its runtime to drain; the app's cleanup used to close only
the *current* ledger and return, so the process exit killed the replaced ledger's writer (a
daemon thread) with the answered request's deferred commit record unwritten ('reserved':
spent, but the trail lacked the release of an answer that left cleanly). Found by the attack
review; fixed in runtime.py (`_close_retired`) and `SqlLedger.close` (a second call waits).

The old ledger's transaction is slowed by 0.3 s (a slow fsync) to make the race
deterministic; without the fix this fails every time, and ~3 of 12 runs without the slowdown."""

from __future__ import annotations

import asyncio
import sqlite3
import time

from fdp_router.runtime import HOLDER, apply_config

from .conftest import Cluster, RouterFactory, auth, q


def _states(cluster: Cluster) -> dict[str, str]:
    with sqlite3.connect(cluster.tmp / "ledger.sqlite") as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, state FROM fdp_reservations")}


def _more_budget(cluster: Cluster, per_user: float):
    privacy = cluster.config().privacy.model_dump()
    privacy["budgets"]["per_user"] = per_user
    return cluster.config(privacy=privacy)


async def test_shutdown_after_a_ledger_swapping_reload_writes_the_old_ledgers_commits(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    for n in demo_cluster.nodes:
        n.state.delay = 0.3
    client = await router()
    app = client.server.app
    old = app[HOLDER].current
    real = old.ledger._transaction

    def slow_transaction(*a, **kw):  # a slow disk under the replaced ledger
        time.sleep(0.3)
        return real(*a, **kw)

    task = asyncio.create_task(
        client.post("/v1/inference", json={"prompt": q("bye"), "privacy_budget": 0.2}, headers=auth())
    )
    await asyncio.sleep(0.1)  # reserved (before the slowdown); the node is answering
    old.ledger._transaction = slow_transaction
    await apply_config(app, _more_budget(demo_cluster, 3.0))
    r = await task
    assert r.status == 200  # the answer reached the client
    await client.close()  # SIGTERM: the app's cleanup runs to its end; the process would now exit
    states = list(_states(demo_cluster).values())
    alive = old.ledger._thread.is_alive()
    assert states == ["committed"], f"after cleanup: {states}, replaced ledger's writer alive={alive}"
