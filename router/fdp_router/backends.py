"""Hospital node backends: one pooled HTTP client, live node state, probes, ejection.

Owned by the app (``app.py`` creates it in a cleanup context); ``service.py`` calls
`BackendPool.chat` for each backend call and `views()` to feed the balancer.

- one shared ``aiohttp.ClientSession`` with a per-host connection limit;
- per node: an SSL context with the node's CA and client certificate (mTLS), optional
  server-name override; the node's credentials (``auth``: a bearer API key and/or extra
  headers, read from files when the config is applied, sent only to that node); its
  OpenAI-compatible base path (``api_base_path``, ``/v1`` by default); connect and read
  timeouts (the node's own, else ``routing``'s);
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
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from fdp_router.balancers import NodeView
from fdp_router.config import DataClass, HospitalNodeConfig, NodeTLS, RoutingConfig
from fdp_router.metrics import Metrics
from fdp_router.node_contract import EPSILON_HEADER, PrivacyReport, SentPrivacy, parse_report

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
# `_KEEPALIVE_SECONDS` (aiohttp's default). Bodies framed by Content-Length, chunked transfer
# coding or the end of the connection; ``Accept-Encoding: identity`` (a gzip or deflate answer
# is still decoded). Redirects are not followed: a 3xx is the node refusing the request (it
# would otherwise send the prompt and the privacy parameters to another address). Health
# probes still use aiohttp's session.

_KEEPALIVE_SECONDS = 15.0
_MAX_HEAD = 65_536  # a response's status line and headers
_MAX_CHUNK_LINE = 4_096
_HIGH_WATER = 262_144  # unread bytes buffered before reading from the node pauses
_HEX = re.compile(rb"^[0-9A-Fa-f]{1,15}$")
_TOKENS = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"^[0-9]{1,18}$")
_USER_AGENT = f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp.__version__}"


_SWEEP_SECONDS = 0.05


class _ReadDeadlines:
    """The per-read timeouts of one event loop's node connections: one sweep timer every
    `_SWEEP_SECONDS` while any read waits (instead of a timer armed and cancelled on every
    wait), so a read times out between its limit and `_SWEEP_SECONDS` after it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[asyncio.Future[None], float] = {}
        self._armed = False

    def add(self, fut: asyncio.Future[None], seconds: float) -> None:
        self.waiting[fut] = self.loop.time() + seconds
        if not self._armed:
            self._armed = True
            self.loop.call_later(_SWEEP_SECONDS, self._sweep)

    def _sweep(self) -> None:
        now = self.loop.time()
        for fut, deadline in list(self.waiting.items()):
            if deadline <= now:
                del self.waiting[fut]
                if not fut.done():
                    fut.set_exception(TimeoutError("no data from the node within its read timeout"))
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


class _Conn(asyncio.Protocol):
    """One connection to a node: the bytes received and not yet consumed, and its state."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False  # the node closed its side (or the connection was lost)
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._deadlines = _deadlines(loop)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

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

    async def more(self, read_timeout: float | None) -> None:
        """Until more bytes arrived or the node closed the connection; TimeoutError after
        `read_timeout` seconds without either (the per-read limit)."""
        if self.eof:
            raise aiohttp.ServerDisconnectedError()
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        fut = self.loop.create_future()
        self._waiter = fut
        if not read_timeout:
            try:
                await fut
            finally:
                self._waiter = None
            return
        deadlines = self._deadlines
        deadlines.add(fut, read_timeout)
        try:
            await fut
        finally:
            self._waiter = None
            deadlines.waiting.pop(fut, None)

    def reusable(self, now: float) -> bool:
        return not self.eof and not self.buf and now - self.idle_since <= _KEEPALIVE_SECONDS

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


def _target(
    cfg: HospitalNodeConfig,
    ctx: ssl.SSLContext | None,
    credentials: dict[str, str],
    timeout: aiohttp.ClientTimeout,
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
                out.append(self._z.decompress(view[pos:end]))
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
    (`read`, `iter_any`). `release` always: it returns the connection to its pool once the
    whole body was read, and closes it otherwise."""

    def __init__(
        self,
        pool: _HostPool,
        conn: _Conn,
        status: int,
        headers: CIMultiDictProxy[str],
        length: int | None,
        chunked: bool,
        keep_alive: bool,
        read_timeout: float | None,
    ) -> None:
        self._pool: _HostPool | None = None  # set last: `__del__` must not release for a failed init
        self.status = status
        self.headers = headers
        self._conn = conn
        self._left = length  # Content-Length framing: bytes still to come
        self._chunked = chunked
        self._chunk_left = 0  # chunked: bytes of the current chunk still to come
        self._keep_alive = keep_alive
        self._timeout = read_timeout
        self._done = length == 0
        coding = headers.get("Content-Encoding", "identity").strip().lower()
        self._decoder: _Decoder | None = None
        if coding in ("gzip", "x-gzip", "deflate"):
            self._decoder = _Decoder(coding == "deflate")
        elif coding not in ("identity", ""):
            raise ValueError(f"the node's answer has content coding {coding!r}")
        self._pool = pool

    async def read(self) -> bytes:
        pieces: list[bytes] = []
        while True:
            piece = await self._next()
            if not piece:
                return b"".join(pieces)
            pieces.append(piece)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """The body as it arrives (decoded), in pieces of whatever is there."""
        while True:
            piece = await self._next()
            if not piece:
                return
            yield piece

    async def _next(self) -> bytes:
        """The next decoded piece of the body (what is there, after waiting if nothing is);
        b"" at its end."""
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
        conn = self._conn
        while not self._done:
            if self._chunked:
                # Every chunk the buffer holds, in one piece (fewer, larger writes downstream).
                pieces: list[bytes] = []
                while not self._done:
                    piece = self._chunk_step()
                    if piece is None:
                        break
                    if piece:
                        pieces.append(piece)
                if pieces:
                    return b"".join(pieces)
                if self._done:
                    break
            elif self._left is not None:
                if conn.buf:
                    piece = bytes(conn.buf[: self._left])
                    del conn.buf[: len(piece)]
                    self._left -= len(piece)
                    self._done = self._left == 0
                    return piece
            elif conn.buf:  # to the end of the connection
                piece = bytes(conn.buf)
                conn.buf.clear()
                return piece
            elif conn.eof:
                self._done = True
                break
            if conn.eof:
                raise aiohttp.ClientPayloadError("Response payload is not completed")
            await conn.more(self._timeout)
        return b""

    def _chunk_step(self) -> bytes | None:
        """Decode what the buffer holds of a chunked body: data (b"" when only framing was
        consumed, call again), or None when more bytes are needed."""
        buf = self._conn.buf
        if self._chunk_left > 0:
            if not buf:
                return None
            piece = bytes(buf[: self._chunk_left])
            del buf[: len(piece)]
            self._chunk_left -= len(piece)
            if self._chunk_left == 0:
                self._chunk_left = -1  # its CRLF next
            return piece
        if self._chunk_left == -1:
            if len(buf) < 2:
                return None
            if buf[:2] != b"\r\n":
                raise ValueError("the node's chunked answer is malformed (no CRLF after a chunk)")
            del buf[:2]
            self._chunk_left = 0
            return b""
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > _MAX_CHUNK_LINE:
                raise ValueError("the node's chunked answer is malformed (chunk size line too long)")
            return None
        line = bytes(buf[:end])
        del buf[: end + 2]
        if self._chunk_left == -2:  # trailers, up to an empty line
            if not line:
                self._done = True
            return b""
        size = line.split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size):
            raise ValueError("the node's chunked answer is malformed (bad chunk size)")
        n = int(size, 16)
        self._chunk_left = n if n else -2
        return b""

    def release(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.release(self._conn, reuse=self._done and self._keep_alive)

    def __del__(self) -> None:
        # A response dropped unreleased (a bug elsewhere) must not keep its pool slot
        # forever (aiohttp's ClientResponse released its connection on collection too).
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._pool.release(self._conn, reuse=False)
            self._pool = None


async def _read_head(conn: _Conn, read_timeout: float | None) -> tuple[int, CIMultiDict[str], bool]:
    """(status, headers, HTTP/1.1 keep-alive) of the node's final answer (1xx skipped)."""
    while True:
        end = conn.buf.find(b"\r\n\r\n")
        while end < 0:
            if len(conn.buf) > _MAX_HEAD:
                raise ValueError("the node's response head is too large")
            await conn.more(read_timeout)
            end = conn.buf.find(b"\r\n\r\n")
        lines = bytes(conn.buf[:end]).decode("latin-1").split("\r\n")
        del conn.buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or rest[3:4] not in ("", " "):
            raise ValueError("the node's status line is malformed")
        status = int(code)
        pairs = [line.split(":", 1) for line in lines[1:]]
        for pair in pairs:
            if len(pair) != 2 or not pair[0]:
                raise ValueError("the node's response headers are malformed")
            pair[1] = pair[1].strip(" \t")
        # Every name a token (no spaces, no obs-fold continuation lines), checked in one go.
        if pairs and not _TOKENS.fullmatch("".join([pair[0] for pair in pairs])):
            raise ValueError("the node's response headers are malformed")
        headers: CIMultiDict[str] = CIMultiDict(pairs)  # type: ignore[arg-type]
        if 100 <= status < 200:
            if status == 101:
                raise ValueError("the node switched protocols")
            continue
        keep_alive = version == "HTTP/1.1" and "close" not in headers.get("Connection", "").lower()
        return status, headers, keep_alive


def _framing(status: int, headers: CIMultiDict[str]) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, delimited) of the body (RFC 9112 section 6.3)."""
    if status in (204, 304):
        return 0, False, True
    coding = headers.get("Transfer-Encoding")
    if coding is not None:
        if "Content-Length" in headers:
            raise ValueError("the node's answer has both Transfer-Encoding and Content-Length")
        if ",".join(headers.getall("Transfer-Encoding")).strip().lower() != "chunked":
            # Only chunked: a transfer coding on top (gzip, chunked) would pass undecoded.
            raise ValueError("the node's answer has a transfer coding other than chunked")
        return None, True, True
    lengths = headers.getall("Content-Length", ())
    if len(lengths) == 1 and lengths[0].isascii() and lengths[0].isdigit() and len(lengths[0]) <= 18:
        return int(lengths[0]), False, True
    if lengths:
        values = {v.strip() for v in ",".join(lengths).split(",")}
        if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
            raise ValueError("the node's Content-Length is malformed")
        return int(next(iter(values))), False, True
    return None, False, False


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
            node_id: _target(cfg, contexts[node_id], credentials[node_id], timeouts[node_id])
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
            conn.transport.write(
                b"".join([t.head, head.encode(), b"Content-Length: %d\r\n\r\n" % len(data), data])
            )
            status, headers, keep_alive = await _read_head(conn, t.read_timeout)
            length, chunked, delimited = _framing(status, headers)
            return NodeResponse(
                pool,
                conn,
                status,
                CIMultiDictProxy(headers),
                length,
                chunked,
                keep_alive and delimited,
                t.read_timeout,
            )
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
        if self.nodes.get(st.cfg.id) is st:  # a node removed by a reload mid-call has no series
            self.metrics.child(self.metrics.node_in_flight, st.cfg.id).dec()

    def _answered(self, st: NodeState, start: float) -> None:
        elapsed = time.monotonic() - start
        st.ewma_latency_s = (
            elapsed if st.ewma_latency_s == 0 else (1 - EWMA_ALPHA) * st.ewma_latency_s + EWMA_ALPHA * elapsed
        )
        st.consecutive_failures = 0
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
        self.metrics.node_failures.labels(st.cfg.id).inc()
        if st.consecutive_failures >= self.routing.outlier_consecutive_failures:
            st.ejected_until = time.monotonic() + self.routing.outlier_ejection_seconds
            st.consecutive_failures = 0
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

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives. BackendFailure (counted against the node) when the node
        breaks off or stalls longer than its read timeout."""
        if self.data is not None:
            return
        try:
            async for piece in self._resp.iter_any():
                yield piece
        except _NODE_ERRORS as exc:
            raise self._pool._node_failure(self._st, exc) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._resp.release()
        self._pool._end(self._st)
