"""Client disconnects on the production path (`fdp-router serve`: nothing cancels a handler whose
client left), found when the disconnect tests first ran that way. A client that left before its
answer went out is charged nothing, no node is asked for it any more, and its hang-up is no error."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from aiohttp import web

from .conftest import (
    PHI_MODEL,
    Cluster,
    RouterFactory,
    assert_no_internal_error,
    auth,
    custom_node,
    node_report,
    production_serving,
    q,
    settled,
    settled_reservations,
)
from .test_api import CONSENSUS_PRIVACY, consensus_body


async def _give_up(base: str, path: str, body: dict[str, Any], after: float = 0.5) -> None:
    """POST `body` and hang up after `after` seconds without a byte of the answer."""
    async with httpx.AsyncClient(base_url=base, timeout=after) as http:
        try:
            await http.post(path, json=body, headers=auth())
        except httpx.ReadTimeout:
            return
    raise AssertionError("the router answered before the client gave up")


@production_serving
@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("whole")}]}),
        ("/v1/inference", {"prompt": q("whole")}),
    ],
)
async def test_a_whole_answer_whose_client_left_while_its_node_computed_stays_charged_and_cached(
    router: RouterFactory, demo_cluster: Cluster, path: str, body: dict[str, Any]
) -> None:
    """The client hangs up while the node computes. Refunding would make the refund depend on
    how long the node took (which may depend on patient data): a client could probe that for
    free, again and again. So the answer is committed, and cached: asking again costs nothing."""
    for n in demo_cluster.nodes:
        n.state.delay = 1.2
    client = await router()
    await _give_up(str(client.make_url("")), path, {**body, "privacy_budget": 0.5})
    await settled(client)
    doc = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert doc["consumed_budget"] > 0, doc
    assert await settled_reservations(demo_cluster) == ["committed"]
    again = await client.post(path, json={**body, "privacy_budget": 0.5}, headers=auth())
    assert again.status == 200, await again.text()
    assert again.headers["X-FDP-Cache"] == "hit"
    assert again.headers["X-FDP-Privacy-Cost"] == "0"


@production_serving
async def test_a_stream_whose_client_left_fails_over_to_no_other_node(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """The first node fails after the client has gone: the router must not reserve again and
    ask another hospital's node for an answer no one will read."""
    calls: list[str] = []

    def handler_for(node_id: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            calls.append(node_id)
            if len(calls) == 1:
                await asyncio.sleep(1.2)
                return web.json_response({"error": {"message": "overloaded"}}, status=503)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **node_report(request)})
            await resp.prepare(request)
            done = {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]}
            await resp.write(b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n")
            return resp

        return handler

    nodes = [await custom_node(aiohttp_server, handler_for(f"n{i}"), f"n{i}") for i in range(2)]
    client = await router(demo_cluster.config(nodes=nodes))
    body = {"model": PHI_MODEL, "stream": True, "messages": [{"role": "user", "content": q("failover")}]}
    await _give_up(str(client.make_url("")), "/v1/chat/completions", body)
    await settled(client)
    assert len(calls) == 1, f"nodes asked for a client that had gone: {calls}"
    assert set(await settled_reservations(demo_cluster)) == {"released"}


@production_serving
async def test_a_stream_whose_client_left_while_queued_reaches_no_node(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """The client gives up while its request waits for an overload slot: when the slot frees,
    the router must not reserve for it and ask a node."""
    for n in demo_cluster.nodes:
        n.state.delay = 1.2
    cfg = demo_cluster.config(overload={"max_concurrency": 1, "max_queue": 4, "queue_timeout_seconds": 30.0})
    client = await router(cfg)
    base = str(client.make_url(""))

    def chat(tag: str) -> dict[str, Any]:
        return {"model": PHI_MODEL, "stream": True, "messages": [{"role": "user", "content": q(tag)}]}

    async def holder() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.post("/v1/chat/completions", json=chat("holder"), headers=auth())
            assert r.status_code == 200

    first = asyncio.create_task(holder())
    await asyncio.sleep(0.3)  # the holder has the one slot; the next request queues
    await _give_up(base, "/v1/chat/completions", chat("queued"))
    await first
    await settled(client)
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1, (
        "a node was asked for a client that had gone"
    )


@production_serving
async def test_a_client_gone_mid_body_is_not_an_internal_error(
    router: RouterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that hangs up while sending its body is a client's doing, not the router's: no
    ``unhandled error`` with a traceback, no ``internal_error`` in the error metrics."""
    client = await router()
    _reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: {auth()['Authorization']}\r\nContent-Length: 1000\r\n\r\n".encode()
        + b'{"model": "'
    )
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is reading the body
    writer.close()
    await settled(client)
    await assert_no_internal_error(client, caplog)


@production_serving
async def test_a_consensus_whose_client_left_while_queued_asks_no_hospital(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """A consensus waiting for an overload slot when its client gives up: when the slot frees,
    no reservation, and no hospital is asked to vote for no one."""
    for n in demo_cluster.nodes:
        n.state.delay = 1.2
    overload = {"max_concurrency": 1, "max_queue": 4, "queue_timeout_seconds": 30.0}
    client = await router(demo_cluster.config(privacy=CONSENSUS_PRIVACY, overload=overload))
    base = str(client.make_url(""))

    async def holder() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            r = await http.post("/v1/inference", json={"prompt": q("holder")}, headers=auth())
            assert r.status_code == 200

    first = asyncio.create_task(holder())
    await asyncio.sleep(0.3)  # the holder has the one slot; the consensus queues
    await _give_up(base, "/v1/inference", consensus_body("queued"))
    await first
    await settled(client)
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1, "hospitals asked for no one"
    assert await settled_reservations(demo_cluster) == ["committed"]  # the holder's only
