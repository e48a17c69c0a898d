"""A streamed answer's total limit (``stream_timeout_seconds``, from the first read of the node's
body): the per-read timeout ends only a node that falls silent, so a node that keeps sending
(empty events, an endless answer, one event just inside the read timeout) to a client that
stays connected would otherwise be relayed forever. At the limit the stream ends as a broken
one does: a ``stream_broken`` event naming the setting, the privacy comment, no [DONE], the
spend kept; the node's connection is closed, never pooled."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from fdp_router.backends import BackendFailure
from fdp_router.config import RouterConfig
from fdp_router.streaming import ReportContradicted, StreamBroken, StreamTimedOut, broken_event, broken_reason
from pydantic import ValidationError

from .conftest import PHI_MODEL, Cluster, RouterFactory, custom_node, metric, node_report, q
from .test_openai_streaming import budget, post_stream, sse_events

LIMIT = 0.5
Write = Callable[[web.StreamResponse], Awaitable[None]]


def _event(content: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


class Node:
    """A node that sends one event of text, then whatever `step` writes, until the router
    closes the connection (`closed` is set then) or 60 s pass."""

    def __init__(self, step: Write) -> None:
        self.step = step
        self.closed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **node_report(request)})
        await resp.prepare(request)
        try:
            await resp.write(_event("first "))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await self.step(resp)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self.closed.set()  # the router closed its side (a test server cancels the handler)
            raise
        return resp


async def _stream_from(
    router: RouterFactory,
    cluster: Cluster,
    aiohttp_server: Any,
    node: Node,
    routing: dict[str, Any] | None = None,
    node_config: dict[str, Any] | None = None,
) -> tuple[float, bytes, Any]:
    """Stream one answer from `node` through a router; (seconds it took, body, router client)."""
    entry = {**await custom_node(aiohttp_server, node.handle, "endless"), **(node_config or {})}
    routing = {"stream_timeout_seconds": LIMIT, **(routing or {})}
    client = await router(cluster.config(nodes=[entry], routing=routing, cache={"enabled": False}))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("endless")}], "stream": True}
    start = time.monotonic()
    resp = await asyncio.wait_for(post_stream(str(client.make_url("")), body), timeout=15)
    assert resp.status_code == 200
    return time.monotonic() - start, resp.content, client


async def _assert_cut_at_the_limit(elapsed: float, raw: bytes, client: Any, node: Node, limit: float) -> None:
    assert limit <= elapsed < limit + 2.0, elapsed
    data, comments = sse_events(raw)
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["code"] == "stream_broken" and "stream_timeout_seconds" in error["message"], error
    assert comments and comments[-1].startswith(": fdp-privacy ")
    assert b"first " in raw
    doc = await budget(client)
    assert doc["details"]["queries"] == 1 and doc["consumed_budget"] > 0, doc  # bytes went out
    await asyncio.wait_for(node.closed.wait(), timeout=5)  # closed, not left open in the pool
    assert await metric(client, 'fdp_streams_broken_total{reason="time_limit"}') == 1


async def test_a_node_sending_empty_events_forever_is_cut_at_the_stream_limit(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing to relay, so nothing is written to the client, which stays connected."""

    async def empty(resp: web.StreamResponse) -> None:
        await resp.write(_event(""))
        await asyncio.sleep(0.02)

    node = Node(empty)
    elapsed, raw, client = await _stream_from(router, demo_cluster, aiohttp_server, node)
    await _assert_cut_at_the_limit(elapsed, raw, client, node, LIMIT)
    logged = [r for r in caplog.records if r.getMessage() == "stream broke after it started"]
    assert [(r.node, r.error) for r in logged] == [  # type: ignore[attr-defined]
        ("endless", "the stream passed its time limit (stream_timeout_seconds: 0.5 s)")
    ]


async def test_a_never_ending_answer_is_cut_at_the_stream_limit(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """Text as fast as the node can write it: the router's reads never wait for bytes."""

    async def words(resp: web.StreamResponse) -> None:
        await resp.write(_event("more ") * 8)
        await asyncio.sleep(0)

    node = Node(words)
    elapsed, raw, client = await _stream_from(router, demo_cluster, aiohttp_server, node)
    await _assert_cut_at_the_limit(elapsed, raw, client, node, LIMIT)
    assert raw.count(b"more ") > 8


async def test_a_node_dribbling_just_inside_the_read_timeout_is_cut_at_its_own_stream_limit(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """The attack on the per-read timeout: one empty event every 0.3 s against a read timeout
    of 0.4 s never times out a read. The node's own limit (1 s) overrides routing's (600 s)."""

    async def dribble(resp: web.StreamResponse) -> None:
        await asyncio.sleep(0.3)
        await resp.write(_event(""))

    node = Node(dribble)
    elapsed, raw, client = await _stream_from(
        router,
        demo_cluster,
        aiohttp_server,
        node,
        routing={"read_timeout_seconds": 0.4, "stream_timeout_seconds": 600},
        node_config={"stream_timeout_seconds": 1.0},
    )
    await _assert_cut_at_the_limit(elapsed, raw, client, node, 1.0)
    assert b"1 s" in raw  # the message names the limit that applied: the node's


async def test_a_stream_that_ends_inside_the_limit_is_untouched(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """The control: the limit counts from the first read of the body, not from the request,
    so a node slower than the limit to answer its headers still streams a whole answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(LIMIT + 0.2)  # thinking before the first byte
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **node_report(request)})
        await resp.prepare(request)
        for word in ("all ", "of ", "it"):
            await resp.write(_event(word))
            await asyncio.sleep(0.05)
        await resp.write(_event("", "stop") + b"data: [DONE]\n\n")
        return resp

    entry = await custom_node(aiohttp_server, handler, "prompt")
    client = await router(demo_cluster.config(nodes=[entry], routing={"stream_timeout_seconds": LIMIT}))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("prompt")}], "stream": True}
    resp = await post_stream(str(client.make_url("")), body)
    data, _ = sse_events(resp.content)
    assert data[-1] == "[DONE]" and b"stream_broken" not in resp.content
    assert all(f'"content":"{word}"'.encode() in resp.content for word in ("all ", "of ", "it"))


def test_the_stream_limit_defaults_to_ten_minutes_and_a_node_inherits_it() -> None:
    cfg = RouterConfig.model_validate({"nodes": [{"id": "n", "hospital": "h", "endpoint": "http://n"}]})
    assert cfg.routing.stream_timeout_seconds == 600
    assert cfg.nodes[0].stream_timeout_seconds is None


@pytest.mark.parametrize("bad", [0, -1, float("nan")])
@pytest.mark.parametrize("where", ["routing", "node"])
def test_a_stream_limit_that_is_not_positive_is_refused_naming_the_field(bad: float, where: str) -> None:
    node: dict[str, Any] = {"id": "n", "hospital": "h", "endpoint": "http://n"}
    doc: dict[str, Any] = {"nodes": [node]}
    if where == "routing":
        doc["routing"] = {"stream_timeout_seconds": bad}
    else:
        node["stream_timeout_seconds"] = bad
    with pytest.raises(ValidationError) as err:
        RouterConfig.model_validate(doc)
    (problem,) = err.value.errors()
    assert problem["loc"][-1] == "stream_timeout_seconds" and problem["type"] != "extra_forbidden", problem


def test_the_time_limit_event_names_the_setting_and_any_other_break_does_not() -> None:
    timed_out = json.loads(broken_event(StreamTimedOut(2.5))[len(b"data: ") :])["error"]
    broke = json.loads(broken_event(StreamBroken("an event that is not JSON"))[len(b"data: ") :])["error"]
    assert timed_out["code"] == broke["code"] == "stream_broken"
    assert "stream_timeout_seconds: 2.5 s" in timed_out["message"]
    assert "time limit" not in broke["message"]


def test_each_cause_of_a_broken_stream_has_its_metric_reason() -> None:
    assert broken_reason(StreamTimedOut(3.0)) == "time_limit"
    assert broken_reason(ReportContradicted("epsilon_over")) == "contract_violation"
    assert broken_reason(StreamBroken("an event that is not JSON")) == "invalid"
    assert broken_reason(BackendFailure("n1", "the node broke off")) == "node_failure"
