"""Attack review of the lean node client (backends.py, f740544) against raw servers: answers
aiohttp decoded correctly must decode the same, and nothing a node sends may be silently
dropped from what the clinician gets."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from typing import Any

import orjson
import pytest
from fdp_router.backends import _Decoder

from .test_node_client import PAYLOAD, REPORT, SENT, chunked, serve, whole  # noqa: F401  (serve: fixture)

EVENTS = [b'data: {"choices":[{"delta":{"content":"part %d"}}]}\n\n' % i for i in range(3)]


async def test_a_gzip_answer_in_several_members_is_decoded_whole(serve) -> None:  # noqa: F811
    """RFC 1952 allows a gzip body of several members (a streaming server that flushes ends
    one; `cat a.gz b.gz`); aiohttp decodes them all (compression_utils._decompress_members).
    zlib.decompressobj(MAX_WBITS | 32) stops at the end of the first member and keeps the
    rest in `unused_data`, which NodeResponse never looks at: the answer is cut short, and
    nothing says so."""
    answer = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "hello world"}}]})
    body = gzip.compress(answer[:20]) + gzip.compress(answer[20:])
    assert gzip.decompress(body) == answer
    pool, _ = await serve([whole(body, b"Content-Encoding: gzip\r\n")])
    reply = await pool.chat("n1", PAYLOAD, SENT)
    assert reply.text == "hello world"


async def test_a_gzip_stream_in_several_members_arrives_whole(serve) -> None:  # noqa: F811
    """The streamed path: each event its own gzip member (a server flushing per event). The
    router must pass on every event, or fail the stream: never end it quietly after the first."""
    members = [gzip.compress(e) for e in EVENTS]
    stream = chunked(members, b"Content-Type: text/event-stream\r\nContent-Encoding: gzip\r\n").replace(
        b"Content-Type: application/json\r\n", b""
    )
    pool, _ = await serve([stream])
    s = await pool.open_stream("n1", {**PAYLOAD, "stream": True}, SENT)
    try:
        got = b"".join([p async for p in s.chunks()])
    finally:
        await s.close()
    assert got == b"".join(EVENTS)


class _Counting:
    """zlib.decompressobj, counting the compressed bytes handed to it."""

    fed = 0

    def __init__(self, real: Any) -> None:
        self._real = real

    def decompress(self, data: bytes, *args: Any) -> bytes:
        _Counting.fed += len(data)
        out: bytes = self._real.decompress(data, *args)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_many_gzip_members_cost_linear_work_not_quadratic(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node (faulty or compromised) answers with many tiny gzip members. `_Decoder.feed`
    hands each new member `unused_data`, a fresh copy of everything after it: work quadratic
    in the piece (~0.5 MB buffered per read: 26,000 empty members, ~6.8 GB copied and ~0.5 s
    of the event loop blocked per read, for every hospital's requests). aiohttp walks the
    members in windows and stops at 1024 of them (compression_utils.MAX_DECOMPRESS_MEMBERS).
    Either way, the bytes zlib is handed must stay proportional to the body."""
    real = zlib.decompressobj
    monkeypatch.setattr(zlib, "decompressobj", lambda *a: _Counting(real(*a)))
    body = gzip.compress(b"") * 4000 + gzip.compress(b"end")
    _Counting.fed = 0
    try:
        out = _Decoder(False).feed(body)
    except ValueError:
        out = None  # refused (too many members): also fine
    assert out in (b"end", None)
    assert _Counting.fed <= 4 * len(body), (
        f"{_Counting.fed:,} bytes fed to zlib for a {len(body):,}-byte body"
    )


def test_a_decompression_bomb_is_refused_before_it_expands() -> None:
    """200 KB of gzip that would expand to 200 MB: refused once the decoded size passes the
    cap, without ever producing more than the cap (the check is on zlib's max_length)."""
    bomb = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 300_000
    decoder = _Decoder(deflate=False)
    produced = 0
    with pytest.raises(ValueError, match="expands to over"):
        for i in range(0, len(bomb), 16_384):
            produced += len(decoder.feed(bomb[i : i + 16_384]))
    assert produced <= 64 * 1024 * 1024


def test_an_answer_under_the_cap_decodes_whole() -> None:
    body = b"x" * (3 * 1024 * 1024)
    decoder = _Decoder(deflate=False)
    assert decoder.feed(gzip.compress(body)) + decoder.finish() == body


async def test_a_node_that_never_stops_sending_is_cut_off_at_the_answer_cap(serve) -> None:  # noqa: F811
    """No Content-Length, no chunking: the body ends when the connection does, and this node
    never closes it. Before the cap, `read` gathered everything it was sent (the router's
    memory was the node's to fill); now the answer is refused once it passes 64 MiB."""
    sent = 0
    piece = b"x" * (1 << 20)

    def endless(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n" + REPORT + b"\r\n")

        def more() -> None:
            nonlocal sent
            if t.is_closing() or sent > 256 * len(piece):
                return
            t.write(piece)
            sent += len(piece)
            asyncio.get_running_loop().call_later(0.001 if t.get_write_buffer_size() > 8 << 20 else 0, more)

        more()

    pool, _ = await serve([endless])
    with pytest.raises(Exception, match="over 64 MiB") as caught:
        await pool.chat("n1", PAYLOAD, SENT)
    assert "over 64 MiB" in str(caught.value)
    assert sent < 256 * len(piece), "the router read everything the node sent"


def test_a_stream_that_never_ends_is_cut_off_at_the_answer_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream's text is kept for the cache and the audit: it is bounded the same way."""
    from fdp_router import streaming

    monkeypatch.setattr(streaming, "MAX_ANSWER_BYTES", 10_000)
    r = streaming.Reframer(id="c1", model="m", fingerprint="fp")
    event = orjson.dumps({"choices": [{"index": 0, "delta": {"content": "y" * 1000}}]})
    for _ in range(10):
        r.node_event(event)
    with pytest.raises(streaming.StreamBroken, match="an answer of over 10,000 characters"):
        r.node_event(event)
