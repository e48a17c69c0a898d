"""Attacks on the deferred commit default through a live router (demo nodes, the real
SQLite ledger), each a control: what it tries is in its docstring."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import httpx
from fdp_router.runtime import HOLDER, apply_config

from .conftest import (
    PHI_MODEL,
    Cluster,
    RouterFactory,
    auth,
    both_servings,
    q,
    reservation_states,
    settled,
    settled_reservations,
)


def _kinds(cluster: Cluster) -> list[str]:
    with sqlite3.connect(cluster.tmp / "ledger.sqlite") as conn:
        return [r[0] for r in conn.execute("SELECT kind FROM fdp_audit ORDER BY seq")]


def _more_budget(cluster: Cluster, per_user: float) -> Any:
    cfg = cluster.config()
    privacy = cfg.privacy.model_dump()
    privacy["budgets"]["per_user"] = per_user
    return cluster.config(privacy=privacy)


@both_servings
async def test_a_stream_abandoned_after_its_first_chunk_stays_committed(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """Attack: read the first streamed chunk (the answer reached the client) and hang up.
    Default (deferred) mode: the reservation must end committed, never released."""
    client = await router()
    assert client.server.app[HOLDER].current.config.ledger.commit_mode == "deferred"
    base = str(client.make_url(""))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("hangup")}], "stream": True}
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as resp:
            assert resp.status_code == 200
            async for chunk in resp.aiter_bytes():
                assert chunk
                break
    await settled(client)  # production: the handler ran on until a write found the client gone
    assert await settled_reservations(demo_cluster) == ["committed"]
    assert "release" not in _kinds(demo_cluster)


async def test_a_reload_that_replaces_the_ledger_mid_request_loses_no_commit(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """Attack: a hot reload that replaces the ledger (a privacy edit) while a request of the
    old runtime is at its node; the old runtime commits (deferred) into the old ledger after
    the swap. The old ledger must stay open until that commit is queued, then close and write
    it: the reservation ends committed, the trail names its node, no refund."""
    for n in demo_cluster.nodes:
        n.state.delay = 0.4
    client = await router()
    app = client.server.app
    old = app[HOLDER].current
    task = asyncio.create_task(
        client.post("/v1/inference", json={"prompt": q("reload"), "privacy_budget": 0.2}, headers=auth())
    )
    await asyncio.sleep(0.15)  # reserved on the old ledger; the node is answering
    new = await apply_config(app, _more_budget(demo_cluster, 3.0))
    assert new.ledger is not old.ledger
    r = await task
    assert r.status == 200, await r.text()
    for _ in range(50):
        if old.ledger._closed and not old.ledger._thread.is_alive():
            break
        await asyncio.sleep(0.05)
    assert old.ledger._closed
    assert list(reservation_states(demo_cluster).values()) == ["committed"]
    assert _kinds(demo_cluster) == ["reserve", "commit"]
