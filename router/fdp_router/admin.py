"""The admin API (standalone mode only): nodes and config, changed through the config file.

Registered by ``app.py``. When the operator manages the router (``managed_by`` in the
config) every call answers 409 and names the FederatedRouter to change instead.

What an admin token may NOT do here (docs/security.md, "Admin API"):

- change the ``privacy``, ``auth`` or ``ledger`` sections, ``managed_by``, or a configured
  node's ``privacy`` declaration, or add a node declared ``public`` (it would release answers
  at 0 epsilon): 400 naming the first such field; those change in the config file or the CR,
  where a restart or a review sees them. (A new ``ledger.sqlite_path`` would start every
  budget from zero; ``auth.hs256_secret_file: /etc/passwd`` would let anyone who can read
  that file sign admin tokens.)
- point a ``*_file`` field at a file outside the directories the running config already
  uses for node and server files (and the config's own directory), or at one of the secret,
  ledger, config or audit files: 400 naming the field. A node's API key file is sent to the
  node's endpoint, so this is what keeps a new node from exfiltrating a secret.

Every change, applied or refused, is a record in the hash-chained admin audit log
(``admin_audit.py``) with its actor, and a log line naming the actor. A change is recorded
(fsynced) before it is applied; a change that then fails to apply gets a second record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import yaml
from aiohttp import web
from pydantic import ValidationError

from fdp_router.admin_audit import AdminAuditLog
from fdp_router.auth import AuthSetupError, Principal
from fdp_router.config import DataClass, HospitalNodeConfig, RouterConfig
from fdp_router.errors import Conflict, Forbidden, InvalidRequest, NoNodeAvailable, NotFound
from fdp_router.handlers import _authenticate, _json_body
from fdp_router.jsonlog import request_id_var
from fdp_router.metrics import Metrics
from fdp_router.middleware import json_response
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.request_path import Runtime
from fdp_router.runtime import HOLDER, METRICS, POOL, SETTINGS, apply_config

log = logging.getLogger("fdp_router.admin")

# Sections the admin API never changes, in the order a refusal names the first one.
LOCKED_SECTIONS = ("privacy", "auth", "ledger", "managed_by")
CHANGE_THEM = "change the config file, or the FederatedRouter / PrivacyPolicy CR, instead"
MAX_SUMMARY = 50


@dataclass
class AdminState:
    """One per app: the audit log, and a lock so that admin changes apply one at a time
    (each reads the running config and writes a whole new one)."""

    audit: AdminAuditLog
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


ADMIN = web.AppKey("admin", AdminState)


def admin_state(config_path: Path | None) -> AdminState:
    """What ``app.py`` keeps under `ADMIN`: the audit log sits next to the config file."""
    return AdminState(AdminAuditLog.beside(config_path))


async def _admin(request: web.Request) -> tuple[Runtime, Principal]:
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
        _violation(request.app[METRICS], "admin_required")
        raise Forbidden("admin role required", reason="admin_required")
    return rt, who


def _violation(metrics: Metrics, reason: str) -> None:
    metrics.child(metrics.access_violations, reason).inc()


# --- what a change may touch (pure) ---------------------------------------------------------


def _differences(a: Any, b: Any, path: str) -> Iterator[str]:
    """Dotted paths where two dumped configs differ, in field order."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            yield from _differences(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
    elif a != b:
        yield path


def _nodes_by_id(cfg: RouterConfig) -> dict[str, HospitalNodeConfig]:
    return {n.id: n for n in cfg.nodes}


def locked_change(old: RouterConfig, new: RouterConfig) -> str | None:
    """The first field of `new` the admin API may not change, or None."""
    a, b = old.model_dump(mode="json"), new.model_dump(mode="json")
    for section in LOCKED_SECTIONS:
        first = next(_differences(a.get(section), b.get(section), section), None)
        if first is not None:
            return first
    before = _nodes_by_id(old)
    for node in new.nodes:
        prev = before.get(node.id)
        where = f"nodes[{node.id}].privacy"
        if prev is not None:
            first = next(
                _differences(
                    prev.privacy.model_dump(mode="json"), node.privacy.model_dump(mode="json"), where
                ),
                None,
            )
            if first is not None:
                return first
        elif node.privacy.data_class == DataClass.PUBLIC:
            return f"{where}.data_class"
    return None


def _file_fields(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, value) of every `*_file` setting; nodes are named by id, not index."""
    if isinstance(data, dict):
        for k, v in data.items():
            sub = f"{path}.{k}" if path else k
            if k == "nodes" and isinstance(v, list):
                for node in v:
                    yield from _file_fields(node, f"nodes[{node.get('id')}]")
            elif isinstance(v, str) and k.endswith("_file"):
                yield sub, v
            else:
                yield from _file_fields(v, sub)


def _real(p: str | Path) -> str:
    return os.path.realpath(p)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def unsafe_file(
    old: RouterConfig, new: RouterConfig, *, config_path: Path | None, audit_path: Path | None
) -> str | None:
    """The first `*_file` field of `new` the admin API may not set, or None. An unchanged
    field is fine; a new or changed one must resolve (symlinks and .. followed) inside a
    directory the running config uses for node or server files, or the config's own, and
    must not be any file of the running config (secrets, keys, the ledger, the config, this
    log): a node's key file is sent to the node's endpoint."""
    before = dict(_file_fields(old.model_dump(mode="json")))
    roots = {os.path.dirname(_real(v)) for k, v in before.items() if not k.startswith(("auth.", "ledger."))}
    if config_path is not None:
        roots.add(os.path.dirname(_real(config_path)))
    taken = {_real(v): k for k, v in before.items()}
    for extra in (config_path, audit_path):
        if extra is not None:
            taken[_real(extra)] = "config"
    ledger_db = _real(old.ledger.sqlite_path)
    for key, value in _file_fields(new.model_dump(mode="json")):
        if before.get(key) == value:
            continue
        real = _real(value)
        if taken.get(real, key) != key or real.startswith(ledger_db):
            return key
        if not any(_inside(real, root) for root in roots):
            return key
    return None


def _summary(old: RouterConfig, new: RouterConfig) -> list[str]:
    changed = list(_differences(old.model_dump(mode="json"), new.model_dump(mode="json"), ""))
    if len(changed) > MAX_SUMMARY:
        changed = [*changed[:MAX_SUMMARY], f"... and {len(changed) - MAX_SUMMARY} more"]
    return changed


# --- applying one change --------------------------------------------------------------------


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


def _actor(request: web.Request, who: Principal) -> dict[str, Any]:
    return {
        "actor": who.user,
        "actor_department": who.department,
        "actor_roles": sorted(who.roles),
        "client": request.remote,
        "request_id": request_id_var.get(),
    }


async def _audit(request: web.Request, who: Principal, **fields: Any) -> dict[str, Any]:
    state = request.app[ADMIN]
    record = await asyncio.to_thread(state.audit.append, **_actor(request, who), **fields)
    level = logging.INFO if fields.get("outcome") == "applied" else logging.WARNING
    log.log(
        level,
        f"admin {fields.get('action')} {fields.get('outcome')} by {who.user}",
        extra={
            "actor": who.user,
            "action": fields.get("action"),
            "outcome": fields.get("outcome"),
            "changes": fields.get("changes"),
            "audit_seq": record["seq"],
        },
    )
    return record


async def _refuse(
    request: web.Request, who: Principal, action: str, reason: str, err: InvalidRequest
) -> NoReturn:
    _violation(request.app[METRICS], reason)
    await _audit(request, who, action=action, outcome="refused", reason=reason, detail=err.message)
    raise err


async def _change(
    request: web.Request, who: Principal, action: str, old: RouterConfig, new: RouterConfig
) -> Runtime:
    """Check, record, apply. Called with the admin lock held."""
    app = request.app
    locked = locked_change(old, new)
    if locked is not None:
        err = InvalidRequest(
            locked,
            "ledger, privacy and auth settings (and node privacy declarations) cannot be changed "
            f"through the admin API; {CHANGE_THEM}",
        )
        await _refuse(request, who, action, "admin_locked_field", err)
    settings = app[SETTINGS]
    bad_file = unsafe_file(old, new, config_path=settings.config_path, audit_path=app[ADMIN].audit.path)
    if bad_file is not None:
        err = InvalidRequest(
            bad_file,
            "a file set through the admin API must be inside a directory the running config already "
            "uses for node or server files, and must not be one of its secret, key, ledger or config "
            f"files; {CHANGE_THEM}",
        )
        await _refuse(request, who, action, "admin_file_path", err)
    changes = _summary(old, new)
    await _audit(request, who, action=action, outcome="applied", changes=changes)
    try:
        return await _replace_config(app, new)
    except AuthSetupError as exc:
        await _audit(request, who, action=action, outcome="failed", detail=str(exc))
        raise InvalidRequest("auth", str(exc)) from None
    except InvalidPrivacyRequest as exc:
        await _audit(request, who, action=action, outcome="failed", detail=exc.reason)
        raise InvalidRequest(exc.field, exc.reason) from None
    except ValueError as exc:  # e.g. a node's key file that is not one token: "field: why"
        await _audit(request, who, action=action, outcome="failed", detail=str(exc)[:500])
        where, sep, why = str(exc).partition(": ")
        raise InvalidRequest(where if sep else "config", why if sep else str(exc)) from None
    except OSError as exc:  # e.g. a CA file that holds no certificate
        await _audit(request, who, action=action, outcome="failed", detail=str(exc)[:500])
        raise InvalidRequest("config", f"a file the new config names cannot be used: {exc}") from None
    except Exception as exc:
        await _audit(request, who, action=action, outcome="failed", detail=type(exc).__name__)
        raise


# --- handlers -------------------------------------------------------------------------------


async def admin_nodes_get(request: web.Request) -> web.Response:
    await _admin(request)
    return json_response({"nodes": request.app[POOL].describe()})


async def admin_nodes_post(request: web.Request) -> web.Response:
    _, who = await _admin(request)
    node = _validate(await _json_body(request), HospitalNodeConfig)
    async with request.app[ADMIN].lock:
        rt = request.app[HOLDER].current
        assert rt is not None
        if any(n.id == node.id for n in rt.config.nodes):
            raise InvalidRequest("id", f"node {node.id!r} already exists")
        new = RouterConfig.model_validate({**rt.config.model_dump(), "nodes": (*rt.config.nodes, node)})
        await _change(request, who, "node.add", rt.config, new)
    return json_response({"node": node.model_dump(mode="json")}, status=201)


async def admin_nodes_delete(request: web.Request) -> web.Response:
    _, who = await _admin(request)
    node_id = request.match_info["node_id"]
    async with request.app[ADMIN].lock:
        rt = request.app[HOLDER].current
        assert rt is not None
        if not any(n.id == node_id for n in rt.config.nodes):
            raise NotFound(f"node {node_id!r} is not configured")
        new = rt.config.model_copy(update={"nodes": tuple(n for n in rt.config.nodes if n.id != node_id)})
        await _change(request, who, "node.delete", rt.config, new)
    return json_response({"deleted": node_id})


async def admin_config_get(request: web.Request) -> web.Response:
    rt, _ = await _admin(request)
    return json_response({"generation": rt.generation, "config": rt.config.model_dump(mode="json")})


async def admin_config_put(request: web.Request) -> web.Response:
    _, who = await _admin(request)
    cfg = _validate(await _json_body(request), RouterConfig)
    async with request.app[ADMIN].lock:
        rt = request.app[HOLDER].current
        assert rt is not None
        rt = await _change(request, who, "config.replace", rt.config, cfg)
    return json_response({"generation": rt.generation, "config": rt.config.model_dump(mode="json")})
