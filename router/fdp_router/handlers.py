"""The public API's handlers: inference, chat completions, budgets, health, metrics, OpenAPI.

Registered by ``app.py``. Each handler authenticates, parses the body once into a typed
model (``models.py``), hands a `CompletionRequest` to the request path
(``request_path.py``) and shapes its `Completion` for the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from fdp_router import access, openapi
from fdp_router.auth import Principal
from fdp_router.backends import BackendFailure
from fdp_router.errors import ClientGone, Forbidden, InvalidRequest, ModelNotFound
from fdp_router.jsonlog import request_id_var
from fdp_router.ledger_health import LEDGER_HEALTH
from fdp_router.middleware import json_response
from fdp_router.models import InferenceRequest, parse
from fdp_router.openai_api import OpenAIChatRequest
from fdp_router.privacy.api import Scope
from fdp_router.request_path import ROUTER_MODEL, Completion, CompletionRequest, Runtime
from fdp_router.runtime import HOLDER, METRICS, PATH, POOL, STARTED
from fdp_router.streaming import (
    SSE_HEADERS,
    Reframer,
    SseDecoder,
    StreamBroken,
    StreamTimedOut,
    broken_event,
    broken_reason,
    comment,
    estimate_usage,
)

log = logging.getLogger("fdp_router.handlers")
FINAL_WRITE_SECONDS = 10.0  # a stream's last bytes to a client that stopped reading: then closed


def _authenticate(request: web.Request, rt: Runtime) -> Awaitable[Principal]:
    """The caller (401 without a valid token; 429 when locked out or over its rate limit):
    ``access.py`` says in which order. Returns its coroutine: no second one per request."""
    return access.authenticate(request, rt, request.app[METRICS])


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > 1_048_576:
        raise InvalidRequest("body", "larger than 1 MiB")
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:  # also invalid UTF-8, NaN/Infinity literals, > 64-bit ints
        raise InvalidRequest("body", "is not valid JSON") from None
    except ConnectionError:  # the client hung up while sending it: its doing, not an error here
        raise ClientGone from None


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


def _routing_fields(body: InferenceRequest | OpenAIChatRequest) -> dict[str, Any]:
    """The privacy and routing fields both APIs share, as `CompletionRequest` arguments."""
    return {
        "privacy_budget": body.privacy_budget,
        "require_consensus": body.require_consensus,
        "priority": body.priority,
        "department": body.department,
        "request_id": request_id_var.get(),
        "model": body.model,
        "options": tuple(body.options) if body.options is not None else None,
        "candidate_set": body.candidate_set,
        "specialization": body.specialization,
    }


async def inference(request: web.Request) -> web.Response:
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        body = parse(InferenceRequest, await _json_body(request))
        creq = CompletionRequest(
            messages=[{"role": "user", "content": body.prompt}],
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            **_routing_fields(body),
        )
        c = await request.app[PATH].complete(rt, who, creq, _connected(request))
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


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI's chat completion; with ``stream: true`` server-sent events (``_stream``)."""
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        body = parse(OpenAIChatRequest, await _json_body(request))
        creq = CompletionRequest(
            messages=[{"role": m.role, "content": m.content} for m in body.messages],
            max_tokens=body.max_completion_tokens or body.max_tokens or 256,
            temperature=0.7 if body.temperature is None else body.temperature,
            **_routing_fields(body),
            params=body.node_params(),
            include_usage=body.include_usage,
        )
        if body.stream:
            return await _stream(request, rt, who, creq)
        c = await request.app[PATH].complete(rt, who, creq, _connected(request))
        doc = {
            "id": f"chatcmpl-{creq.request_id}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": creq.model or ROUTER_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": c.text},
                    "logprobs": c.logprobs,
                    "finish_reason": c.finish_reason,
                }
            ],
            "usage": c.usage or estimate_usage(creq.messages, c.text),
            "system_fingerprint": f"fdp-router-g{rt.generation}",
            "privacy": _privacy_doc(c, rt),
        }
        return json_response(doc, headers=_privacy_headers(c))


def _connected(request: web.Request) -> Callable[[], bool]:
    def connected() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    return connected


async def _stream(
    request: web.Request, rt: Runtime, who: Principal, creq: CompletionRequest
) -> web.StreamResponse:
    """Relay one node's answer as server-sent events (``streaming.py`` frames them). Nothing
    is sent before the request path cleared the answer (node headers checked, spend
    committed); from the first byte on, failures end the stream with an error event."""
    path = request.app[PATH]
    connected = _connected(request)
    async with path.stream(rt, who, creq, connected) as s:
        summary = s.completion
        framer = Reframer(
            id=f"chatcmpl-{creq.request_id}",
            model=creq.model or ROUTER_MODEL,
            fingerprint=f"fdp-router-g{rt.generation}",
            include_usage=creq.include_usage,
            pass_usage=s.public,
            pass_logprobs=s.public and creq.logprobs,
            check_privacy=s.check_privacy,
        )
        resp = web.StreamResponse(
            headers={**SSE_HEADERS, **_privacy_headers(summary), "X-Request-Id": creq.request_id}
        )
        privacy = _privacy_doc(summary, rt)
        # The stream's total limit bounds the writes to the client too: a client that stays
        # connected but stops reading would otherwise hold the node and the slot for ever.
        limit = s.upstream.limit if s.upstream is not None else rt.config.routing.stream_timeout_seconds
        try:
            await resp.prepare(request)
            deadline = (
                s.upstream.deadline() if s.upstream is not None else asyncio.get_running_loop().time() + limit
            )
            last = b""  # what is left to send goes out with the end of the response
            async with asyncio.timeout_at(deadline):
                if s.upstream is None or s.upstream.data is not None:
                    # A cached answer, or a node that answered whole: the same events.
                    last = framer.whole(summary.text, summary.finish_reason, summary.logprobs, summary.usage)
                else:
                    decoder = SseDecoder()
                    async for piece in s.upstream.chunks():
                        out = b"".join([framer.node_event(data) for data in decoder.feed(piece)])
                        if framer.node_done:
                            last = out
                            break
                        if out:
                            await resp.write(out)
                        elif not connected():
                            # Events with nothing to relay write nothing, so no write would
                            # find the client gone: stop reading the node for no one.
                            raise ConnectionResetError("the client went away")
                    else:
                        last = b"".join([framer.node_event(data) for data in decoder.close()])
                        if framer.finish is None:
                            if last:
                                await resp.write(last)
                            raise StreamBroken("the node's stream ended without a finish reason or [DONE]")
            last += framer.close(privacy, lambda: estimate_usage(creq.messages, framer.text))
        except (BackendFailure, StreamBroken, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):  # the limit passed while the relay waited
                exc = StreamTimedOut(limit)
            # The spend is committed: the stream ends with an error event, no [DONE].
            log.warning(
                "stream broke after it started",
                extra={"node": ",".join(summary.node_ids), "error": str(exc)},
            )
            metrics = request.app[METRICS]
            metrics.child(metrics.streams_broken, broken_reason(exc)).inc()
            await _bounded_write(request, resp, broken_event(exc) + comment("fdp-privacy", privacy))
            return resp
        except ConnectionError:
            return resp  # the client went away after its first byte: the spend stands
        if s.cached is None and not creq.logprobs:  # a stream's logprobs are not kept
            path.remember(
                rt,
                s.cache_key,
                summary.relayed(framer.text, framer.finish or "stop", framer.usage if s.public else None),
            )
        await _bounded_write(request, resp, last, eof=True)
        return resp


async def _bounded_write(
    request: web.Request, resp: web.StreamResponse, data: bytes, *, eof: bool = False
) -> None:
    """The last bytes of a stream, to a client that may have stopped reading: given up after
    FINAL_WRITE_SECONDS, and the connection closed (nothing waits on that client any more)."""
    try:
        async with asyncio.timeout(FINAL_WRITE_SECONDS):
            await (resp.write_eof(data) if eof else resp.write(data))
    except ConnectionError:
        pass
    except TimeoutError:
        if request.transport is not None:
            request.transport.close()


async def models(request: web.Request) -> web.Response:
    """OpenAI's model list: what the caller's department may use."""
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        return json_response({"object": "list", "data": request.app[PATH].models(rt, who.department)})


async def model(request: web.Request) -> web.Response:
    """One model of the list, or 404 ``model_not_found`` as OpenAI answers."""
    holder = request.app[HOLDER]
    with holder.use() as rt:
        who = await _authenticate(request, rt)
        name = request.match_info["model"]
        for m in request.app[PATH].models(rt, who.department):
            if m["id"] == name:
                return json_response(m)
        raise ModelNotFound(f"The model {name!r} does not exist or you do not have access to it.")


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
    """Without a token: only up or down. Node endpoints, hospitals, departments and the rest
    need a valid token (any role); an invalid one is a 401 like everywhere else."""
    app = request.app
    ready, doc = _readiness(app)
    rt = app[HOLDER].current
    if rt is None or access.bearer_token(request) is None:
        return json_response({"status": "up" if ready else "down"})
    await _authenticate(request, rt)
    doc.update(
        {
            "status": "healthy" if ready else "degraded",
            "uptime_seconds": round(time.monotonic() - app[STARTED], 3),
            "components": {
                "ledger": {
                    "backend": rt.config.ledger.backend if rt else None,
                    **(doc.get("ledger") or {"status": "up" if rt else "unavailable"}),
                },
                "balancer": rt.config.routing.strategy.value if rt else None,
                "cache": {
                    "entries": len(rt.cache) if rt else 0,
                    "hit_ratio": rt.cache.stats.hit_ratio if rt else 0.0,
                },
                "overload": {
                    "running": rt.overload.running if rt else 0,
                    "queued": rt.overload.queue_depth if rt else 0,
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
        metrics = request.app[METRICS]
        metrics.child(metrics.queue_depth).set(rt.overload.queue_depth)
    return web.Response(body=request.app[METRICS].render(), content_type="text/plain", charset="utf-8")


async def openapi_handler(request: web.Request) -> web.Response:
    return json_response(openapi.document())
