"""Attack review of the node client's response parsing (backends.py): bytes a node sends
beyond its answer never become (part of) another call's answer, byte-by-byte delivery parses
the same, and a flood of interim answers is bounded."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from fdp_router.backends import BackendFailure

from .test_node_client import (  # noqa: F401  (serve: fixture)
    ANSWER,
    PAYLOAD,
    REPORT,
    SENT,
    byte_by_byte,
    serve,
    whole,
)

OTHER = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "INJECTED"}}]})


async def test_a_second_answer_in_the_same_packet_never_reaches_the_next_call(serve) -> None:  # noqa: F811
    """A node sends two answers for one call (a pipelining bug, or on purpose): the first is
    the answer, the connection is not reused, and the next call gets its own answer."""
    pool, srv = await serve([whole() + whole(OTHER), whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


@pytest.mark.parametrize("extra", [b"\r\n", b"\r\n\r\n", b"X", b"HTTP/1.1 200 OK\r\n"])
async def test_bytes_after_an_answer_retire_the_connection(serve, extra: bytes) -> None:  # noqa: F811
    pool, srv = await serve([whole() + extra, whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


async def test_a_late_second_answer_is_not_taken_for_the_next_call(serve) -> None:  # noqa: F811
    """The extra answer arrives after the call's answer was read, while the connection is
    idle in the pool: it must be retired, not handed the next call."""

    def twice(t: asyncio.Transport) -> None:
        t.write(whole())
        asyncio.get_running_loop().call_later(0.02, t.write, whole(OTHER))

    pool, srv = await serve([twice, whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    await asyncio.sleep(0.06)
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


async def test_an_answer_delivered_byte_by_byte(serve) -> None:  # noqa: F811
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + whole()

    pool, srv = await serve([byte_by_byte(answer, 0.0005), whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 1


async def test_an_endless_run_of_interim_answers_is_a_node_failure(serve) -> None:  # noqa: F811
    def flood(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n" * 20_000)

    pool, _ = await serve([flood], read_timeout_seconds=2)
    with pytest.raises(BackendFailure):
        await asyncio.wait_for(pool.chat("n1", PAYLOAD, SENT), 10)


async def test_an_answer_to_the_end_of_the_connection_is_whole(serve) -> None:  # noqa: F811
    def until_close(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        t.write(REPORT + b"\r\n")
        t.write(ANSWER[:10])
        asyncio.get_running_loop().call_later(0.02, t.write, ANSWER[10:])
        asyncio.get_running_loop().call_later(0.04, t.close)

    pool, _ = await serve([until_close])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
