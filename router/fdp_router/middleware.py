"""The one middleware every request passes: request id, metrics, JSON errors, access log.

Registered by ``app.py``. `ApiError`s become their documented JSON bodies and statuses,
aiohttp's own HTTP errors become JSON too, anything else a logged 500 that says nothing more.
On the OpenAI-compatible routes (`OPENAI_PATHS`) every error is OpenAI's envelope
``{"error": {"message", "type", "param", "code"}}``; elsewhere ``{"error": {"type", "message"}}``.
`json_response` is the router's one JSON writer (orjson).

Requests aiohttp cannot even parse (a malformed request line or header, a bad chunked body)
never reach a middleware: aiohttp answers them itself, in plain text. Importing this module
makes those answers JSON too (OpenAI's envelope, which also has the ``type`` and ``message``
of the router's own shape): `_protocol_error` wraps aiohttp's `RequestHandler.handle_error`
once, for every server in the process.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web, web_protocol

from fdp_router.errors import ApiError, ClientGone, openai_error
from fdp_router.jsonlog import request_id_var
from fdp_router.runtime import METRICS, SETTINGS

log = logging.getLogger("fdp_router.app")
access_log = logging.getLogger("fdp_router.access")

_RID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Routes whose errors use OpenAI's envelope (DESIGN section 6); /v1/inference keeps its own.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


_aiohttp_handle_error = web_protocol.RequestHandler.handle_error


def _protocol_error(
    self: web_protocol.RequestHandler,
    request: Any,
    status: int = 500,
    exc: BaseException | None = None,
    message: str | None = None,
) -> web.StreamResponse:
    """aiohttp's own error answer (it logs, and refuses once bytes were sent), as JSON. The
    parser's detail is not echoed: it quotes the client's bytes."""
    plain = _aiohttp_handle_error(self, request, status, exc, message)
    reason = plain.reason if isinstance(plain, web.Response) else "error"
    text = "malformed HTTP request" if status == 400 else (reason or "error")
    code = "bad_http_request" if status == 400 else "internal_error" if status >= 500 else "http_error"
    resp = web.Response(
        body=orjson.dumps(openai_error(status, text, code=code)),
        status=status,
        content_type="application/json",
    )
    resp.force_close()
    return resp


if getattr(web_protocol.RequestHandler.handle_error, "__name__", "") != "_protocol_error":
    web_protocol.RequestHandler.handle_error = _protocol_error  # type: ignore[method-assign]


def _http_message(exc: web.HTTPException) -> str:
    """aiohttp's own error text (e.g. the body size limit), else the status phrase."""
    text = exc.text or ""
    return text if text and len(text) <= 300 else exc.reason


def json_response(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`web.json_response` with orjson: the router answers every request with JSON, and the
    standard library encoder was a measurable share of its CPU per request."""
    return web.Response(
        body=orjson.dumps(data), status=status, headers=headers, content_type="application/json"
    )


def _route_label(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def observe(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    rid_in = request.headers.get("X-Request-Id", "")
    rid = rid_in if rid_in and _RID.fullmatch(rid_in) else secrets.token_hex(16)
    token = request_id_var.set(rid)
    metrics = request.app[METRICS]
    route = _route_label(request)
    start = time.perf_counter()
    in_flight = metrics.child(metrics.in_flight)
    in_flight.inc()
    status = 500
    try:
        try:
            resp = await handler(request)
        except ClientGone:
            # The client left before its answer went out (nothing charged): nginx's 499, which
            # nobody reads, for the metrics and the access log; not an error of the router's.
            resp = web.Response(status=499, text="client closed the request before its answer")
        except ApiError as exc:
            metrics.child(metrics.errors, exc.type).inc()
            body = exc.openai_body() if request.path.startswith(OPENAI_PATHS) else exc.body()
            resp = json_response(body, status=exc.status, headers=exc.headers)
        except web.HTTPException as exc:
            etype = "not_found" if exc.status == 404 else "http_error"
            metrics.child(metrics.errors, etype).inc()
            if request.path.startswith(OPENAI_PATHS):
                body = openai_error(exc.status, _http_message(exc), code=_HTTP_CODES.get(exc.status, etype))
            else:
                body = {"error": {"type": etype, "message": exc.reason}}
            resp = json_response(
                body,
                status=exc.status,
                headers={
                    k: v
                    for k, v in exc.headers.items()
                    if k.lower() not in ("content-type", "content-length")
                },
            )
        except Exception:
            log.exception("unhandled error")
            metrics.child(metrics.errors, "internal_error").inc()
            if request.path.startswith(OPENAI_PATHS):
                body = openai_error(500, "internal error", code="internal_error")
            else:
                body = {"error": {"type": "internal_error", "message": "internal error"}}
            resp = json_response(body, status=500)
        status = resp.status
        if not resp.prepared:  # a stream sets its own before its first byte
            resp.headers["X-Request-Id"] = rid
        return resp
    finally:
        elapsed = time.perf_counter() - start
        in_flight.dec()
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
