"""The node client in ``backends.py`` (keep-alive HTTP/1.1 on asyncio protocols) against raw
servers that answer exactly the bytes a test gives: framing, reuse, limits, timeouts, errors."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
from fdp_router.backends import BackendFailure, BackendPool
from fdp_router.config import HospitalNodeConfig, NodeMechanism, RoutingConfig
from fdp_router.metrics import Metrics
from fdp_router.node_contract import SentPrivacy

SENT = SentPrivacy(0.5, 0.0, NodeMechanism.PURE_DP)
PAYLOAD = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0.0}
ANSWER = orjson.dumps({"choices": [{"message": {"role": "assistant", "content": "hello"}}]})
REPORT = b"X-FDP-Privacy-Epsilon: 0.5\r\nX-FDP-Privacy-Delta: 0\r\nX-FDP-Privacy-Mechanism: pure_dp\r\n"


def whole(body: bytes = ANSWER, extra: bytes = b"", status: bytes = b"200 OK") -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: application/json\r\n"
        + REPORT
        + extra
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


_WRITERS: set[asyncio.Task[None]] = set()


def byte_by_byte(data: bytes, gap: float) -> Callable[[asyncio.Transport], None]:
    """A node step that writes `data` one byte every `gap` seconds, in order on any event loop
    (one timer per byte would not be: uvloop's timers have a 1 ms clock, and timers due in
    the same millisecond, or one due now, may run in another order)."""

    def step(t: asyncio.Transport) -> None:
        async def write() -> None:
            for i in range(len(data)):
                if t.is_closing():
                    return
                t.write(data[i : i + 1])
                await asyncio.sleep(gap)

        task = asyncio.get_running_loop().create_task(write())
        _WRITERS.add(task)
        task.add_done_callback(_WRITERS.discard)

    return step


def chunked(pieces: list[bytes], extra: bytes = b"") -> bytes:
    out = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        + REPORT
        + extra
        + b"\r\n"
    )
    for p in pieces:
        out += b"%x;ext=1\r\n" % len(p) + p + b"\r\n"
    return out + b"0\r\nTrailer: x\r\n\r\n"


class Server:
    """Each request (head + Content-Length body) gets the next answer of `answers`: bytes, or
    a callable given the transport (to split, delay or close)."""

    def __init__(self, answers: list[bytes | Callable[[asyncio.Transport], None]]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0

    def protocol(self) -> asyncio.Protocol:
        server = self

        class P(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                server.connections += 1
                self.t = transport
                self.buf = b""

            def data_received(self, data: bytes) -> None:
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    head, _, rest = self.buf.partition(b"\r\n\r\n")
                    n = int(
                        next(
                            x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:")
                        ).split(b":")[1]
                    )
                    if len(rest) < n:
                        return
                    server.requests.append(head + b"\r\n\r\n" + rest[:n])
                    self.buf = rest[n:]
                    answer = server.answers.pop(0)
                    if callable(answer):
                        answer(self.t)  # type: ignore[arg-type]
                    else:
                        self.t.write(answer)  # type: ignore[attr-defined]

        return P()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., object]]:
    servers: list[asyncio.AbstractServer] = []
    pools: list[BackendPool] = []

    async def start(
        answers: list[bytes | Callable[[asyncio.Transport], None]], **node: object
    ) -> tuple[BackendPool, Server]:
        srv = Server(answers)
        s = await asyncio.get_running_loop().create_server(srv.protocol, "127.0.0.1", 0)
        servers.append(s)
        port = s.sockets[0].getsockname()[1]
        routing = RoutingConfig(**node.pop("routing", {}))  # type: ignore[arg-type]
        pool = BackendPool(routing, Metrics())
        await pool.start()
        pools.append(pool)
        cfg = HospitalNodeConfig(
            id="n1",
            hospital="h1",
            endpoint=f"http://127.0.0.1:{port}",
            privacy={"data_class": "phi", "mechanism": "pure_dp"},
            **node,  # type: ignore[arg-type]
        )
        pool.configure((cfg,), routing)
        return pool, srv

    yield start
    for p in pools:
        await p.close()
    for s in servers:
        s.close()


async def test_whole_answers_reuse_one_connection(serve) -> None:
    pool, srv = await serve([whole(), whole(), whole()])
    for _ in range(3):
        reply = await pool.chat("n1", PAYLOAD, SENT)
        assert reply.text == "hello" and reply.report is not None and reply.report.epsilon == 0.5
    assert srv.connections == 1
    head, _, body = srv.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions HTTP/1.1"
    assert f"Host: 127.0.0.1:{pool.nodes['n1'].target.port}" in lines  # type: ignore[union-attr]
    assert "X-FDP-Privacy-Epsilon: 0.5" in lines and "Content-Type: application/json" in lines
    sent = orjson.loads(body)
    assert sent["model"] == "default" and sent["fdp_privacy"]["epsilon"] == 0.5


async def test_chunked_answers_are_decoded_across_reads(serve) -> None:
    raw = chunked([ANSWER[:10], ANSWER[10:]])

    pool, srv = await serve([byte_by_byte(raw, 0.001), raw])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 1  # the trailer was read: the connection was reusable


async def test_an_answer_to_the_end_of_the_connection(serve) -> None:
    def close_delimited(t: asyncio.Transport) -> None:
        t.write(b"HTTP/1.1 200 OK\r\n" + REPORT + b"\r\n" + ANSWER)
        t.close()

    pool, srv = await serve([close_delimited, whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


async def test_connection_close_and_gzip(serve) -> None:
    body = gzip.compress(ANSWER)
    pool, srv = await serve([whole(body, b"Content-Encoding: gzip\r\nConnection: close\r\n"), whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",  # cut short, then closed
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY",  # no CRLF after a chunk
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTP/2 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",  # not a completion
        b"HTTP/1.1 20",  # closed inside the head
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n{}",
        # A complete answer, but a header name that is not a token, or a folded line:
        whole(extra=b"Bad Header: x\r\n"),
        whole(extra=b"Name : x\r\n"),
        whole(extra=b"X-A: 1\r\n  folded\r\n"),
        whole(extra=b": no name\r\n"),
    ],
)
async def test_malformed_answers_are_node_failures(serve, answer: bytes) -> None:
    def send_and_close(t: asyncio.Transport) -> None:
        t.write(answer)
        t.close()

    pool, _ = await serve([send_and_close])
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert not exc.value.client_error and not exc.value.timeout
    assert pool.nodes["n1"].failures == 1


async def test_a_stalled_node_times_out(serve) -> None:
    pool, _ = await serve([lambda t: t.write(b"HTTP/1.1 200 OK\r\n")], read_timeout_seconds=0.2)
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert exc.value.timeout


async def test_a_refused_connection_is_a_node_failure(serve) -> None:
    pool, _ = await serve([])
    pool.configure(
        (pool.nodes["n1"].cfg.model_copy(update={"endpoint": "http://127.0.0.1:1"}),), pool.routing
    )
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert not exc.value.timeout and not exc.value.client_error


async def test_statuses(serve) -> None:
    error = orjson.dumps({"error": {"code": "question_not_supported", "message": "echo RAW"}})
    pool, srv = await serve(
        [
            whole(error, status=b"400 Bad Request"),
            whole(b"", status=b"307 Temporary Redirect", extra=b"Location: http://elsewhere/\r\n"),
            whole(b"", status=b"503 Service Unavailable"),
            b"HTTP/1.1 100 Continue\r\n\r\n" + whole(),
        ]
    )
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert exc.value.client_error and exc.value.code == "question_not_supported"
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert "HTTP 307" in str(exc.value) and not exc.value.client_error  # never followed
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert "HTTP 503" in str(exc.value)
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 1 and len(srv.requests) == 4


async def test_per_host_limit_queues_calls(serve) -> None:
    pending: list[asyncio.Transport] = []
    pool, srv = await serve([pending.append] * 3, routing={"per_host_connections": 2})
    calls = [asyncio.create_task(pool.chat("n1", PAYLOAD, SENT)) for _ in range(3)]
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(pending) == 2:
            break
    await asyncio.sleep(0.05)
    assert len(pending) == 2 and srv.connections == 2  # the third waits for a connection
    pending[0].write(whole())
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(pending) == 3:
            break
    assert len(pending) == 3 and srv.connections == 2  # ... and got the released one
    pending[1].write(whole())
    pending[2].write(whole())
    assert [r.text for r in await asyncio.gather(*calls)] == ["hello"] * 3


async def test_a_cancelled_call_frees_its_connection(serve) -> None:
    pending: list[asyncio.Transport] = []
    pool, srv = await serve([pending.append, whole()], routing={"per_host_connections": 1})
    call = asyncio.create_task(pool.chat("n1", PAYLOAD, SENT))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if pending:
            break
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert pool.nodes["n1"].in_flight == 0
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"  # a new connection
    assert srv.connections == 2


async def test_a_stream_arrives_in_pieces_and_close_drops_an_unread_rest(serve) -> None:
    events = [b'data: {"a": %d}\n\n' % i for i in range(3)]
    stream = chunked(events, b"Content-Type: text/event-stream\r\n").replace(
        b"Content-Type: application/json\r\n", b""
    )
    sent: list[asyncio.Transport] = []

    def slowly(t: asyncio.Transport) -> None:
        sent.append(t)
        head, _, rest = stream.partition(b"\r\n\r\n")
        t.write(head + b"\r\n\r\n")
        loop = asyncio.get_running_loop()
        loop.call_later(0.02, t.write, rest[:40])
        loop.call_later(0.04, t.write, rest[40:])

    pool, srv = await serve([slowly, slowly, whole()])
    s = await pool.open_stream("n1", {**PAYLOAD, "stream": True}, SENT)
    assert s.report is not None and s.data is None
    got = [p async for p in s.chunks()]
    assert b"".join(got) == b"".join(events) and len(got) >= 2
    await s.close()
    s = await pool.open_stream("n1", {**PAYLOAD, "stream": True}, SENT)
    await s.close()  # nothing read: the connection is not reused
    assert pool.nodes["n1"].in_flight == 0
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS])
async def test_deflate_with_and_without_its_zlib_wrapper(serve, wbits: int) -> None:
    z = zlib.compressobj(wbits=wbits)
    body = z.compress(ANSWER) + z.flush()
    pool, _ = await serve([whole(body, b"Content-Encoding: deflate\r\n")])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"


async def test_a_truncated_gzip_answer_is_a_node_failure(serve) -> None:
    pool, _ = await serve([whole(gzip.compress(ANSWER)[:-6], b"Content-Encoding: gzip\r\n")])
    with pytest.raises(BackendFailure):
        await pool.chat("n1", PAYLOAD, SENT)


async def test_a_dropped_response_gives_its_slot_back(serve) -> None:
    import gc

    from fdp_router.backends import _HostPool

    pool, _ = await serve([whole(), whole()], routing={"per_host_connections": 1})
    st = pool.nodes["n1"]
    resp = await pool._send(st, PAYLOAD, SENT)
    hosts: list[_HostPool] = list(pool._pools.values())
    assert hosts[0].in_use == 1
    del resp
    gc.collect()
    await asyncio.sleep(0)  # the release is handed to the loop
    assert hosts[0].in_use == 0
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"


async def test_a_response_collected_on_another_thread_is_released_on_its_loop(serve) -> None:
    """The garbage collector may finalise a dropped response on any thread; the pool's
    bookkeeping and its waiters' futures belong to the event loop, so the release must run
    there (a waiter's future set from another thread would not wake its task)."""
    import threading

    from fdp_router.backends import _HostPool

    pool, _ = await serve([whole(), whole()], routing={"per_host_connections": 1})
    st = pool.nodes["n1"]
    resp = await pool._send(st, PAYLOAD, SENT)
    (host,) = [p for p in pool._pools.values() if isinstance(p, _HostPool)]
    released_on: list[str] = []
    real_release = host.release

    def spy(conn, reuse):
        released_on.append(threading.current_thread().name)
        real_release(conn, reuse)

    host.release = spy  # type: ignore[method-assign]
    waiting = asyncio.ensure_future(pool.chat("n1", PAYLOAD, SENT))  # queued for the one slot
    await asyncio.sleep(0.05)
    assert not waiting.done()
    box = [resp]
    del resp
    worker = threading.Thread(target=box.clear, name="collector")  # the last reference dies there
    worker.start()
    worker.join()
    assert (await asyncio.wait_for(waiting, 5)).text == "hello"
    assert released_on[0] == threading.current_thread().name


async def test_a_refused_content_coding_frees_its_slot_once(serve) -> None:
    import gc

    answer = whole(b"ab", b"Content-Encoding: br\r\n")
    pool, _ = await serve([answer, whole()], routing={"per_host_connections": 1})
    with pytest.raises(BackendFailure):
        await pool.chat("n1", PAYLOAD, SENT)
    gc.collect()
    assert [p.in_use for p in pool._pools.values()] == [0]
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert [p.in_use for p in pool._pools.values()] == [0]


OK_HEAD = b"HTTP/1.1 200 OK\r\n" + REPORT


@pytest.mark.parametrize(
    "answer",
    [
        # Request/response smuggling shapes: two ways to frame one body, or a framing two
        # parsers could read differently. Each is refused as it arrives (the connection stays
        # open, so the failure is the parser's, not a truncation).
        OK_HEAD + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        OK_HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\nab",
        OK_HEAD + b"Content-Length: 2, 2\r\n\r\nab",
        OK_HEAD + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n2\r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        OK_HEAD + b"X-A: 1\r\n Content-Length: 2\r\nContent-Length: 2\r\n\r\nab",  # obs-fold
        OK_HEAD + b"X-A: 1\r\n\tfolded\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 200 OK\nContent-Length: 2\n\nab",  # bare LF line endings
        OK_HEAD + b"Content-Length: 2\n\r\nab",
        OK_HEAD + b"X-A: 1\rContent-Length: 2\r\n\r\nab",  # bare CR
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\n0\r\n\r\n",
        OK_HEAD + b"Content-Length: -1\r\n\r\nab",
        OK_HEAD + b"Content-Length: 18446744073709551617\r\n\r\nab",
        OK_HEAD + b"Content-Length: 0x2\r\n\r\nab",
        OK_HEAD + b"Content-Length: 2 2\r\n\r\nab",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n10000000000000001\r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2 \r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n\r\nab\r\n0\r\n\r\n",
        OK_HEAD + b"X-A: a\x00b\r\nContent-Length: 2\r\n\r\nab",  # NUL in a value
        b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nab",
        b"HTTP/1.1 100 Continue\r\nContent-Length: 2\r\n\r\nab" + whole(),  # an interim answer's body
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n" + whole(),
    ],
)
async def test_smuggling_shapes_are_node_failures_and_the_connection_is_dropped(serve, answer: bytes) -> None:
    pool, srv = await serve([answer, whole()], read_timeout_seconds=5)
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert not exc.value.client_error and not exc.value.timeout
    assert pool.nodes["n1"].failures == 1
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2  # the refused answer's connection was not reused


@pytest.mark.parametrize(
    "after",
    [
        b"\r\n",  # even a bare CRLF (llhttp skips empty lines between answers)
        b"x",
        whole(b'{"choices": [{"message": {"role": "assistant", "content": "smuggled"}}]}'),
    ],
)
async def test_bytes_after_a_complete_answer_are_never_read_as_the_next_one(serve, after: bytes) -> None:
    pool, srv = await serve([whole() + after, whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


async def test_bytes_arriving_while_idle_drop_the_connection(serve) -> None:
    smuggled = whole(b'{"choices": [{"message": {"role": "assistant", "content": "smuggled"}}]}')

    def then_more(t: asyncio.Transport) -> None:
        t.write(whole())
        asyncio.get_running_loop().call_later(0.02, t.write, smuggled)

    pool, srv = await serve([then_more, whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    await asyncio.sleep(0.1)
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.0 200 OK\r\n" + REPORT + b"Content-Length: %d\r\n\r\n" % len(ANSWER) + ANSWER,
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
        + REPORT
        + b"Content-Length: %d\r\n\r\n" % len(ANSWER)
        + ANSWER,
        whole(extra=b"Connection: keep-alive, close\r\n"),
    ],
)
async def test_http_1_0_and_connection_close_are_not_reused(serve, answer: bytes) -> None:
    pool, srv = await serve([answer, whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


async def test_several_interim_answers_are_skipped(serve) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    pool, srv = await serve([interim + whole(), whole()])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 1


def _dribbled(raw: bytes, step: int = 1000) -> Callable[[asyncio.Transport], None]:
    def send(t: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        for n, i in enumerate(range(0, len(raw), step)):
            loop.call_later(0.0005 * n, t.write, raw[i : i + step])

    return send


@pytest.mark.parametrize(
    "answer",
    [
        whole(extra=b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70))),  # one write
        _dribbled(whole(extra=b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70)))),
        _dribbled(OK_HEAD + b"X-Long: " + b"a" * 100_000),  # one endless value
        _dribbled(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\nT: " + b"a" * 100_000),
        _dribbled(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;" + b"e" * 100_000),
    ],
)
async def test_heads_trailers_and_framing_over_64_kib_are_node_failures(serve, answer: object) -> None:
    pool, srv = await serve([answer, whole()], read_timeout_seconds=5)
    with pytest.raises(BackendFailure) as exc:
        await pool.chat("n1", PAYLOAD, SENT)
    assert not exc.value.client_error and not exc.value.timeout
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 2


async def test_a_head_just_under_the_limit_is_accepted(serve) -> None:
    pool, _ = await serve([whole(extra=b"".join(b"X-Pad-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60)))])
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"


async def test_a_large_streamed_body_pauses_reading_and_arrives_whole(serve) -> None:
    events = [b"data: %s\n\n" % (b"x" * 1000) for _ in range(600)]
    stream = chunked(events, b"Content-Type: text/event-stream\r\n").replace(
        b"Content-Type: application/json\r\n", b""
    )
    pool, srv = await serve([stream, whole()])
    s = await pool.open_stream("n1", {**PAYLOAD, "stream": True}, SENT)
    await asyncio.sleep(0.1)  # the node writes everything; the client pauses above its high-water mark
    got = [p async for p in s.chunks()]
    await s.close()
    assert b"".join(got) == b"".join(events)
    assert (await pool.chat("n1", PAYLOAD, SENT)).text == "hello"
    assert srv.connections == 1
