"""The router's aiohttp application: `create_app(settings)`, a thin factory.

Called by ``fdp-router serve`` (``service_cli.py``), by ``fdp-router standalone-demo`` and
by the tests (through ``aiohttp_client``). Settings are passed in, never read globally;
state lives under typed `web.AppKey`s (``runtime.py``); the backend pool, the ledger, the
probes and the config watcher live in a cleanup context. Where things are:

- ``runtime.py``: `Settings`, the runtime of one config generation, hot reload, lifecycle;
- ``middleware.py``: request id, metrics, JSON errors, access log;
- ``handlers.py``: the public API; ``admin.py``: the standalone admin API;
- ``request_path.py``: what happens to one completion request.
"""

from __future__ import annotations

import time

from aiohttp import web

from fdp_router import admin, handlers
from fdp_router.access import GUARD, Guard
from fdp_router.backends import BackendPool
from fdp_router.metrics import Metrics
from fdp_router.middleware import observe
from fdp_router.request_path import RequestPath
from fdp_router.runtime import (
    HOLDER,
    METRICS,
    PATH,
    POOL,
    SETTINGS,
    STARTED,
    RuntimeHolder,
    Settings,
    _lifecycle,
)

__all__ = ["HOLDER", "METRICS", "POOL", "SETTINGS", "Settings", "create_app"]


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
    app[GUARD] = Guard()  # rate limits and the brute-force lockout, across config reloads
    app[admin.ADMIN] = admin.admin_state(settings.config_path)  # the admin audit log
    app.cleanup_ctx.append(_lifecycle)
    r = app.router
    r.add_post("/v1/inference", handlers.inference)
    r.add_post("/v1/chat/completions", handlers.chat_completions)
    r.add_get("/v1/models", handlers.models)
    r.add_get("/v1/models/{model:.+}", handlers.model)
    r.add_get("/v1/privacy/budget/{user_id}", handlers.budget)
    r.add_get("/v1/health", handlers.health)
    r.add_get("/healthz", handlers.healthz)
    r.add_get("/readyz", handlers.readyz)
    r.add_get("/metrics", handlers.metrics_handler)
    r.add_get("/openapi.json", handlers.openapi_handler)
    r.add_get("/v1/admin/nodes", admin.admin_nodes_get)
    r.add_post("/v1/admin/nodes", admin.admin_nodes_post)
    r.add_delete("/v1/admin/nodes/{node_id}", admin.admin_nodes_delete)
    r.add_get("/v1/admin/config", admin.admin_config_get)
    r.add_put("/v1/admin/config", admin.admin_config_put)
    return app
