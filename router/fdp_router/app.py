"""The router's aiohttp application: `create_app(settings)`.

Called by ``fdp-router serve`` (``service_cli.py``), by ``fdp-router standalone-demo`` and
by the tests (through ``aiohttp_client``). Settings are passed in, never read globally;
state lives under typed `web.AppKey`s; the backend pool, the ledger, the probes and the
config watcher live in cleanup contexts.

Hot reload: the config file is polled (content hash); a valid new file builds a new
`Runtime` and swaps it in atomically. Requests already running keep the runtime they
started with; a replaced ledger is closed only after its last request finished. An invalid
file is logged and counted, and the old config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from pydantic import ValidationError

from fdp_router import openapi
from fdp_router.auth import Authenticator, AuthSetupError, Principal
from fdp_router.backends import BackendPool
from fdp_router.balancers import make_balancer
from fdp_router.cache import AnswerCache
from fdp_router.config import HospitalNodeConfig, LedgerConfig, PrivacyConfig, RouterConfig, load_config
from fdp_router.errors import (
    ApiError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NoNodeAvailable,
    NotFound,
    Unauthorized,
)
from fdp_router.jsonlog import request_id_var
from fdp_router.ledger_health import LEDGER_HEALTH, LedgerHealth
from fdp_router.metrics import Metrics
from fdp_router.models import ChatRequest, InferenceRequest, parse
from fdp_router.overload import AdmissionController
from fdp_router.privacy.api import InvalidPrivacyRequest, Ledger, Scope
from fdp_router.request_path import Completion, CompletionRequest, RequestPath, Runtime

log = logging.getLogger("fdp_router.app")
access_log = logging.getLogger("fdp_router.access")

LedgerFactory = Callable[[LedgerConfig, PrivacyConfig], Awaitable[Ledger]]


async def _default_ledger_factory(ledger_cfg: LedgerConfig, privacy_cfg: PrivacyConfig) -> Ledger:
    from fdp_router.privacy.ledger import open_ledger

    return await open_ledger(ledger_cfg, privacy_cfg)


@dataclass(frozen=True)
class Settings:
    """What `create_app` needs. `config_path` enables hot reload and admin writes."""

    config: RouterConfig
    config_path: Path | None = None
    reload_interval_seconds: float = 1.0
    ledger_factory: LedgerFactory = _default_ledger_factory
    hs256_secret: bytes | None = None  # overrides auth.hs256_secret_file/env (tests, demo)
    probes: bool = True
    access_log: bool = True

    @classmethod
    def from_file(cls, path: str | Path, **kw: Any) -> Settings:
        return cls(config=load_config(path), config_path=Path(path), **kw)


class RuntimeHolder:
    """The current runtime, swapped atomically on reload; counts requests per runtime."""

    def __init__(self) -> None:
        self.current: Runtime | None = None
        self.generation = 0
        self.config_hash = ""
        self.lock = asyncio.Lock()

    @contextlib.contextmanager
    def use(self) -> Iterator[Runtime]:
        rt = self.current
        if rt is None:
            raise NoNodeAvailable("router is starting")
        rt.in_flight += 1
        rt.drained.clear()
        try:
            yield rt
        finally:
            rt.in_flight -= 1
            if rt.in_flight == 0:
                rt.drained.set()


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
POOL = web.AppKey("pool", BackendPool)
HOLDER = web.AppKey("holder", RuntimeHolder)
PATH = web.AppKey("request_path", RequestPath)
STARTED = web.AppKey("started", float)

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_PUBLIC = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/v1/health"}


# --- runtime construction / reload ---------------------------------------------------------


def _query_hasher(ledger: Ledger) -> Callable[[str], str]:
    method = getattr(ledger, "query_hash", None)
    if callable(method):
        return method  # type: ignore[no-any-return]
    # Ledgers without their own keyed hash (test fakes): a per-process key; never the text.
    from fdp_router.privacy.audit import query_hash

    key = secrets.token_bytes(32)
    return lambda text: query_hash(key, text)


async def build_runtime(app: web.Application, cfg: RouterConfig, previous: Runtime | None) -> Runtime:
    settings = app[SETTINGS]
    authenticator = Authenticator(cfg.auth, hs256_secret=settings.hs256_secret)
    if (
        previous is not None
        and previous.config.ledger == cfg.ledger
        and previous.config.privacy == cfg.privacy
    ):
        ledger = previous.ledger
    else:
        ledger = await settings.ledger_factory(cfg.ledger, cfg.privacy)
    cache = (
        previous.cache
        if previous is not None and previous.config.cache == cfg.cache
        else AnswerCache(cfg.cache)
    )
    admission = (
        previous.admission
        if previous is not None and previous.config.overload == cfg.overload
        else AdmissionController(cfg.overload)
    )
    holder = app[HOLDER]
    holder.generation += 1
    rt = Runtime(
        config=cfg,
        generation=holder.generation,
        authenticator=authenticator,
        balancer=make_balancer(cfg.routing.strategy, cfg.routing.seed),
        ledger=ledger,
        cache=cache,
        admission=admission,
        query_hasher=_query_hasher(ledger),
        hospital_remaining=dict(previous.hospital_remaining) if previous else {},
    )
    rt.drained.set()
    return rt


async def apply_config(app: web.Application, cfg: RouterConfig, config_hash: str = "") -> Runtime:
    """Swap in a new config. Raises (and changes nothing) if the runtime cannot be built."""
    holder = app[HOLDER]
    async with holder.lock:
        old = holder.current
        rt = await build_runtime(app, cfg, old)
        try:
            app[POOL].configure(cfg.nodes, cfg.routing)
        except BaseException:
            if old is None or rt.ledger is not old.ledger:
                await rt.ledger.close()
            raise
        holder.current = rt
        if config_hash:
            holder.config_hash = config_hash
        app[METRICS].reloads.labels("ok").inc()
        log.info("config applied", extra={"generation": rt.generation, "nodes": len(cfg.nodes)})
    if old is not None and old.ledger is not rt.ledger:
        asyncio.get_running_loop().create_task(_close_when_drained(old))
    return rt


async def _close_when_drained(old: Runtime) -> None:
    await old.drained.wait()
    await old.ledger.close()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _watch_config(app: web.Application) -> None:
    settings = app[SETTINGS]
    assert settings.config_path is not None
    holder = app[HOLDER]
    while True:
        await asyncio.sleep(settings.reload_interval_seconds)
        try:
            digest = await asyncio.to_thread(_file_hash, settings.config_path)
        except OSError as exc:
            log.warning("config file unreadable", extra={"error": str(exc)})
            continue
        if digest == holder.config_hash:
            continue
        try:
            cfg = await asyncio.to_thread(load_config, settings.config_path)
            await apply_config(app, cfg, digest)
        except (ValidationError, ValueError, OSError, AuthSetupError, yaml.YAMLError) as exc:
            holder.config_hash = digest  # do not retry the same bad content every tick
            app[METRICS].reloads.labels("error").inc()
            log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)[:2000]})


async def _refresh_hospital_budgets(app: web.Application, interval: float = 2.0) -> None:
    """Feed the privacy-aware balancer each hospital's remaining epsilon (a little stale is
    fine: the ledger's atomic reservation stays the authority)."""
    while True:
        rt = app[HOLDER].current
        if rt is not None and rt.config.routing.strategy == "privacy_aware":
            for hospital in sorted({n.hospital for n in rt.config.nodes}):
                try:
                    st = await rt.ledger.budget(Scope.HOSPITAL, hospital)
                except Exception:
                    log.exception("hospital budget read failed", extra={"hospital": hospital})
                    continue
                rt.hospital_remaining[hospital] = st.remaining_epsilon
        await asyncio.sleep(interval)


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = app[POOL]
    await pool.start()
    digest = _file_hash(settings.config_path) if settings.config_path else ""
    try:
        rt = await apply_config(app, settings.config, digest)
    except BaseException:
        await pool.close()
        raise
    if settings.probes:
        pool.start_probes()
    ledger_health = app[LEDGER_HEALTH] = LedgerHealth(app[METRICS])
    ledger_health.attach(rt.ledger)
    holder = app[HOLDER]
    tasks = [
        asyncio.create_task(_refresh_hospital_budgets(app)),
        asyncio.create_task(ledger_health.run(lambda: holder.current.ledger if holder.current else None)),
    ]
    if settings.config_path:
        tasks.append(asyncio.create_task(_watch_config(app)))
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await pool.close()
        current = app[HOLDER].current or rt
        await current.ledger.close()


# --- middleware -----------------------------------------------------------------------------


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rid_in = request.headers.get("X-Request-Id", "")
    rid = rid_in if rid_in and _RID.match(rid_in) else secrets.token_hex(16)
    token = request_id_var.set(rid)
    metrics = request.app[METRICS]
    route = _route_label(request)
    start = time.perf_counter()
    metrics.in_flight.inc()
    status = 500
    try:
        try:
            resp = await handler(request)
        except ApiError as exc:
            metrics.errors.labels(exc.type).inc()
            resp = json_response(exc.body(), status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            etype = "not_found" if exc.status == 404 else "http_error"
            metrics.errors.labels(etype).inc()
            resp = json_response(
                {"error": {"type": etype, "message": exc.reason}},
                status=exc.status,
                headers={
                    k: v
                    for k, v in exc.headers.items()
                    if k.lower() not in ("content-type", "content-length")
                },
            )
        except Exception:
            log.exception("unhandled error")
            metrics.errors.labels("internal_error").inc()
            resp = json_response(
                {"error": {"type": "internal_error", "message": "internal error"}}, status=500
            )
        status = resp.status
        resp.headers["X-Request-Id"] = rid
        return resp
    finally:
        elapsed = time.perf_counter() - start
        metrics.in_flight.dec()
        metrics.child(metrics.requests, route, str(status)).inc()
        metrics.child(metrics.latency, route).observe(elapsed)
        if request.app[SETTINGS].access_log:
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": route,
                    "status": status,
                    "ms": round(elapsed * 1000, 3),
                },
            )
        request_id_var.reset(token)


# --- helpers ----------------------------------------------------------------------------------


async def _authenticate(request: web.Request, rt: Runtime) -> Principal:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing bearer token (Authorization: Bearer <JWT>)")
    return await rt.authenticator.averify(token.strip())


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > 1_048_576:
        raise InvalidRequest("body", "larger than 1 MiB")
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:  # also invalid UTF-8, NaN/Infinity literals, > 64-bit ints
        raise InvalidRequest("body", "is not valid JSON") from None


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`web.json_response` with orjson: the router answers every request with JSON, and the
    standard library encoder was a measurable share of its CPU per request."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _privacy_doc(c: Completion, rt: Runtime) -> dict[str, Any]:
    return {
        "epsilon": c.epsilon,
        "delta": c.delta,
        "remaining_budget": c.remaining_budget,
        "cached": c.cached,
        "cache_note": "re-release of an answer already released to this department: no epsilon spent"
        if c.cached
        else None,
        "consensus": c.consensus,
        "consensus_reached": c.consensus_reached,
        "confidence": c.confidence,
        "nodes": list(c.node_ids),
        "policy": rt.config.privacy.policy_name,
        "basis": c.basis,
    }


def _privacy_headers(c: Completion) -> dict[str, str]:
    h = {
        "X-FDP-Privacy-Cost": f"{c.epsilon:.6g}",
        "X-FDP-Cache": "hit" if c.cached else "miss",
        "X-FDP-Node": ",".join(c.node_ids),
    }
    if c.remaining_budget is not None:
        h["X-FDP-Remaining-Budget"] = f"{c.remaining_budget:.6g}"
    return h


# --- handlers ---------------------------------------------------------------------------------


async def inference(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        body = parse(InferenceRequest, await _json_body(request))
        creq = CompletionRequest(
            messages=[{"role": "user", "content": body.prompt}],
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            privacy_budget=body.privacy_budget,
            require_consensus=body.require_consensus,
            priority=body.priority,
            department=body.department,
            request_id=request_id_var.get(),
            model=body.model,
            options=tuple(body.options) if body.options is not None else None,
            candidate_set=body.candidate_set,
        )
        c = await request.app[PATH].complete(rt, who, creq)
        doc = {
            "success": True,
            "response": c.text,
            "privacy_cost": c.epsilon,
            "remaining_budget": c.remaining_budget,
            "node_id": c.node_ids[0] if len(c.node_ids) == 1 else ",".join(c.node_ids),
            "processing_time": round(c.processing_time, 6),
            "consensus_reached": c.consensus_reached,
            "confidence_score": c.confidence,
            "cached": c.cached,
            "request_id": creq.request_id,
            "privacy": _privacy_doc(c, rt),
        }
        return json_response(doc, headers=_privacy_headers(c))


async def chat_completions(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        body = parse(ChatRequest, await _json_body(request))
        if body.stream:
            raise InvalidRequest(
                "stream", "streaming is not supported: an answer is released (and charged) whole"
            )
        creq = CompletionRequest(
            messages=[{"role": m.role, "content": m.content} for m in body.messages],
            max_tokens=body.max_completion_tokens or body.max_tokens or 256,
            temperature=0.7 if body.temperature is None else body.temperature,
            privacy_budget=body.privacy_budget,
            require_consensus=body.require_consensus,
            priority=body.priority,
            department=body.department,
            request_id=request_id_var.get(),
            model=body.model,
            options=tuple(body.options) if body.options is not None else None,
            candidate_set=body.candidate_set,
        )
        c = await request.app[PATH].complete(rt, who, creq)
        prompt_words = sum(len(m["content"].split()) for m in creq.messages)
        answer_words = len(c.text.split())
        doc = {
            "id": f"chatcmpl-{creq.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.model or "fdp-router",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_words,
                "completion_tokens": answer_words,
                "total_tokens": prompt_words + answer_words,
            },
            "system_fingerprint": f"fdp-router-g{rt.generation}",
            "privacy": _privacy_doc(c, rt),
        }
        return json_response(doc, headers=_privacy_headers(c))


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None


async def budget(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        user_id = request.match_info["user_id"]
        if not who.can_read_budget_of(user_id):
            raise Forbidden("only auditors and admins may read another user's budget")
        st = await rt.ledger.budget(Scope.USER, user_id)
        return json_response(
            {
                "user_id": user_id,
                "total_budget": st.total_epsilon,
                "consumed_budget": st.consumed_epsilon,
                "remaining_budget": st.remaining_epsilon,
                "delta": st.delta,
                "window": {
                    "kind": rt.config.privacy.window.kind,
                    "start": _iso(st.window_start),
                    "end": _iso(st.window_end),
                },
                "guarantee": st.guarantee,
                "details": st.extra,
            }
        )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def _readiness(app: web.Application) -> tuple[bool, dict[str, Any]]:
    rt = app[HOLDER].current
    nodes = app[POOL].describe()
    healthy = sum(1 for n in nodes if n["healthy"])
    # The ledger's cached state (ledger_health.py; refreshed about every second, never waited
    # for here): without a ledger that can record a spend, no request can be answered.
    ledger_health = app.get(LEDGER_HEALTH)
    ledger = ledger_health.state if ledger_health is not None else None
    ready = rt is not None and healthy > 0 and (ledger is None or ledger.up)
    return ready, {
        "status": "ready" if ready else "not_ready",
        "config_generation": rt.generation if rt else None,
        "nodes": {"configured": len(nodes), "healthy": healthy},
        "ledger": ledger.doc(time.monotonic()) if ledger is not None else None,
    }


async def readyz(request: web.Request) -> web.Response:
    ready, doc = _readiness(request.app)
    return json_response(doc, status=200 if ready else 503)


async def health(request: web.Request) -> web.Response:
    app = request.app
    ready, doc = _readiness(app)
    rt = app[HOLDER].current
    doc.update(
        {
            "status": "healthy" if ready else "degraded",
            "uptime_seconds": round(time.monotonic() - app[STARTED], 3),
            "components": {
                "ledger": {
                    "backend": rt.config.ledger.backend if rt else None,
                    "status": "ok" if rt else "down",
                },
                "balancer": rt.config.routing.strategy.value if rt else None,
                "cache": {
                    "entries": len(rt.cache) if rt else 0,
                    "hit_ratio": rt.cache.stats.hit_ratio if rt else 0.0,
                },
                "admission": {
                    "running": rt.admission.running if rt else 0,
                    "queued": rt.admission.queue_depth if rt else 0,
                },
                "nodes": app[POOL].describe(),
            },
            "managed_by": rt.config.managed_by.model_dump() if rt and rt.config.managed_by else None,
        }
    )
    return json_response(doc)


async def metrics_handler(request: web.Request) -> web.Response:
    rt = request.app[HOLDER].current
    if rt is not None:
        request.app[METRICS].queue_depth.set(rt.admission.queue_depth)
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8")


async def openapi_handler(request: web.Request) -> web.Response:
    return json_response(openapi.document())


# --- admin (standalone mode) --------------------------------------------------------------------


async def _admin(request: web.Request) -> Runtime:
    rt = request.app[HOLDER].current
    if rt is None:
        raise NoNodeAvailable("router is starting")
    who = await _authenticate(request, rt)
    mb = rt.config.managed_by
    if mb is not None:
        raise Conflict(
            f"this router is managed by {mb.kind} {mb.namespace}/{mb.name}: change that resource instead "
            f"(kubectl -n {mb.namespace} edit {mb.kind.lower()} {mb.name})",
            managed_by={"kind": mb.kind, "namespace": mb.namespace, "name": mb.name},
        )
    if not who.is_admin:
        raise Forbidden("admin role required")
    return rt


def _write_config(path: Path, cfg: RouterConfig) -> str:
    data = cfg.model_dump(mode="json", exclude_defaults=False)
    text = json.dumps(data, indent=2) if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".fdp-config-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return hashlib.sha256(text.encode()).hexdigest()


async def _replace_config(app: web.Application, cfg: RouterConfig) -> Runtime:
    path = app[SETTINGS].config_path
    rt = await apply_config(app, cfg)
    if path is not None:
        app[HOLDER].config_hash = await asyncio.to_thread(_write_config, path, cfg)
    return rt


def _validate(data: Any, model: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidRequest(".".join(str(p) for p in err["loc"]) or "body", err["msg"]) from None


async def admin_nodes_get(request: web.Request) -> web.Response:
    await _admin(request)
    return json_response({"nodes": request.app[POOL].describe()})


async def admin_nodes_post(request: web.Request) -> web.Response:
    rt = await _admin(request)
    node = _validate(await _json_body(request), HospitalNodeConfig)
    if any(n.id == node.id for n in rt.config.nodes):
        raise InvalidRequest("id", f"node {node.id!r} already exists")
    cfg = rt.config.model_copy(update={"nodes": (*rt.config.nodes, node)})
    await _replace_config(request.app, RouterConfig.model_validate(cfg.model_dump()))
    return json_response({"node": node.model_dump(mode="json")}, status=201)


async def admin_nodes_delete(request: web.Request) -> web.Response:
    rt = await _admin(request)
    node_id = request.match_info["node_id"]
    if not any(n.id == node_id for n in rt.config.nodes):
        raise NotFound(f"node {node_id!r} is not configured")
    cfg = rt.config.model_copy(update={"nodes": tuple(n for n in rt.config.nodes if n.id != node_id)})
    await _replace_config(request.app, cfg)
    return json_response({"deleted": node_id})


async def admin_config_get(request: web.Request) -> web.Response:
    rt = await _admin(request)
    return json_response({"generation": rt.generation, "config": rt.config.model_dump(mode="json")})


async def admin_config_put(request: web.Request) -> web.Response:
    await _admin(request)
    cfg = _validate(await _json_body(request), RouterConfig)
    try:
        rt = await _replace_config(request.app, cfg)
    except AuthSetupError as exc:
        raise InvalidRequest("auth", str(exc)) from None
    except InvalidPrivacyRequest as exc:
        raise InvalidRequest(exc.field, exc.reason) from None
    return json_response({"generation": rt.generation, "config": rt.config.model_dump(mode="json")})


# --- factory ------------------------------------------------------------------------------------


def create_app(settings: Settings) -> web.Application:
    app = web.Application(middlewares=[observe], client_max_size=1_048_576)
    metrics = Metrics()
    pool = BackendPool(settings.config.routing, metrics)
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[POOL] = pool
    app[HOLDER] = RuntimeHolder()
    app[PATH] = RequestPath(pool, metrics)
    app[STARTED] = time.monotonic()
    app.cleanup_ctx.append(_lifecycle)
    r = app.router
    r.add_post("/v1/inference", inference)
    r.add_post("/v1/chat/completions", chat_completions)
    r.add_get("/v1/privacy/budget/{user_id}", budget)
    r.add_get("/v1/health", health)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics_handler)
    r.add_get("/openapi.json", openapi_handler)
    r.add_get("/v1/admin/nodes", admin_nodes_get)
    r.add_post("/v1/admin/nodes", admin_nodes_post)
    r.add_delete("/v1/admin/nodes/{node_id}", admin_nodes_delete)
    r.add_get("/v1/admin/config", admin_config_get)
    r.add_put("/v1/admin/config", admin_config_put)
    return app
