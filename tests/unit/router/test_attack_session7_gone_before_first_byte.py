"""Attack (session 7): a stream's spend is committed when the node's headers arrive, "and
only then does the first byte go out; from that byte on the spend stands; a client that
disconnects before the first byte is refunded" (docs/router.md, streaming). d3227f7 held the
status line and headers back until the first event (aiohttp's `_send_headers_immediately =
False`), so the first byte waited for the node's time to first token: a client that gave up
in that window had received nothing and was charged. Reverted; this test keeps it so: the
status line reaches the client right after the commit, before the node's first token.
"""

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
    both_servings,
    custom_node,
    node_report,
    q,
    settled,
)


@both_servings
async def test_the_status_line_goes_out_with_the_commit_not_with_the_first_token(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **node_report(request)})
        await resp.prepare(request)  # the node's headers at once ...
        await asyncio.sleep(2.0)  # ... its first token later
        choice = {"index": 0, "delta": {"content": "late"}, "finish_reason": "stop"}
        await resp.write(b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    node = await custom_node(aiohttp_server, handler, "slow-ttft")
    client = await router(demo_cluster.config(nodes=[node]))
    body = {
        "model": PHI_MODEL,
        "privacy_budget": 0.5,
        "stream": True,
        "messages": [{"role": "user", "content": q("ttft")}],
    }
    got_headers = False
    async with httpx.AsyncClient(base_url=str(client.make_url("")), timeout=1.0) as http:
        try:
            async with http.stream("POST", "/v1/chat/completions", json=body, headers=auth()) as resp:
                got_headers = resp.status_code == 200  # before the node's first token (2 s)
        except httpx.ReadTimeout:
            pass  # nothing within 1 s: the client would give up having received no byte
    assert got_headers, "the first byte waited for the node's first token"
    await settled(client)  # production: the handler wrote the node's token to no one and ended
    doc = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert doc["consumed_budget"] > 0  # the status line reached the client: the spend stands
