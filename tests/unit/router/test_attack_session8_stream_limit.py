"""Attack session 8 on a stream's total limit (``stream_timeout_seconds``; backends.py
`NodeStream`, `NodeResponse.next_piece`, `_Conn.more`): a gzip-coded body whose bytes decode
to nothing, a node that falls silent after its first event while its read timeout is longer
than the limit, and whether a cut stream counts against its node (it must not: a long answer
is not an outage)."""

from __future__ import annotations

import asyncio
import time
import zlib
from typing import Any

from aiohttp import web

from .conftest import PHI_MODEL, Cluster, RouterFactory, custom_node, node_report, q, settled_reservations
from .test_openai_streaming import post_stream
from .test_stream_deadline import LIMIT, Node, _assert_cut_at_the_limit, _event, _stream_from

EMPTY_BLOCK = b"\x00\x00\x00\xff\xff"  # a non-final stored block of length 0


class GzipNode(Node):
    """A gzip-coded stream (``Content-Encoding: gzip``): one event of text, then, until the
    router closes the connection, empty stored deflate blocks (``00 00 00 ff ff``: what a
    flush writes, byte-aligned after the first one) that decode to no byte at all, so the
    router's decoder keeps asking for more bytes without returning a piece."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        headers = {"Content-Type": "text/event-stream", "Content-Encoding": "gzip", **node_report(request)}
        resp = web.StreamResponse(headers=headers)
        await resp.prepare(request)
        z = zlib.compressobj(wbits=zlib.MAX_WBITS | 16)
        try:
            await resp.write(z.compress(_event("first ")) + z.flush(zlib.Z_SYNC_FLUSH))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await resp.write(EMPTY_BLOCK * 4)
                await asyncio.sleep(0.01)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self.closed.set()
            raise
        return resp


async def test_a_gzip_stream_of_empty_deflate_blocks_is_cut_at_the_stream_limit(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """Every read brings bytes and none decodes to anything: the decoder's loop inside one
    `next_piece` must honour the limit on each of its waits, not only on the first."""
    node = GzipNode(lambda resp: asyncio.sleep(1))
    elapsed, raw, client = await _stream_from(
        router, demo_cluster, aiohttp_server, node, routing={"read_timeout_seconds": 5.0}
    )
    await _assert_cut_at_the_limit(elapsed, raw, client, node, LIMIT)
    assert await settled_reservations(demo_cluster) == ["committed"]  # charged once


async def test_a_node_silent_after_its_first_event_is_cut_at_a_limit_shorter_than_its_read_timeout(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """Headers and one event, then nothing, with a read timeout (5 s) longer than the stream
    limit (0.5 s): the wait for the next bytes ends at the limit, not at the read timeout."""

    async def silent(resp: web.StreamResponse) -> None:
        await asyncio.sleep(1)

    node = Node(silent)
    elapsed, raw, client = await _stream_from(
        router, demo_cluster, aiohttp_server, node, routing={"read_timeout_seconds": 5.0}
    )
    await _assert_cut_at_the_limit(elapsed, raw, client, node, LIMIT)
    assert elapsed < 2.0, elapsed


async def test_a_stream_cut_at_its_limit_does_not_eject_its_node(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """With ``outlier_consecutive_failures: 1`` one failure ejects a node. Two streams cut at
    the limit, by either of its checks (the read that waits past it, the loop that never
    waits), must leave the node serving: the next request on it is answered."""
    count = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        return await nodes[min(count, len(nodes)) - 1].handle(request)

    async def empty(resp: web.StreamResponse) -> None:
        await resp.write(_event(""))
        await asyncio.sleep(0.02)

    async def words(resp: web.StreamResponse) -> None:
        await resp.write(_event("more ") * 8)
        await asyncio.sleep(0)

    nodes = [Node(empty), Node(words)]
    entry = await custom_node(aiohttp_server, handler, "endless")
    routing = {"stream_timeout_seconds": LIMIT, "outlier_consecutive_failures": 1, "max_attempts": 1}
    client = await router(demo_cluster.config(nodes=[entry], routing=routing, cache={"enabled": False}))
    base = str(client.make_url(""))
    for i in range(2):
        body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q(f"cut {i}")}], "stream": True}
        resp = await asyncio.wait_for(post_stream(base, body), timeout=15)
        assert resp.status_code == 200 and b"stream_timeout_seconds" in resp.content, resp.content[-300:]
    health = await (await client.get("/v1/health")).json()
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("after")}], "stream": True}
    resp = await asyncio.wait_for(post_stream(base, body), timeout=15)
    assert resp.status_code == 200, (resp.content, health)
    assert count == 3
