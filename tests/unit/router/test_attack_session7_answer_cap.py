"""Attacks on the answer-size cap (e7246e1): a node's answer is refused past MAX_ANSWER_BYTES
(``NodeResponse.read``, whole or gzip) and a stream past as many characters of text
(``Reframer.node_event``). The cap is patched small here. What each case must cost: a whole
answer refused before any byte reached the client is a 502 and charges nothing; a stream cut
after its first bytes ends with a ``stream_broken`` event, no [DONE], and stays charged."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from fdp_router import backends, streaming

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, custom_node, node_report, q

CAP = 4096
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _completion(text: str) -> bytes:
    return json.dumps(
        {
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ]
        }
    ).encode()


async def _router_over(router: RouterFactory, cluster: Cluster, aiohttp_server: Any, handler: Handler) -> Any:
    node = await custom_node(aiohttp_server, handler, "big")
    return await router(cluster.config(nodes=[node], cache={"enabled": False}))


async def _spent(client: Any) -> dict[str, Any]:
    doc: dict[str, Any] = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    return doc


def _body(stream: bool) -> dict[str, Any]:
    return {
        "model": PHI_MODEL,
        "privacy_budget": 0.3,
        "messages": [{"role": "user", "content": q("big")}],
        "stream": stream,
    }


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "MAX_ANSWER_BYTES", CAP)
    monkeypatch.setattr(streaming, "MAX_ANSWER_BYTES", CAP)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream-asked-node-answers-whole"])
@pytest.mark.parametrize("size", [CAP - 200, CAP + 1])
async def test_a_whole_answer_over_the_cap_is_a_502_that_charges_nothing(
    router: RouterFactory,
    demo_cluster: Cluster,
    aiohttp_server: Any,
    small_cap: None,
    stream: bool,
    size: int,
) -> None:
    overhead = len(_completion(""))

    async def handler(request: web.Request) -> web.StreamResponse:
        body = _completion("a" * (size - overhead))
        assert len(body) == size
        return web.Response(body=body, content_type="application/json", headers=node_report(request))

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    r = await client.post("/v1/chat/completions", json=_body(stream), headers=auth())
    doc = await _spent(client)
    if size <= CAP:
        assert r.status == 200, await r.text()
        assert doc["details"]["queries"] == 1 and doc["consumed_budget"] > 0
        return
    assert r.status == 502, await r.text()
    assert "MiB" in (await r.json())["error"]["message"]
    assert doc["consumed_budget"] == 0 and doc["details"]["queries"] == 0, doc


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream-asked-node-answers-whole"])
async def test_a_gzip_bomb_answer_is_a_502_that_charges_nothing(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, small_cap: None, stream: bool
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        raw = gzip.compress(_completion("a" * (8 * CAP)))
        assert len(raw) < CAP // 4
        return web.Response(
            body=raw,
            content_type="application/json",
            headers={**node_report(request), "Content-Encoding": "gzip"},
        )

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    r = await client.post("/v1/chat/completions", json=_body(stream), headers=auth())
    assert r.status == 502, await r.text()
    doc = await _spent(client)
    assert doc["consumed_budget"] == 0 and doc["details"]["queries"] == 0, doc


def _event(content: str, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": None, **extra}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


async def _stream(client: Any) -> tuple[int, bytes]:
    async with (
        httpx.AsyncClient(base_url=str(client.make_url("")), timeout=20) as http,
        http.stream("POST", "/v1/chat/completions", json=_body(True), headers=auth()) as resp,
    ):
        return resp.status_code, await resp.aread()


@pytest.mark.parametrize("gzipped", [False, True])
async def test_a_stream_past_the_cap_is_cut_with_stream_broken_and_stays_charged(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, small_cap: None, gzipped: bool
) -> None:
    """The node would send 64 x CAP characters; the router stops relaying past CAP."""
    sent = {"events": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {**node_report(request), "Content-Type": "text/event-stream"}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        z = zlib.compressobj(wbits=31)
        for i in range(64 * CAP // 100):
            if i == 1:
                await asyncio.sleep(0.05)  # the first event is relayed before the flood
            chunk = _event("b" * 100)
            sent["events"] += 1
            try:
                if gzipped:
                    await resp.write(z.compress(chunk) + z.flush(2))  # Z_SYNC_FLUSH
                else:
                    await resp.write(chunk)
            except (ConnectionError, RuntimeError):
                break
        return resp

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    status, raw = await _stream(client)
    assert status == 200
    text = raw.decode()
    assert '"stream_broken"' in text and "[DONE]" not in text
    relayed = text.count("b" * 100)
    assert 0 < relayed <= CAP // 100 + 1, relayed
    doc = await _spent(client)
    assert doc["details"]["queries"] == 1 and doc["consumed_budget"] > 0, doc


async def test_a_stream_that_stays_under_the_cap_ends_normally(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, small_cap: None
) -> None:
    """The control's other side: CAP characters exactly is an answer, not an attack."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**node_report(request), "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(CAP // 128):
            await resp.write(_event("c" * 128))
        await resp.write(_event("", finish_reason="stop") + b"data: [DONE]\n\n")
        return resp

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    status, raw = await _stream(client)
    assert status == 200
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-200:]
    assert b"stream_broken" not in raw
