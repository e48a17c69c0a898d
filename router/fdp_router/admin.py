"""The admin API (standalone mode only): nodes and config, changed through the config file.

Registered by ``app.py``. When the operator manages the router (``managed_by`` in the
config) every call answers 409 and names the FederatedRouter to change instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import ValidationError

from fdp_router.auth import AuthSetupError
from fdp_router.config import HospitalNodeConfig, RouterConfig
from fdp_router.errors import Conflict, Forbidden, InvalidRequest, NoNodeAvailable, NotFound
from fdp_router.handlers import _authenticate, _json_body
from fdp_router.middleware import json_response
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.request_path import Runtime
from fdp_router.runtime import HOLDER, POOL, SETTINGS, apply_config


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
