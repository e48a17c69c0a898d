"""Attack (session 8 review): a `stream: true` request that a node answers with one whole JSON
completion (backends.open_stream reads it whole) was refunded when the client left while the
node's body was still coming, after its headers had arrived: adding `stream: true` got round
the whole-answer rule of docs/privacy.md "Refunds" (a refund must not depend on how long the
node took). Such an answer is now held to the whole-answer rule: committed and cached."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from .conftest import (
    PHI_MODEL,
    Cluster,
    RouterFactory,
    custom_node,
    node_report,
    production_serving,
    q,
    settled,
    settled_reservations,
)
from .test_client_gone import _give_up


@production_serving
async def test_a_json_answer_to_a_stream_whose_headers_came_before_the_client_left_stays_charged(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    header_sent = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        answer = {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}
            ]
        }
        raw = json.dumps(answer).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json", **node_report(request)})
        resp.content_length = len(raw)
        await resp.prepare(request)  # the headers go out now
        header_sent.set()
        await asyncio.sleep(1.2)  # the body (the answer) comes once computed
        await resp.write(raw)
        await resp.write_eof()
        return resp

    node = await custom_node(aiohttp_server, handler, "json")
    client = await router(demo_cluster.config(nodes=[node]))
    body = {"model": PHI_MODEL, "stream": True, "messages": [{"role": "user", "content": q("json")}]}
    await _give_up(str(client.make_url("")), "/v1/chat/completions", body, after=0.6)
    assert header_sent.is_set()
    await settled(client)
    # The client left 0.6 s in, the node's headers were in at ~0 s: per the docs, no refund.
    assert await settled_reservations(demo_cluster) == ["committed"]
