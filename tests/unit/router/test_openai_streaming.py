"""Streaming (``stream: true``) read raw with httpx: the SSE bytes exactly as OpenAI frames
them, the privacy summary in the final chunk and a trailing comment, and the privacy rules of
a stream: the node's report checked before the first byte, committed once a byte went out,
refunded when the client left before it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from aiohttp import web
from aiohttp.test_utils import TestServer
from fdp_router.privacy.api import Scope
from fdp_router.runtime import HOLDER
from fdp_router.streaming import Reframer, SseDecoder

from .conftest import (
    PHI_MODEL,
    Cluster,
    RouterFactory,
    auth,
    both_servings,
    metric,
    q,
    settled,
    settled_reservations,
    token,
)


def sse_events(raw: bytes) -> tuple[list[str], list[str]]:
    """(data payloads, comment lines) of an SSE body, checking OpenAI's framing: every event
    is one `data: ` line followed by one blank line."""
    text = raw.decode()
    assert text.endswith("\n\n")
    data, comments = [], []
    for block in text[:-2].split("\n\n"):
        lines = block.split("\n")
        assert len(lines) == 1, block
        if lines[0].startswith(":"):
            comments.append(lines[0])
        else:
            assert lines[0].startswith("data: "), block
            data.append(lines[0][len("data: ") :])
    return data, comments


async def budget(client: Any, user: str = "alice") -> dict[str, Any]:
    doc: dict[str, Any] = await (
        await client.get(f"/v1/privacy/budget/{user}", headers=auth(token(user=user)))
    ).json()
    return doc


async def post_stream(base: str, body: dict[str, Any], tok: str | None = None) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body, headers=auth(tok)) as resp:
            await resp.aread()
            return resp


def chat(content: str, **kw: Any) -> dict[str, Any]:
    return {"model": PHI_MODEL, "messages": [{"role": "user", "content": content}], "stream": True, **kw}


async def test_raw_sse_is_framed_as_openai_frames_it(router: RouterFactory, demo_cluster: Cluster) -> None:
    client = await router()
    base = str(client.make_url(""))
    resp = await post_stream(base, chat(q("raw"), privacy_budget=0.3))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert resp.headers["x-fdp-privacy-cost"] == "0.3" and resp.headers["x-fdp-cache"] == "miss"
    assert resp.headers["x-request-id"]
    data, comments = sse_events(resp.content)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["model"] == PHI_MODEL
        assert c["id"] == chunks[0]["id"] and "usage" not in c  # no include_usage: no usage key
        assert set(c) <= {"id", "object", "created", "model", "system_fingerprint", "choices", "privacy"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    final = chunks[-1]
    assert final["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert final["privacy"]["epsilon"] == 0.3 and final["privacy"]["cached"] is False
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert "hypertension" in text
    assert len(chunks) >= 4  # the node's chunks are relayed as they come, not as one
    assert comments == [": fdp-privacy " + json.dumps(final["privacy"], separators=(",", ":"))]
    assert (await budget(client))["details"]["queries"] == 1


async def test_include_usage_and_the_cache_replays_a_stream_for_free(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    base = str(client.make_url(""))
    body = chat(q("usage"), stream_options={"include_usage": True})
    first = await post_stream(base, body)
    data, _ = sse_events(first.content)
    chunks = [json.loads(d) for d in data[:-1]]
    assert all("usage" in c for c in chunks)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-1]["privacy"]["epsilon"] == 0.1
    second = await post_stream(base, body)
    assert second.headers["x-fdp-cache"] == "hit" and second.headers["x-fdp-privacy-cost"] == "0"
    again = [json.loads(d) for d in sse_events(second.content)[0][:-1]]
    text = lambda cs: "".join(c["choices"][0]["delta"].get("content", "") for c in cs if c["choices"])  # noqa: E731
    assert text(again) == text(chunks)
    assert again[-1]["privacy"]["cached"] is True and again[-1]["privacy"]["epsilon"] == 0.0
    # The non-streamed request is the same request: also a hit.
    r = await client.post(
        "/v1/chat/completions", json={**body, "stream": False, "stream_options": None}, headers=auth()
    )
    assert (await r.json())["privacy"]["cached"] is True
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1
    assert (await budget(client))["details"]["queries"] == 1


async def test_a_report_over_the_reservation_is_caught_before_the_first_byte(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    for n in demo_cluster.nodes:
        n.state.over_report = 2.0  # reports twice the epsilon it was sent, in its headers
    client = await router(demo_cluster.config(routing={"max_attempts": 3}))
    base = str(client.make_url(""))
    resp = await post_stream(base, chat(q("over")))
    assert resp.status_code == 502 and resp.headers["content-type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["code"] == "backend_error" and "epsilon_over_reservation" in err["message"]
    assert (await budget(client))["consumed_budget"] == 0
    ledger = client.app[HOLDER].current.ledger
    for i in range(3):
        assert (await ledger.budget(Scope.HOSPITAL, f"hospital-{i}")).consumed_epsilon == 0


async def test_a_phi_node_that_reports_nothing_in_its_headers_is_not_streamed(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """A node that puts its report only in the stream's body: too late to check; refused."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        body = {"choices": [{"index": 0, "delta": {"content": "secret"}, "finish_reason": "stop"}]}
        await resp.write(
            b"data: "
            + json.dumps({**body, "privacy": {"epsilon": 0.1, "mechanism": "pure_dp"}}).encode()
            + b"\n\n"
        )
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "late",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": "late-model",
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    resp = await post_stream(str(client.make_url("")), {**chat(q("x")), "model": "late-model"})
    assert resp.status_code == 502 and "no_report" in resp.json()["error"]["message"]
    assert b"secret" not in resp.content
    assert (await budget(client))["consumed_budget"] == 0


async def test_a_stream_that_breaks_after_its_first_byte_stays_charged(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        eps = request.headers["X-FDP-Privacy-Epsilon"]
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-FDP-Privacy-Epsilon": eps,
                "X-FDP-Privacy-Delta": "0.0",
                "X-FDP-Privacy-Mechanism": "pure_dp",
            }
        )
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "half an"}}]}\n\n')
        await asyncio.sleep(0.05)
        request.transport.close()  # the node dies mid-answer
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "flaky",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    resp = await post_stream(str(client.make_url("")), chat(q("break"), privacy_budget=0.4))
    assert resp.status_code == 200
    data, comments = sse_events(resp.content)
    assert "[DONE]" not in data
    assert json.loads(data[0])["choices"][0]["delta"]["content"] == "half an"
    assert json.loads(data[-1])["error"]["code"] == "stream_broken"
    assert comments and comments[0].startswith(": fdp-privacy ")
    doc = await budget(client)  # a byte reached the client: committed
    assert doc["details"]["queries"] == 1 and doc["consumed_budget"] > 0
    assert await metric(client, 'fdp_streams_broken_total{reason="node_failure"}') == 1


@both_servings
async def test_a_client_gone_before_the_first_byte_is_refunded(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """Production: the handler runs on, gets the node's headers after 1.2 s, finds the client
    gone (`connected()`) before the commit and refunds. Cancelled (as at shutdown): the
    reservation is refunded while the node is still answering."""
    for n in demo_cluster.nodes:
        n.state.delay = 1.2
    client = await router()
    base = str(client.make_url(""))

    async def give_up() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=0.5) as http:
            try:
                await http.post(
                    "/v1/chat/completions", json=chat(q("bye"), privacy_budget=0.5), headers=auth()
                )
            except httpx.ReadTimeout:
                return
        raise AssertionError("the router answered before the client gave up")

    await give_up()
    await settled(client)  # the handler has returned (or was cancelled): its refund is done
    assert await settled_reservations(demo_cluster) == ["released"]  # reserved, then refunded
    doc = await budget(client)
    assert doc["consumed_budget"] == 0, doc
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1


async def test_a_public_node_streams_its_token_counts_and_logprobs(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    lp = {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]}

    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["seed"] == 7
        assert body["stream_options"] == {"include_usage": True}
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        events = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": lp, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "x_secret": "never relayed"},
            {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}},
        ]
        for e in events:
            await resp.write(b"data: " + json.dumps(e).encode() + b"\r\n\r\n")  # CRLF framing too
        await resp.write(b"data: [DONE]\r\n\r\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "pub",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": "general",
        "privacy": {"data_class": "public", "mechanism": "none"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    body = {
        "model": "general",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
    }
    resp = await post_stream(str(client.make_url("")), body)
    data, _ = sse_events(resp.content)
    chunks = [json.loads(d) for d in data[:-1]]
    assert b"x_secret" not in resp.content
    assert chunks[1]["choices"][0]["logprobs"] == lp
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 11, "completion_tokens": 1, "total_tokens": 12}
    assert chunks[-1]["privacy"]["epsilon"] == 0 and chunks[-1]["privacy"]["basis"].startswith("public data")


async def test_phi_logprobs_and_token_counts_are_not_released(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    r = await client.post(
        "/v1/chat/completions",
        json={"model": PHI_MODEL, "messages": [{"role": "user", "content": q("lp")}], "logprobs": True},
        headers=auth(),
    )
    doc = await r.json()
    assert r.status == 200 and doc["choices"][0]["logprobs"] is None
    words = len(q("lp").split())
    assert doc["usage"]["prompt_tokens"] == words  # the router's word count, not the node's


def test_sse_decoder_handles_split_events_comments_and_multiline_data() -> None:
    dec = SseDecoder()
    stream = b': hello\n\ndata: {"a"\r\ndata: :1}\r\n\r\nevent: x\nid: 3\ndata: [DONE]\n\ndata: tail'
    out: list[bytes] = []
    for i in range(0, len(stream), 3):  # arbitrary split points
        out += dec.feed(stream[i : i + 3])
    out += dec.close()
    assert out == [b'{"a"\n:1}', b"[DONE]", b"tail"]


def test_sse_decoder_gives_the_same_events_wherever_the_stream_is_split() -> None:
    events = [b'{"a": 1}', b'{"b": "x\\ny"}', b"[DONE]"]
    stream = b"".join(b"data: " + e + b"\n\n" for e in events[:2]) + b": c\n\nid: 1\ndata: [DONE]\n\n"
    for cut in range(len(stream) + 1):
        for cut2 in range(cut, len(stream) + 1, 7):
            dec = SseDecoder()
            got = dec.feed(stream[:cut]) + dec.feed(stream[cut:cut2]) + dec.feed(stream[cut2:]) + dec.close()
            assert got == events, (cut, cut2, got)


def test_sse_decoder_splits_in_one_step_only_what_is_one_line_data_events() -> None:
    # Each buffer is close to the common shape (`data: ` lines, blank lines, LF) but not it:
    # the line parser's reading, not the one-step split's.
    cases = {
        b"data: a\n\ndata: b\n\ndata: c": [b"a", b"b"],
        b"data: a\n\n\ndata: b\n\n": [b"a", b"b"],
        b"data: a\n\n: c\n\ndata: b\n\n": [b"a", b"b"],
        b"data: a\nb\n\ndata: c\n\n": [b"a", b"c"],
        b"data: a\ndata: b\n\n": [b"a\nb"],
        b"data: a\n\ndata:b\n\ndata:  c\n\n": [b"a", b"b", b" c"],
        b"\n\ndata: a\n\n": [b"a"],
    }
    for stream, events in cases.items():
        dec = SseDecoder()
        assert dec.feed(stream) == events, stream


def test_reframer_holds_the_finish_chunk_for_the_privacy_summary() -> None:
    fr = Reframer(id="chatcmpl-1", model="m", fingerprint="f")
    out = fr.node_event(b'{"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop"}]}')
    assert out == b"" and fr.finish == "stop" and fr.text == "a"
    tail = fr.close({"epsilon": 1.0}, lambda: {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    events = tail.split(b"\n\n")
    final = json.loads(events[0][len(b"data: ") :])
    assert final["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert final["privacy"] == {"epsilon": 1.0}
    assert events[1].startswith(b": fdp-privacy ") and events[2] == b"data: [DONE]"


async def test_streaming_through_a_node_that_does_not_stream(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """A node that ignores `stream` and answers one JSON completion: the router streams it."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "whole"},
                        "finish_reason": "stop",
                    }
                ]
            }
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server: TestServer = await aiohttp_server(app)
    node = {
        "id": "pub",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": "general",
        "privacy": {"data_class": "public", "mechanism": "none"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    resp = await post_stream(str(client.make_url("")), {**chat("hi"), "model": "general"})
    data, _ = sse_events(resp.content)
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "whole"
    assert data[-1] == "[DONE]"
