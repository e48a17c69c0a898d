"""Attack session 8 on client-gone handling for *whole* answers (request_path.py `_clear`,
`_consensus`; handlers.py `ClientGone` -> 499), served as `fdp-router serve` serves the router
(no handler cancellation). A client found gone before an attempt is charged nothing and no
node is asked (a slot granted late, a failover); one that left while its node computed stays
charged and cached, consensus included (docs/privacy.md, "Refunds"); the 499 path leaks no
reservation and no overload slot."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from aiohttp import web

from .conftest import (
    PHI_MODEL,
    Cluster,
    RouterFactory,
    auth,
    custom_node,
    node_report,
    production_serving,
    q,
    settled,
    settled_reservations,
)
from .test_api import CONSENSUS_PRIVACY, consensus_body
from .test_client_gone import _give_up

WHOLE = [
    (
        "/v1/chat/completions",
        lambda tag: {"model": PHI_MODEL, "messages": [{"role": "user", "content": q(tag)}]},
    ),
    ("/v1/inference", lambda tag: {"prompt": q(tag)}),
]


@production_serving
@pytest.mark.parametrize(("path", "body"), WHOLE)
async def test_a_whole_answer_whose_client_left_while_queued_reaches_no_node_and_frees_its_slot(
    router: RouterFactory, demo_cluster: Cluster, path: str, body: Any
) -> None:
    """The client gives up while its whole-answer request waits for the one overload slot:
    when the slot frees, no reservation and no node call for it, and the slot it was granted
    goes back (the next request is served, not queued behind a leaked slot)."""
    for n in demo_cluster.nodes:
        n.state.delay = 1.2
    cfg = demo_cluster.config(overload={"max_concurrency": 1, "max_queue": 4, "queue_timeout_seconds": 3.0})
    client = await router(cfg)
    base = str(client.make_url(""))

    async def holder() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.post(path, json=body("holder"), headers=auth())
            assert r.status_code == 200, r.text

    first = asyncio.create_task(holder())
    await asyncio.sleep(0.3)  # the holder has the one slot; the next request queues
    await _give_up(base, path, body("queued"))
    await first
    await settled(client)
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1, (
        "a node was asked for a client that had gone"
    )
    assert await settled_reservations(demo_cluster) == ["committed"]  # the holder's only
    for n in demo_cluster.nodes:
        n.state.delay = 0.0
    after = await client.post(path, json=body("after"), headers=auth())
    assert after.status == 200, await after.text()


@production_serving
@pytest.mark.parametrize(("path", "body"), WHOLE)
async def test_a_whole_answer_whose_client_left_fails_over_to_no_other_node(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, path: str, body: Any
) -> None:
    """The first node fails (503 after 1.2 s) once the client has gone: its reservation is
    refunded (nothing reached anyone) and no second reservation, no second node."""
    calls: list[str] = []

    def handler_for(node_id: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            calls.append(node_id)
            if len(calls) == 1:
                await asyncio.sleep(1.2)
                return web.json_response({"error": {"message": "overloaded"}}, status=503)
            answer = {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
                ]
            }
            return web.json_response(answer, headers=node_report(request))

        return handler

    nodes = [await custom_node(aiohttp_server, handler_for(f"n{i}"), f"n{i}") for i in range(2)]
    client = await router(demo_cluster.config(nodes=nodes))
    await _give_up(str(client.make_url("")), path, body("failover"))
    await settled(client)
    assert len(calls) == 1, f"nodes asked for a client that had gone: {calls}"
    assert await settled_reservations(demo_cluster) == ["released"]


@production_serving
async def test_a_consensus_whose_client_left_while_hospitals_voted_stays_charged_and_cached(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """As a single node's whole answer: a refund here would depend on how long the hospitals
    took to vote. Charged once; asking again is a cache hit at no cost."""
    for n in demo_cluster.nodes:
        n.state.delay = 1.2
    client = await router(demo_cluster.config(privacy=CONSENSUS_PRIVACY))
    await _give_up(str(client.make_url("")), "/v1/inference", consensus_body("voting"))
    await settled(client)
    assert await settled_reservations(demo_cluster) == ["committed"]
    doc = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert doc["consumed_budget"] > 0, doc
    asked = sum(n.state.completions for n in demo_cluster.nodes)
    again = await client.post("/v1/inference", json=consensus_body("voting"), headers=auth())
    assert again.status == 200, await again.text()
    assert again.headers["X-FDP-Cache"] == "hit" and again.headers["X-FDP-Privacy-Cost"] == "0"
    assert sum(n.state.completions for n in demo_cluster.nodes) == asked
