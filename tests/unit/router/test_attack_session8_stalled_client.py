"""Attack (session 8 review): a client that stays connected but stops reading held its stream
past `stream_timeout_seconds` for ever: the handler waited in `resp.write` (a drain with no
timeout) and never came back to the node stream, where the limit is checked. The node's
connection and the overload slot stayed taken: a clinician could exhaust
`overload.max_concurrency` with streams it never reads. The limit now bounds the writes too."""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

from aiohttp import web

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, custom_node, in_flight, q
from .test_stream_deadline import LIMIT, Node, _event


async def test_a_client_that_stops_reading_is_still_cut_at_the_stream_limit(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    async def words(resp: web.StreamResponse) -> None:
        await resp.write(_event("more " * 2000))

    node = Node(words)
    entry = await custom_node(aiohttp_server, node.handle, "endless")
    cfg = demo_cluster.config(
        nodes=[entry], routing={"stream_timeout_seconds": LIMIT}, cache={"enabled": False}
    )
    client = await router(cfg)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (client.host, client.port))
    body = json.dumps(
        {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("stall")}], "stream": True}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth()['Authorization']}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    await loop.sock_sendall(sock, head + body)
    first = await loop.sock_recv(sock, 1024)  # the response head: the stream started
    assert first.startswith(b"HTTP/1.1 200"), first
    try:
        await asyncio.sleep(LIMIT + 3.0)  # never read again; the connection stays open
        assert in_flight(client) == 0, "the stream outlived stream_timeout_seconds by 3 s"
    finally:
        sock.close()
        for _ in range(200):
            if in_flight(client) == 0:
                break
            await asyncio.sleep(0.05)
