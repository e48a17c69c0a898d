"""Hospital node backends: one pooled HTTP client, live node state, probes, ejection.

Owned by the app (``app.py`` creates it in a cleanup context); ``service.py`` calls
`BackendPool.chat` for each backend call and `views()` to feed the balancer.

- one shared ``aiohttp.ClientSession`` with a per-host connection limit;
- per node: an SSL context with the node's CA and client certificate (mTLS), optional
  server-name override; the node's credentials (``auth``: a bearer API key and/or extra
  headers, read from files when the config is applied, sent only to that node); its
  OpenAI-compatible base path (``api_base_path``, ``/v1`` by default); connect, read and
  stream timeouts (the node's own, else ``routing``'s);
- `BackendPool.chat` for a whole answer, `BackendPool.open_stream` for a streamed one (the
  node's status and privacy headers are in before the body is read, so the request path can
  check them before the client sees a byte);
- passive outlier ejection: ``outlier_consecutive_failures`` failures in a row take a node
  out for ``outlier_ejection_seconds``;
- active health probes (``health_check``: the node's path and method, with its credentials):
  ``failure_threshold`` failed probes mark a node unhealthy until a probe succeeds.

Node state is keyed by node id and survives config reloads, so counters are not lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
import sys
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from fdp_router.balancers import NodeView
from fdp_router.config import DataClass, HospitalNodeConfig, NodeTLS, RoutingConfig
from fdp_router.metrics import Metrics
from fdp_router.node_contract import (
    EPSILON_HEADER,
    MAX_ANSWER_BYTES,
    PrivacyReport,
    SentPrivacy,
    parse_report,
)
from fdp_router.streaming import StreamTimedOut

log = logging.getLogger("fdp_router.backends")
EWMA_ALPHA = 0.2


_JSON = {"Content-Type": "application/json"}


def _call_timeout(routing: RoutingConfig, node: HospitalNodeConfig | None = None) -> aiohttp.ClientTimeout:
    """Built once per config (not per request): no total, connect and per-read limits, the
    node's own where it sets them. A stream's per-read limit bounds the gap between chunks."""
    connect = node.connect_timeout_seconds if node is not None else None
    read = node.read_timeout_seconds if node is not None else None
    return aiohttp.ClientTimeout(
        total=None,
        sock_connect=connect or routing.connect_timeout_seconds,
        sock_read=read or routing.read_timeout_seconds,
    )


# Headers the router sets itself: a node's credentials may not replace them.
_RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
# A field value: visible characters, spaces and tabs, no control character (CR, LF, NUL, DEL)
# that would end or corrupt the request head the node client writes.
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\U0010ffff]{0,8192}")


def node_headers(node: HospitalNodeConfig) -> dict[str, str]:
    """The credentials a node's server requires, read from the files its config names (the
    operator mounts them from the HospitalNode's Secret). ValueError naming the node and the
    file (never the content) when a file is missing or malformed: the config is then not
    applied. Sent only to this node, on every call and probe; never logged."""
    out: dict[str, str] = {}
    auth = node.auth
    if auth.headers_file:
        try:
            data = orjson.loads(Path(auth.headers_file).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise ValueError(
                f"nodes[{node.id}].auth.headers_file {auth.headers_file!r}: cannot read a JSON object "
                f"({type(exc).__name__})"
            ) from None
        if not isinstance(data, dict):
            raise ValueError(f"nodes[{node.id}].auth.headers_file: must be a JSON object of header: value")
        for name, value in data.items():
            low = name.lower()
            valid = isinstance(value, str) and _HEADER_VALUE.fullmatch(value) is not None
            if not _HEADER_NAME.fullmatch(name) or not valid:
                raise ValueError(f"nodes[{node.id}].auth.headers_file: header {name!r} is not a valid header")
            if low in _RESERVED_HEADERS or low.startswith("x-fdp-"):
                raise ValueError(f"nodes[{node.id}].auth.headers_file: header {name!r} is set by the router")
            out[name] = value
    if auth.api_key_file:
        try:
            key = Path(auth.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"nodes[{node.id}].auth.api_key_file {auth.api_key_file!r}: "
                f"cannot read ({type(exc).__name__})"
            ) from None
        if not key or any(c.isspace() for c in key) or not key.isprintable():
            raise ValueError(f"nodes[{node.id}].auth.api_key_file: must hold one token (no whitespace)")
        if any(k.lower() == "authorization" for k in out):
            raise ValueError(
                f"nodes[{node.id}].auth: api_key_file and an Authorization header in headers_file both set"
            )
        out["Authorization"] = f"Bearer {key}"
    return out


class BackendFailure(Exception):
    """One backend call failed. `timeout` says which status the client gets (504 vs 502);
    `retryable` says whether another node may be tried; `client_error` marks a node's 400/413/
    422 for the client's own input (the client's 400, never the node's fault); `code` is the
    node's error code when it sent a short machine-readable one (never its message: a node's
    error text may echo the prompt)."""

    def __init__(
        self,
        node_id: str,
        message: str,
        *,
        timeout: bool = False,
        retryable: bool = True,
        client_error: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(f"node {node_id}: {message}")
        self.node_id = node_id
        self.timeout = timeout
        self.retryable = retryable
        self.client_error = client_error
        self.code = code


# A node's answer to input the client chose: the client's 400, nothing charged, no ejection.
_CLIENT_ERROR_STATUSES = frozenset({400, 413, 422})
# What a node's transport or answer can raise: a node failure (counted towards ejection).
_NODE_ERRORS = (
    TimeoutError,
    aiohttp.ClientError,
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AttributeError,
)
_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class NodeReply:
    """A node's completion and the privacy spend it reported (None: it reported nothing)."""

    data: dict[str, Any]
    report: PrivacyReport | None

    @property
    def text(self) -> str:
        return str(self.data["choices"][0]["message"]["content"])


def _check_completion(data: Any) -> dict[str, Any]:
    """A completion the router can release: a JSON object whose first choice has text."""
    content = data["choices"][0]["message"]["content"]
    if not isinstance(content, str):
        raise TypeError("choices[0].message.content is not a string")
    return data  # type: ignore[no-any-return]


def _error_code(body: bytes) -> str | None:
    """The node's `error.code` if it is a short token; anything else is dropped unread."""
    try:
        err = orjson.loads(body).get("error")
        code = err.get("code") if isinstance(err, dict) else None
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return code if isinstance(code, str) and _CODE.fullmatch(code) else None


def ssl_context_for(tls: NodeTLS) -> ssl.SSLContext:
    """Client-side TLS towards one node: verify with its CA, present our client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.client_cert_file:
        ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    return ctx


# --- the node client: keep-alive HTTP/1.1 on asyncio protocols ----------------------------------
#
# The node call was the largest share of the router's CPU per request (aiohttp's ClientSession:
# ~15 % of the event loop's samples at concurrency 16, three times what this client costs for
# the same call). One POST per connection at a time, connections pooled per (host, port, TLS
# context, server name) as aiohttp's connector keys them, at most `per_host_connections` in use
# per pool (more wait, first come first served), idle ones reused for up to
# `_KEEPALIVE_SECONDS` (aiohttp's default). Answers are parsed by llhttp (httptools, the parser
# Node.js uses; strict: no obs-fold, no bare LF, no Content-Length with Transfer-Encoding, no
# duplicate or signed lengths): status line, headers, framing by Content-Length, chunked
# transfer coding or the end of the connection. ``Accept-Encoding: identity`` (a gzip or
# deflate answer is still decoded). Redirects are not followed: a 3xx is the node refusing the
# request (it would otherwise send the prompt and the privacy parameters to another address).
# Health probes still use aiohttp's session.

_KEEPALIVE_SECONDS = 15.0
_MAX_HEAD = 65_536  # a response's status line and headers; also framing bytes in a row
_HIGH_WATER = 262_144  # unread bytes buffered before reading from the node pauses
_USER_AGENT = f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp.__version__}"


_SWEEP_SECONDS = 0.05


class _ReadDeadlines:
    """The per-read timeouts of one event loop's node connections:
    one sweep timer every `_SWEEP_SECONDS` while any read waits (instead of a timer armed and
    cancelled on every wait), so a read times out between its limit and `_SWEEP_SECONDS` after it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[asyncio.Future[None], float] = {}
        self._armed = False

    def add(self, fut: asyncio.Future[None], at: float) -> None:
        """Fail `fut` with TimeoutError once the loop's clock passes `at`."""
        self.waiting[fut] = at
        if not self._armed:
            self._armed = True
            self.loop.call_later(_SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for fut, deadline in list(self.waiting.items()):
            if deadline <= now:
                del self.waiting[fut]
                if not fut.done():
                    fut.set_exception(TimeoutError("no data from the node within its time limit"))
        if self.waiting:
            self.loop.call_later(_SWEEP_SECONDS, self._sweep)
        else:
            self._armed = False


_DEADLINES: dict[asyncio.AbstractEventLoop, _ReadDeadlines] = {}


def _deadlines(loop: asyncio.AbstractEventLoop) -> _ReadDeadlines:
    got = _DEADLINES.get(loop)
    if got is None:
        for old in [lp for lp in _DEADLINES if lp.is_closed()]:
            del _DEADLINES[old]
        got = _DEADLINES[loop] = _ReadDeadlines(loop)
    return got


class _Refused(Exception):
    """Raised in a parser callback to stop llhttp; the reason is in `_Conn.error`."""


class _Conn(asyncio.Protocol):
    """One connection to a node, and the answer being received on it.

    The answer is parsed as it arrives by llhttp (httptools.HttpResponseParser, one per
    call): status line, headers, framing by Content-Length, chunked transfer coding (chunk
    extensions and trailers) or the end of the connection, 1xx answers skipped. This class
    only keeps what the parser's callbacks hand it: the final answer's status and headers,
    the body pieces not yet read, whether the answer is complete, and the first error."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.eof = False  # the node closed its side (or the connection was lost)
        self.idle_since = 0.0
        # Bytes no answer accounts for (after a complete answer, or while no call is on this
        # connection): it is never reused.
        self.dirty = False
        self._parser: httptools.HttpResponseParser | None = None
        self.status = 0
        self.headers: CIMultiDict[str] | None = None  # the final answer's, once in
        self.keep_alive = False
        self.framed = False  # Content-Length or chunked: the end of the connection is a truncation
        self.complete = False
        self.error: ValueError | None = None
        self.body: list[bytes] = []  # received, not yet read
        self._pending = 0  # their length
        self._pairs: list[tuple[str, str]] = []
        self._fields = 0  # bytes of header and trailer fields of this answer
        self._run = 0  # bytes fed since the last body byte (head, framing, trailers)
        self._got_body = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._deadlines = _deadlines(loop)

    def begin(self) -> None:
        """A new call on this connection: a new parser and a clean answer state."""
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = None
        self.keep_alive = self.framed = self.complete = False
        self.error = None
        self.body = []
        self._pending = self._fields = self._run = 0
        self._pairs = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self.complete or self.error is not None:
            self._discard()
            return
        self._got_body = False
        try:
            if len(data) > 1:
                # All but the last byte first: an answer complete before the last byte has
                # bytes after it (llhttp would silently skip CR/LF between messages).
                view = memoryview(data)
                parser.feed_data(view[:-1])
                if self.complete:
                    self._discard()
                else:
                    parser.feed_data(view[-1:])
            else:
                parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:
                self._discard()  # what follows the answer: never parsed, never reused
            elif self.error is None:
                self.error = ValueError(f"the node's answer is malformed ({exc})")
        if not self.complete and self.error is None:
            if self._got_body:
                self._run = 0
            else:
                self._run += len(data)
                if self._run > _MAX_HEAD:
                    self.error = ValueError(
                        "the node's response head is too large"
                        if self.headers is None
                        else "the node's answer has too many bytes of framing between body bytes"
                    )
        if self._pending > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _discard(self) -> None:
        self.dirty = True
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()  # nothing more is read from it

    # httptools' callbacks (llhttp calls them while `feed_data` runs).

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Refused  # a second answer: stop parsing (the connection is not reused)
        self._pairs = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += len(name) + len(value) + 4
        if self._fields > _MAX_HEAD:
            self.error = ValueError("the node's response head is too large")
            raise _Refused
        if self.headers is None:  # trailers are not kept (aiohttp did not keep them either)
            self._pairs.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                self.error = ValueError("the node switched protocols")
                raise _Refused
            return  # an interim answer: llhttp ends it at its head, the final one follows
        if parser.get_http_version() not in ("1.1", "1.0"):
            self.error = ValueError("the node's status line is malformed")
            raise _Refused
        headers: CIMultiDict[str] = CIMultiDict(self._pairs)
        codings = headers.getall("Transfer-Encoding", None)
        if codings is not None:
            if "Content-Length" in headers:  # llhttp refuses it too
                self.error = ValueError("the node's answer has both Transfer-Encoding and Content-Length")
                raise _Refused
            if ",".join(codings).strip().lower() != "chunked":
                # Only chunked: a transfer coding on top (gzip, chunked) would pass undecoded.
                self.error = ValueError("the node's answer has a transfer coding other than chunked")
                raise _Refused
        self.framed = codings is not None or "Content-Length" in headers
        self.keep_alive = parser.get_http_version() == "1.1" and parser.should_keep_alive()
        self.status = status
        self.headers = headers

    def on_body(self, body: bytes) -> None:
        if self.headers is None:
            self.error = ValueError("the node's interim (1xx) answer has a body")
            raise _Refused
        self.body.append(body)
        self._pending += len(body)
        self._got_body = True

    def on_message_complete(self) -> None:
        if self.headers is not None:
            self.complete = True

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake()
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def take_body(self) -> bytes:
        """The body pieces received and not yet read, joined (b"" if none)."""
        pieces = self.body
        if not pieces:
            return b""
        piece = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        pieces.clear()
        self._pending = 0
        return piece

    async def more(self, read_timeout: float | None) -> None:
        """Until more bytes arrived or the node closed the connection; TimeoutError after
        `read_timeout` seconds without either (the per-read limit). A stream's total limit is
        the relay's (handlers.py): it cancels this wait."""
        if self.eof:
            raise aiohttp.ServerDisconnectedError()
        at = self.loop.time() + read_timeout if read_timeout else None
        if self._paused and self.transport is not None and not self.dirty:
            self._paused = False
            self.transport.resume_reading()
        fut = self.loop.create_future()
        self._waiter = fut
        if at is None:
            try:
                await fut
            finally:
                self._waiter = None
            return
        deadlines = self._deadlines
        deadlines.add(fut, at)
        try:
            await fut
        finally:
            self._waiter = None
            deadlines.waiting.pop(fut, None)

    def reusable(self, now: float) -> bool:
        return not self.eof and not self.dirty and now - self.idle_since <= _KEEPALIVE_SECONDS

    def close(self) -> None:
        self.eof = True
        if self.transport is not None:
            self.transport.close()


class _HostPool:
    """The connections of one (host, port, TLS context, server name)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.idle: list[_Conn] = []
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.closed = False

    async def acquire(self, connect: Callable[[], Awaitable[_Conn]]) -> _Conn:
        if self.in_use >= self.limit or self.waiters:
            fut = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._free_slot()  # granted at the last moment: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        self.waiters.remove(fut)
                raise
        else:
            self.in_use += 1
        try:
            if self.idle:
                now = asyncio.get_running_loop().time()
                while self.idle:
                    conn = self.idle.pop()
                    if conn.reusable(now):
                        return conn
                    conn.close()
            return await connect()
        except BaseException:
            self._free_slot()
            raise

    def release(self, conn: _Conn, reuse: bool) -> None:
        if reuse and not self.closed and not conn.eof:
            conn.idle_since = conn.loop.time()
            self.idle.append(conn)
        else:
            conn.close()
        self._free_slot()

    def _free_slot(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter
                return
        self.in_use -= 1

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how one node is called, built when the config is applied."""

    key: tuple[str, int, ssl.SSLContext | None, str | None]  # the pool: host, port, TLS context, server name
    host: str
    port: int
    ssl: ssl.SSLContext | None
    server_hostname: str | None
    head: bytes  # request line and the headers every call to the node carries
    connect_timeout: float | None
    read_timeout: float | None
    stream_timeout: float  # a streamed body's whole read, from its first read


def _target(
    cfg: HospitalNodeConfig,
    ctx: ssl.SSLContext | None,
    credentials: dict[str, str],
    timeout: aiohttp.ClientTimeout,
    stream_timeout: float,
) -> _Target:
    url = URL(f"{cfg.endpoint}{cfg.api_base_path}/chat/completions")
    if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
        raise ValueError(f"nodes[{cfg.id}].endpoint: not an http(s) URL")
    host = url.raw_host
    default_port = 443 if url.scheme == "https" else 80
    host_header = host if ":" not in host else f"[{host}]"
    if url.port != default_port:
        host_header += f":{url.port}"
    server_name = cfg.tls.server_name if ctx is not None and cfg.tls.server_name else None
    own = {k.lower() for k in credentials}  # a node's credentials may replace these defaults
    defaults = {"Accept": "*/*", "Accept-Encoding": "identity", "User-Agent": _USER_AGENT}
    headers = {
        "Host": host_header,
        **{k: v for k, v in defaults.items() if k.lower() not in own},
        **credentials,
        "Content-Type": "application/json",
    }
    head = f"POST {url.raw_path_qs} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return _Target(
        key=(host, url.port, ctx, server_name),
        host=host,
        port=url.port,
        ssl=ctx,
        server_hostname=server_name,
        head=head.encode(),
        connect_timeout=timeout.sock_connect,
        read_timeout=timeout.sock_read,
        stream_timeout=stream_timeout,
    )


_MAX_MEMBERS = 1024
_WINDOW_MIN = 64
_WINDOW_MAX = 65_536


class _Decoder:
    """A gzip or deflate body, decoded as it arrives: every gzip member (RFC 1952 allows
    several, e.g. a server that flushes one per write), a deflate body with or without its
    zlib wrapper. ValueError for a corrupt or truncated one."""

    def __init__(self, deflate: bool) -> None:
        self._deflate = deflate
        self._z: Any = None
        self._left = MAX_ANSWER_BYTES  # decoded bytes still allowed (zlib's max_length: never in one step)

    def feed(self, raw: bytes) -> bytes:
        # As aiohttp's decoder: input in windows that double while a member lasts (what is
        # handed to zlib stays proportional to the body, however many tiny members it has),
        # at most _MAX_MEMBERS new members per piece.
        out = []
        view = memoryview(raw)
        pos = 0
        window = _WINDOW_MIN
        members = 0
        try:
            while pos < len(view):
                if self._z is None or self._z.eof:
                    members += 1
                    if members > _MAX_MEMBERS:
                        raise ValueError(f"the node's compressed answer has over {_MAX_MEMBERS} members")
                    # A raw deflate stream has no zlib header (CMF low nibble 8: deflate).
                    raw_deflate = self._deflate and view[pos] & 0x0F != 8
                    self._z = zlib.decompressobj(-zlib.MAX_WBITS if raw_deflate else zlib.MAX_WBITS | 32)
                    window = _WINDOW_MIN
                end = min(pos + window, len(view))
                piece = self._z.decompress(view[pos:end], self._left + 1)
                if len(piece) > self._left:
                    raise ValueError(
                        f"the node's compressed answer expands to over {MAX_ANSWER_BYTES // 2**20} MiB"
                    )
                self._left -= len(piece)
                out.append(piece)
                if self._z.eof:
                    pos = end - len(self._z.unused_data)
                else:
                    pos = end
                    window = min(window * 2, _WINDOW_MAX)
        except zlib.error as exc:
            raise ValueError(f"the node's compressed answer is corrupt: {exc}") from None
        return b"".join(out)

    def finish(self) -> bytes:
        if self._z is None:
            return b""
        tail: bytes = self._z.flush()
        if not self._z.eof:
            raise ValueError("the node's compressed answer is truncated")
        return tail


class NodeResponse:
    """A node's answer whose status line and headers are in; the body is read on demand
    (`read`, or `next_piece` as it arrives). `release` always: it returns the connection to its pool once the
    whole body was read (and nothing followed it), and closes it otherwise."""

    def __init__(self, pool: _HostPool, conn: _Conn, read_timeout: float | None) -> None:
        self._pool: _HostPool | None = None  # set last: `__del__` must not release for a failed init
        headers = conn.headers
        assert headers is not None
        self.status = conn.status
        self.headers = CIMultiDictProxy(headers)
        self._conn = conn
        self._timeout = read_timeout
        self._done = False
        coding = headers.get("Content-Encoding", "identity").strip().lower()
        self._decoder: _Decoder | None = None
        if coding in ("gzip", "x-gzip", "deflate"):
            self._decoder = _Decoder(coding == "deflate")
        elif coding not in ("identity", ""):
            raise ValueError(f"the node's answer has content coding {coding!r}")
        self._pool = pool

    async def read(self) -> bytes:
        """The whole decoded body; ValueError once it passes MAX_ANSWER_BYTES (checked as it
        arrives, so a node that never stops sending holds at most that much)."""
        pieces: list[bytes] = []
        size = 0
        while True:
            piece = await self.next_piece()
            if not piece:
                return b"".join(pieces)
            size += len(piece)
            if size > MAX_ANSWER_BYTES:
                raise ValueError(f"the node's answer is over {MAX_ANSWER_BYTES // 2**20} MiB")
            pieces.append(piece)

    async def next_piece(self) -> bytes:
        """The next decoded piece of the body (what is there, after waiting if nothing is);
        b"" at its end (and on every call after it)."""
        while True:
            raw = await self._raw()
            decoder = self._decoder
            if decoder is None:
                return raw
            if not raw:
                self._decoder = None
                return decoder.finish()
            out = decoder.feed(raw)
            if out:
                return out

    async def _raw(self) -> bytes:
        """Every body piece received and not yet read, in one (fewer, larger writes
        downstream); b"" at the end of the body."""
        conn = self._conn
        while not self._done:
            if conn.body:
                return conn.take_body()
            if conn.complete:
                self._done = True
                break
            if conn.error is not None:
                raise conn.error
            if conn.eof:
                if conn.framed:
                    raise aiohttp.ClientPayloadError("Response payload is not completed")
                self._done = True  # delimited by the end of the connection
                break
            await conn.more(self._timeout)
        return b""

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            conn = self._conn
            pool.release(conn, reuse=conn.complete and conn.keep_alive and not conn.dirty)

    def __del__(self) -> None:
        # A response dropped unreleased (a bug elsewhere) must not keep its pool slot
        # forever (aiohttp's ClientResponse released its connection on collection too). The
        # collector may run this on any thread: the pool and its waiters belong to the
        # connection's event loop, so the release is handed to that loop.
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):  # a closed loop: nothing left to give back to
                self._conn.loop.call_soon_threadsafe(pool.release, self._conn, False)


async def _read_head(conn: _Conn, read_timeout: float | None) -> None:
    """Until the node's final answer's status line and headers are in (1xx skipped)."""
    while conn.headers is None:
        if conn.error is not None:
            raise conn.error
        await conn.more(read_timeout)
    if conn.error is not None and not conn.body and not conn.complete:
        raise conn.error


@dataclass
class NodeState:
    cfg: HospitalNodeConfig
    ssl: ssl.SSLContext | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # credentials: never logged
    timeout: aiohttp.ClientTimeout | None = None
    target: _Target | None = field(default=None, repr=False)  # the node client's (credentials inside)
    in_flight: int = 0
    ewma_latency_s: float = 0.0
    consecutive_failures: int = 0
    ejected_until: float = 0.0
    probe_failures: int = 0
    probe_healthy: bool = True
    last_probe_time: float | None = None
    last_probe_latency_s: float | None = None
    requests: int = 0
    failures: int = 0
    probe_task: asyncio.Task[None] | None = field(default=None, repr=False)

    def healthy(self, now: float) -> bool:
        return self.probe_healthy and now >= self.ejected_until

    def view(self, now: float) -> NodeView:
        c = self.cfg
        return NodeView(
            id=c.id,
            hospital=c.hospital,
            weight=c.weight,
            departments=c.departments,
            in_flight=self.in_flight,
            ewma_latency_s=self.ewma_latency_s,
            healthy=self.healthy(now),
            max_concurrent=c.max_concurrent_requests,
            specializations=c.specializations,
        )

    def describe(self, now: float) -> dict[str, Any]:
        c = self.cfg
        return {
            "id": c.id,
            "hospital": c.hospital,
            "endpoint": c.endpoint,
            "model": c.model,
            "departments": list(c.departments),
            "weight": c.weight,
            "healthy": self.healthy(now),
            "probe_healthy": self.probe_healthy,
            "ejected": now < self.ejected_until,
            "in_flight": self.in_flight,
            "ewma_latency_ms": round(self.ewma_latency_s * 1000, 3),
            "consecutive_failures": self.consecutive_failures,
            "requests": self.requests,
            "failures": self.failures,
            "last_probe_latency_ms": None
            if self.last_probe_latency_s is None
            else round(self.last_probe_latency_s * 1000, 3),
        }


class BackendPool:
    def __init__(self, routing: RoutingConfig, metrics: Metrics) -> None:
        self.routing = routing
        self._timeout = _call_timeout(routing)
        self.metrics = metrics
        self.nodes: dict[str, NodeState] = {}
        self.session: aiohttp.ClientSession | None = None  # health probes
        self._pools: dict[tuple[str, int, ssl.SSLContext | None, str | None], _HostPool] = {}
        self._per_host = routing.per_host_connections
        self._probing = False

    async def start(self) -> None:
        self._per_host = self.routing.per_host_connections
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self._per_host)
        self.session = aiohttp.ClientSession(connector=connector, raise_for_status=False)

    async def close(self) -> None:
        self._probing = False
        for st in self.nodes.values():
            if st.probe_task is not None:
                st.probe_task.cancel()
        tasks = [st.probe_task for st in self.nodes.values() if st.probe_task is not None]
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        if self.session is not None:
            await self.session.close()

    def configure(self, nodes: tuple[HospitalNodeConfig, ...], routing: RoutingConfig) -> None:
        """Apply a (re)loaded node list: keep the state of nodes that stay, drop the others."""
        wanted = {n.id: n for n in nodes}
        # Build every TLS context and read every credential first: a bad certificate path or
        # credential file fails here, before any change.
        contexts = {
            node_id: ssl_context_for(cfg.tls) if cfg.endpoint.startswith("https://") else None
            for node_id, cfg in wanted.items()
        }
        credentials = {node_id: node_headers(cfg) for node_id, cfg in wanted.items()}
        timeouts = {node_id: _call_timeout(routing, cfg) for node_id, cfg in wanted.items()}
        targets = {
            node_id: _target(
                cfg,
                contexts[node_id],
                credentials[node_id],
                timeouts[node_id],
                cfg.stream_timeout_seconds or routing.stream_timeout_seconds,
            )
            for node_id, cfg in wanted.items()
        }
        self.routing = routing
        self._timeout = _call_timeout(routing)
        for node_id in list(self.nodes):
            if node_id not in wanted:
                gone = self.nodes.pop(node_id)
                if gone.probe_task is not None:
                    gone.probe_task.cancel()
                for gauge in (self.metrics.node_healthy, self.metrics.node_in_flight):
                    self.metrics.remove(gauge, node_id)
        for node_id, cfg in wanted.items():
            ctx = contexts[node_id]
            st = self.nodes.get(node_id)
            if st is None:
                st = NodeState(cfg=cfg, ssl=ctx)
                self.nodes[node_id] = st
            else:
                st.cfg, st.ssl = cfg, ctx
            st.headers = credentials[node_id]
            st.timeout = timeouts[node_id]
            st.target = targets[node_id]
            self.metrics.node_healthy.labels(node_id).set(1 if st.healthy(time.monotonic()) else 0)
            if self._probing and st.probe_task is None:
                st.probe_task = asyncio.create_task(self._probe_loop(node_id), name=f"probe-{node_id}")
        keys = {t.key for t in targets.values()}
        for key in [k for k in self._pools if k not in keys]:
            self._pools.pop(key).close()  # connections in use close when released

    def start_probes(self) -> None:
        self._probing = True
        for node_id, st in self.nodes.items():
            if st.probe_task is None:
                st.probe_task = asyncio.create_task(self._probe_loop(node_id), name=f"probe-{node_id}")

    def views(self) -> list[NodeView]:
        now = time.monotonic()
        return [st.view(now) for st in self.nodes.values()]

    def describe(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [st.describe(now) for st in self.nodes.values()]

    def _request_kwargs(self, st: NodeState) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if st.ssl is not None:
            kw["ssl"] = st.ssl
            if st.cfg.tls.server_name:
                kw["server_hostname"] = st.cfg.tls.server_name
        return kw

    async def _send(self, st: NodeState, payload: dict[str, Any], privacy: SentPrivacy) -> NodeResponse:
        """POST one call and return at the node's status and headers (the body unread)."""
        body = {**payload, "model": st.cfg.model, "fdp_privacy": privacy.body()}
        if st.cfg.privacy.data_class == DataClass.PHI:
            # A client-chosen seed must never reach a node whose answer comes from patient data:
            # a DP wrapper that seeded its noise from the request would lose its guarantee.
            body.pop("seed", None)
        data = orjson.dumps(body)
        t = st.target
        assert t is not None
        head = "".join([f"{k}: {v}\r\n" for k, v in privacy.headers().items()])
        pool = self._pools.get(t.key)
        if pool is None:
            pool = self._pools[t.key] = _HostPool(self._per_host)
        conn = await pool.acquire(lambda: self._connect(t))
        try:
            assert conn.transport is not None
            conn.begin()
            conn.transport.write(
                b"".join([t.head, head.encode(), b"Content-Length: %d\r\n\r\n" % len(data), data])
            )
            await _read_head(conn, t.read_timeout)
            return NodeResponse(pool, conn, t.read_timeout)
        except BaseException:
            pool.release(conn, reuse=False)
            raise

    @staticmethod
    async def _connect(t: _Target) -> _Conn:
        loop = asyncio.get_running_loop()
        conn = _Conn(loop)
        async with asyncio.timeout(t.connect_timeout):
            await loop.create_connection(
                lambda: conn, t.host, t.port, ssl=t.ssl, server_hostname=t.server_hostname
            )
        return conn

    async def _check_status(self, st: NodeState, resp: NodeResponse) -> None:
        """BackendFailure for a non-2xx answer. Only failures that are the node's (5xx, resets,
        timeouts, unparseable answers) count towards ejection; a 4xx for the client's input
        never does, so no client can take a node out of rotation by sending bad requests."""
        node_id = st.cfg.id
        if resp.status >= 500:
            self._failed(st)
            raise BackendFailure(node_id, f"HTTP {resp.status}")
        if resp.status in _CLIENT_ERROR_STATUSES:
            code = _error_code(await resp.read())
            raise BackendFailure(
                node_id,
                f"HTTP {resp.status} (the node refused the request's input" + (f": {code})" if code else ")"),
                retryable=False,
                client_error=True,
                code=code,
            )
        if resp.status >= 300:
            # 401/403/404/429, 3xx...: not the client's input and not a node outage; try another
            # node, do not eject. Status only: the body may echo the prompt.
            raise BackendFailure(node_id, f"HTTP {resp.status} (request refused by the node)")

    def _begin(self, st: NodeState) -> float:
        st.in_flight += 1
        st.requests += 1
        self.metrics.child(self.metrics.node_in_flight, st.cfg.id).inc()
        return time.monotonic()

    def _end(self, st: NodeState) -> None:
        st.in_flight -= 1
        if self._current(st):
            self.metrics.child(self.metrics.node_in_flight, st.cfg.id).dec()

    def _current(self, st: NodeState) -> bool:
        """Whether `st` is still a configured node: one removed by a reload while a call to it
        was in flight has no metric series left, and its call's end must not recreate them
        (an in-flight gauge at -1, or healthy 0 for a node that no longer exists)."""
        return self.nodes.get(st.cfg.id) is st

    def _answered(self, st: NodeState, start: float) -> None:
        elapsed = time.monotonic() - start
        st.ewma_latency_s = (
            elapsed if st.ewma_latency_s == 0 else (1 - EWMA_ALPHA) * st.ewma_latency_s + EWMA_ALPHA * elapsed
        )
        st.consecutive_failures = 0
        if self._current(st):
            self.metrics.child(self.metrics.node_latency, st.cfg.id).observe(elapsed)

    def _node_failure(self, st: NodeState, exc: BaseException) -> BackendFailure:
        """Count a transport or parse failure against the node and describe it."""
        self._failed(st)
        if isinstance(exc, TimeoutError):
            return BackendFailure(st.cfg.id, "timed out", timeout=True)
        return BackendFailure(st.cfg.id, f"{type(exc).__name__}: {exc}")

    async def chat(self, node_id: str, payload: dict[str, Any], privacy: SentPrivacy) -> NodeReply:
        """POST the OpenAI chat payload to one node with the privacy parameters the router
        reserved (body ``fdp_privacy`` and ``X-FDP-Privacy-*`` headers, the wire contract in
        docs/privacy.md); the parsed completion and the spend it reported, or BackendFailure."""
        st = self.nodes.get(node_id)
        if st is None or self.session is None:
            raise BackendFailure(node_id, "node is not configured")
        start = self._begin(st)
        try:
            resp = await self._send(st, payload, privacy)
            try:
                await self._check_status(st, resp)
                data = _check_completion(orjson.loads(await resp.read()))
                report = parse_report(resp.headers, data.get("privacy"))
            finally:
                resp.release()
        except BackendFailure:
            raise
        except _NODE_ERRORS as exc:
            raise self._node_failure(st, exc) from None
        finally:
            self._end(st)
        self._answered(st, start)
        return NodeReply(data, report)

    async def open_stream(self, node_id: str, payload: dict[str, Any], privacy: SentPrivacy) -> NodeStream:
        """Start a streamed call (``payload`` has ``stream: true``): returns once the node's
        status and headers are in, with the privacy report of its headers, before any of the
        body is read. A node that answers a whole JSON completion instead (it does not
        stream) is read whole, and its body's report counts too. BackendFailure as `chat`.
        The caller must `NodeStream.close` it."""
        st = self.nodes.get(node_id)
        if st is None or self.session is None:
            raise BackendFailure(node_id, "node is not configured")
        start = self._begin(st)
        resp: NodeResponse | None = None
        try:
            resp = await self._send(st, payload, privacy)
            await self._check_status(st, resp)
            ctype = resp.headers.get("Content-Type", "")
            if ctype.startswith("text/event-stream"):
                stream = NodeStream(self, st, resp, parse_report(resp.headers, None), None)
            else:
                data = _check_completion(orjson.loads(await resp.read()))
                stream = NodeStream(self, st, resp, parse_report(resp.headers, data.get("privacy")), data)
        except BaseException as exc:
            if resp is not None:
                resp.release()
            self._end(st)
            if isinstance(exc, _NODE_ERRORS):
                raise self._node_failure(st, exc) from None
            raise
        self._answered(st, start)
        return stream

    def _failed(self, st: NodeState) -> None:
        st.failures += 1
        st.consecutive_failures += 1
        current = self._current(st)
        if current:
            self.metrics.node_failures.labels(st.cfg.id).inc()
        if st.consecutive_failures >= self.routing.outlier_consecutive_failures:
            st.ejected_until = time.monotonic() + self.routing.outlier_ejection_seconds
            st.consecutive_failures = 0
            if current:
                self.metrics.node_healthy.labels(st.cfg.id).set(0)
            log.warning(
                "node ejected", extra={"node": st.cfg.id, "seconds": self.routing.outlier_ejection_seconds}
            )

    async def probe_once(self, node_id: str) -> bool:
        st = self.nodes[node_id]
        hc = st.cfg.health_check
        assert self.session is not None
        start = time.monotonic()
        ok = False
        try:
            async with self.session.request(
                hc.method,
                f"{st.cfg.endpoint}{hc.path}",
                headers=st.headers,
                timeout=aiohttp.ClientTimeout(total=hc.timeout_seconds),
                allow_redirects=False,
                **self._request_kwargs(st),
            ) as resp:
                ok = resp.status < 400
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        st.last_probe_time = time.time()
        st.last_probe_latency_s = time.monotonic() - start
        if ok:
            st.probe_failures = 0
            st.probe_healthy = True
        else:
            st.probe_failures += 1
            if st.probe_failures >= hc.failure_threshold:
                st.probe_healthy = False
        self.metrics.node_healthy.labels(node_id).set(1 if st.healthy(time.monotonic()) else 0)
        return ok

    async def _probe_loop(self, node_id: str) -> None:
        while self._probing and node_id in self.nodes:
            try:
                await self.probe_once(node_id)
            except Exception:  # a probe bug must not kill the loop
                log.exception("probe failed", extra={"node": node_id})
            st = self.nodes.get(node_id)
            if st is None:
                return
            await asyncio.sleep(st.cfg.health_check.interval_seconds)


class NodeStream:
    """A streamed answer whose status and headers are in (`report` parsed from them). `data`
    is the whole completion when the node answered JSON instead of a stream. Iterate
    `chunks()` for the raw body; `close()` always (it ends the node's in-flight count)."""

    def __init__(
        self,
        pool: BackendPool,
        st: NodeState,
        resp: NodeResponse,
        report: PrivacyReport | None,
        data: dict[str, Any] | None,
    ) -> None:
        self.node_id = st.cfg.id
        self.report = report
        self.data = data
        self.reported_in_headers = EPSILON_HEADER in resp.headers
        self._pool = pool
        self._st = st
        self._resp = resp
        self._closed = False
        assert st.target is not None
        self.limit = st.target.stream_timeout
        self._until: float | None = None  # set at the first read of the body (or `deadline()`)

    def deadline(self) -> float:
        """When the stream's total limit passes (the loop's clock); its clock starts now if
        the body has not been read yet. The relay bounds its writes to the client by it too."""
        if self._until is None:
            self._until = asyncio.get_running_loop().time() + self.limit
        return self._until

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. BackendFailure (counted against the node) when the node
        breaks off or stalls longer than its read timeout; StreamTimedOut (not counted: a
        long answer is not an outage) when a piece is asked for after the node's stream
        timeout passed, however steadily it keeps sending. A wait that outlasts the limit is
        cancelled by the relay, which bounds its writes to the client by the same deadline."""
        return self

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        # An iterator object, not an async generator: a relay that stops at the node's
        # [DONE] drops an async generator unfinished, and the event loop then finalizes it
        # (a self-pipe wake-up and an `aclose` task, for each generator of the chain).
        if self.data is not None:
            raise StopAsyncIteration
        loop = asyncio.get_running_loop()
        until = self.deadline()
        if loop.time() >= until:
            raise StreamTimedOut(self.limit)
        try:
            piece = await self._resp.next_piece()
        except _NODE_ERRORS as exc:
            if isinstance(exc, TimeoutError) and loop.time() >= until:
                raise StreamTimedOut(self.limit) from None
            raise self._pool._node_failure(self._st, exc) from None
        if not piece:
            raise StopAsyncIteration
        return piece

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._resp.release()
        self._pool._end(self._st)
