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
import contextlib
import logging
import re
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

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
            if not _HEADER_NAME.match(name) or not isinstance(value, str) or "\n" in value or "\r" in value:
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
    return code if isinstance(code, str) and _CODE.match(code) else None


def ssl_context_for(tls: NodeTLS) -> ssl.SSLContext:
    """Client-side TLS towards one node: verify with its CA, present our client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca_file)
    if tls.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.client_cert_file:
        ctx.load_cert_chain(tls.client_cert_file, tls.client_key_file)
    return ctx


@dataclass
class NodeState:
    cfg: HospitalNodeConfig
    ssl: ssl.SSLContext | None = None
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # credentials: never logged
    timeout: aiohttp.ClientTimeout | None = None
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
        self.session: aiohttp.ClientSession | None = None
        self._probing = False

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.routing.per_host_connections)
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
            st.timeout = _call_timeout(routing, cfg)
            self.metrics.node_healthy.labels(node_id).set(1 if st.healthy(time.monotonic()) else 0)
            if self._probing and st.probe_task is None:
                st.probe_task = asyncio.create_task(self._probe_loop(node_id), name=f"probe-{node_id}")

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

    def _post(self, st: NodeState, payload: dict[str, Any], privacy: SentPrivacy) -> Any:
        """The POST of one call (an aiohttp request context manager, not yet sent)."""
        assert self.session is not None
        body = {**payload, "model": st.cfg.model, "fdp_privacy": privacy.body()}
        if st.cfg.privacy.data_class == DataClass.PHI:
            # A client-chosen seed must never reach a node whose answer comes from patient data:
            # a DP wrapper that seeded its noise from the request would lose its guarantee.
            body.pop("seed", None)
        return self.session.post(
            f"{st.cfg.endpoint}{st.cfg.api_base_path}/chat/completions",
            data=orjson.dumps(body),
            headers={**st.headers, **_JSON, **privacy.headers()},
            timeout=st.timeout or self._timeout,
            **self._request_kwargs(st),
        )

    async def _check_status(self, st: NodeState, resp: aiohttp.ClientResponse) -> None:
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
        if resp.status >= 400:
            # 401/403/404/429...: not the client's input and not a node outage; try another
            # node, do not eject. Status only: the body may echo the prompt.
            raise BackendFailure(node_id, f"HTTP {resp.status} (request refused by the node)")

    def _begin(self, st: NodeState) -> float:
        st.in_flight += 1
        st.requests += 1
        self.metrics.child(self.metrics.node_in_flight, st.cfg.id).inc()
        return time.monotonic()

    def _end(self, st: NodeState) -> None:
        st.in_flight -= 1
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
            async with self._post(st, payload, privacy) as resp:
                await self._check_status(st, resp)
                data = _check_completion(orjson.loads(await resp.read()))
                report = parse_report(resp.headers, data.get("privacy"))
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
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await self._post(st, payload, privacy)
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
        resp: aiohttp.ClientResponse,
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
            async for piece in self._resp.content.iter_any():
                yield piece
        except _NODE_ERRORS as exc:
            raise self._pool._node_failure(self._st, exc) from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._resp.release()
        self._pool._end(self._st)
