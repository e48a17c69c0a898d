"""Attacks on "SSE headers go out with the first event" (d3227f7, handlers._EventStream): the
status line and headers are held by aiohttp until the first write. Every way a stream can
start must still send them, once, before its first event: a stream broken before any event
was relayed (the error event is then the first write), a stream whose first write is
``write_eof`` (a node that answered whole, a node whose events all relay nothing, a cache
replay), and a HEAD request (no stream, no charge)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from aiohttp import web

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, custom_node, node_report, q


async def _router_over(router: RouterFactory, cluster: Cluster, aiohttp_server: Any, handler: Any) -> Any:
    return await router(cluster.config(nodes=[await custom_node(aiohttp_server, handler, "n")]))


def _body(tag: str) -> dict[str, Any]:
    return {
        "model": PHI_MODEL,
        "privacy_budget": 0.2,
        "stream": True,
        "messages": [{"role": "user", "content": q(tag)}],
    }


async def _raw_stream(client: Any, body: dict[str, Any]) -> tuple[bytes, bytes]:
    """(the raw status line and headers, the raw body) as they came off the socket."""
    host, port = client.server.host, client.server.port
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    writer.write(head + payload)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    status_and_headers, _, rest = raw.partition(b"\r\n\r\n")
    return status_and_headers, rest


def _check_headers(head: bytes) -> None:
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK", lines[0]
    assert head.count(b"HTTP/1.1") == 1, head  # one status line, never a second response
    hdrs = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
    assert hdrs[b"content-type"].startswith(b"text/event-stream"), hdrs
    assert b"x-request-id" in hdrs and b"x-fdp-privacy-cost" in hdrs, hdrs
    assert hdrs.get(b"transfer-encoding") == b"chunked", hdrs


async def _queries(client: Any) -> float:
    doc = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    return float(doc["details"]["queries"])


async def test_a_stream_broken_before_any_event_still_sends_its_headers_then_the_error(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """The node's stream ends at once, no event, no finish: the error event is the first
    write; the status line and headers must go out with it, once."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**node_report(request), "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": just a comment\n\n")
        return resp

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    head, body = await _raw_stream(client, _body("broken-first"))
    _check_headers(head)
    assert b'"stream_broken"' in body and b"[DONE]" not in body
    assert body.endswith(b"0\r\n\r\n"), body[-40:]  # the chunked body is ended properly
    assert await _queries(client) == 1  # committed before the first byte (documented)


async def test_a_node_that_answers_whole_is_sent_by_write_eof_alone_with_headers(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        doc = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}]}
        return web.json_response(doc, headers=node_report(request))

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    head, body = await _raw_stream(client, _body("whole"))
    _check_headers(head)
    assert b'"content":"whole"' in body and b"data: [DONE]\n\n" in body
    # and the cache replay of it (no node): also a first write that is write_eof
    head, body = await _raw_stream(client, _body("whole"))
    _check_headers(head)
    assert b'"content":"whole"' in body and b"data: [DONE]\n\n" in body
    assert b'"cached":true' in body


async def test_a_stream_whose_events_relay_nothing_until_done_sends_headers_once(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """Every node event relays nothing (the finish chunk is held for the end): the first
    and only write is write_eof."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={**node_report(request), "Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = [
            {"choices": []},
            {"choices": [{"index": 1, "delta": {"content": "other choice: never relayed"}}]},
            {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "stop"}]},
        ]
        for e in events:
            await resp.write(b"data: " + json.dumps(e).encode() + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    client = await _router_over(router, demo_cluster, aiohttp_server, handler)
    head, body = await _raw_stream(client, _body("held"))
    _check_headers(head)
    assert b"never relayed" not in body
    assert b"data: [DONE]\n\n" in body


async def test_head_and_get_of_the_completions_route_start_no_stream_and_charge_nothing(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    for method in ("HEAD", "GET"):
        r = await client.request(method, "/v1/chat/completions", headers=auth())
        assert r.status == 405, (method, r.status)
        assert not r.headers.get("Content-Type", "").startswith("text/event-stream")
    assert await _queries(client) == 0
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0


async def test_an_ordinary_stream_through_httpx_has_its_headers_before_its_first_event(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    async with (
        httpx.AsyncClient(base_url=str(client.make_url("")), timeout=10) as http,
        http.stream("POST", "/v1/chat/completions", json=_body("ok"), headers=auth()) as resp,
    ):
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        assert "x-fdp-privacy-cost" in resp.headers
        raw = await resp.aread()
    assert raw.startswith(b"data: ") and raw.endswith(b"data: [DONE]\n\n")
