"""Hospital node backends: one pooled HTTP client, live node state, probes, ejection.

Owned by the app (``app.py`` creates it in a cleanup context); ``service.py`` calls
`BackendPool.chat` for each backend call and `views()` to feed the balancer.

- one shared ``aiohttp.ClientSession`` with a per-host connection limit;
- per node: an SSL context with the node's CA and client certificate (mTLS), optional
  server-name override; connect and read timeouts from ``routing``;
- passive outlier ejection: ``outlier_consecutive_failures`` failures in a row take a node
  out for ``outlier_ejection_seconds``;
- active health probes (``health_check``): ``failure_threshold`` failed probes mark a node
  unhealthy until a probe succeeds.

Node state is keyed by node id and survives config reloads, so counters are not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from fdp_router.balancers import NodeView
from fdp_router.config import HospitalNodeConfig, NodeTLS, RoutingConfig
from fdp_router.metrics import Metrics
from fdp_router.node_contract import PrivacyReport, SentPrivacy, parse_report

log = logging.getLogger("fdp_router.backends")
EWMA_ALPHA = 0.2


_JSON = {"Content-Type": "application/json"}


def _call_timeout(routing: RoutingConfig) -> aiohttp.ClientTimeout:
    """Built once per routing config (not per request): no total, connect and per-read limits."""
    return aiohttp.ClientTimeout(
        total=None, sock_connect=routing.connect_timeout_seconds, sock_read=routing.read_timeout_seconds
    )


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
_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True, slots=True)
class NodeReply:
    """A node's completion and the privacy spend it reported (None: it reported nothing)."""

    data: dict[str, Any]
    report: PrivacyReport | None

    @property
    def text(self) -> str:
        return str(self.data["choices"][0]["message"]["content"])


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
        # Build every TLS context first: a bad certificate path fails here, before any change.
        contexts = {
            node_id: ssl_context_for(cfg.tls) if cfg.endpoint.startswith("https://") else None
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

    async def chat(self, node_id: str, payload: dict[str, Any], privacy: SentPrivacy) -> NodeReply:
        """POST the OpenAI chat payload to one node with the privacy parameters the router
        reserved (body ``fdp_privacy`` and ``X-FDP-Privacy-*`` headers, the wire contract in
        docs/privacy.md); the parsed completion and the spend it reported, or BackendFailure.

        Only failures that are the node's (5xx, resets, timeouts, unparseable answers) count
        towards ejection; a 4xx for the client's input never does, so no client can take a
        node out of rotation by sending bad requests."""
        st = self.nodes.get(node_id)
        if st is None or self.session is None:
            raise BackendFailure(node_id, "node is not configured")
        body = {**payload, "model": st.cfg.model, "fdp_privacy": privacy.body()}
        st.in_flight += 1
        st.requests += 1
        self.metrics.child(self.metrics.node_in_flight, node_id).inc()
        start = time.monotonic()
        try:
            async with self.session.post(
                f"{st.cfg.endpoint}/v1/chat/completions",
                data=orjson.dumps(body),
                headers={**_JSON, **privacy.headers()},
                timeout=self._timeout,
                **self._request_kwargs(st),
            ) as resp:
                if resp.status >= 500:
                    self._failed(st)
                    raise BackendFailure(node_id, f"HTTP {resp.status}")
                if resp.status in _CLIENT_ERROR_STATUSES:
                    code = _error_code(await resp.read())
                    raise BackendFailure(
                        node_id,
                        f"HTTP {resp.status} (the node refused the request's input"
                        + (f": {code})" if code else ")"),
                        retryable=False,
                        client_error=True,
                        code=code,
                    )
                if resp.status >= 400:
                    # 401/403/404/429...: not the client's input and not a node outage; try
                    # another node, do not eject. Status only: the body may echo the prompt.
                    raise BackendFailure(node_id, f"HTTP {resp.status} (request refused by the node)")
                data: dict[str, Any] = orjson.loads(await resp.read())
                _ = data["choices"][0]["message"]["content"]
                report = parse_report(resp.headers, data.get("privacy"))
        except BackendFailure:
            raise
        except TimeoutError:
            self._failed(st)
            raise BackendFailure(node_id, "timed out", timeout=True) from None
        except (
            aiohttp.ClientError,
            OSError,
            ValueError,
            KeyError,
            IndexError,
            TypeError,
            AttributeError,
        ) as exc:
            self._failed(st)
            raise BackendFailure(node_id, f"{type(exc).__name__}: {exc}") from None
        finally:
            st.in_flight -= 1
            self.metrics.child(self.metrics.node_in_flight, node_id).dec()
        elapsed = time.monotonic() - start
        st.ewma_latency_s = (
            elapsed if st.ewma_latency_s == 0 else (1 - EWMA_ALPHA) * st.ewma_latency_s + EWMA_ALPHA * elapsed
        )
        st.consecutive_failures = 0
        self.metrics.child(self.metrics.node_latency, node_id).observe(elapsed)
        return NodeReply(data, report)

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
            async with self.session.get(
                f"{st.cfg.endpoint}{hc.path}",
                timeout=aiohttp.ClientTimeout(total=hc.timeout_seconds),
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
