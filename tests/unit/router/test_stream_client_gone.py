"""A client that leaves a stream whose node events carry nothing to relay: the router must
stop reading the node (and give its connection back), not relay into nothing until the node
stops. Found by the session-7 attack review: with no write, no write finds the client gone."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
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


@production_serving
async def test_the_router_stops_reading_a_node_once_the_client_has_gone(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """Production mode only: aiohttp's test server cancels a handler whose client left
    (handler_cancellation=True), which would hide this; `fdp-router serve` does not."""
    released = asyncio.Event()
    sent = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **node_report(request)})
        await resp.prepare(request)
        try:
            first = {"index": 0, "delta": {"content": "one"}}
            await resp.write(b"data: " + json.dumps({"choices": [first]}).encode() + b"\n\n")
            while sent < 2000:  # ~100 s of events that carry nothing to relay
                await resp.write(b'data: {"choices": []}\n\n')
                sent += 1
                await asyncio.sleep(0.05)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            released.set()  # the router closed its side (a test server cancels the handler)
            raise
        return resp

    node = await custom_node(aiohttp_server, handler, "chatty")
    client = await router(demo_cluster.config(nodes=[node]))
    body = {"model": PHI_MODEL, "stream": True, "messages": [{"role": "user", "content": q("gone")}]}
    async with httpx.AsyncClient(base_url=str(client.make_url("")), timeout=5) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as resp:
            assert resp.status_code == 200
            async for chunk in resp.aiter_bytes():
                assert b"one" in chunk
                break  # the clinician's app closes the stream after its first event
    await asyncio.wait_for(released.wait(), timeout=10)
    assert sent < 400, f"the router read {sent} events for a client that had gone"
    await settled(client)
    assert await settled_reservations(demo_cluster) == ["committed"]  # a byte went out: it stands
