"""kopf wiring: which event calls which reconcile function. No logic of its own.

Imported by ``fdp-operator run`` (cli.py) before ``kopf.run``. FederatedRouters and
PrivacyPolicies reconcile on create/update/resume and on a resync timer (nodes and
policies change under a router without touching it); HospitalNodes are probed by a
per-object timer. Reconciles of one object are serialised by a per-object lock because
kopf runs timers beside change handlers. kopf keeps its bookkeeping in ``fdp.io/``
annotations, never in ``status`` (status is ours, and only ours).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kopf

from fdp_operator import conditions as cond
from fdp_operator.kube import Kube
from fdp_operator.models import GROUP, VERSION, LabelSelector
from fdp_operator.reconcile.node import reconcile_node
from fdp_operator.reconcile.policy import reconcile_policy
from fdp_operator.reconcile.router import reconcile_router
from fdp_operator.render.names import ROUTER_LABEL
from fdp_operator.security import OperatorSettings

log = logging.getLogger("fdp_operator")


@dataclass(frozen=True)
class OperatorConfig:
    """Read at import time (kopf decorators need the numbers): cli.py sets the env first."""

    resync_seconds: float = float(os.environ.get("FDP_RESYNC_SECONDS", "10"))
    probe_tick_seconds: float = float(os.environ.get("FDP_PROBE_TICK_SECONDS", "1"))


CONFIG = OperatorConfig()
_locks: dict[str, asyncio.Lock] = {}
_state: dict[str, Any] = {}


def _lock(uid: str) -> asyncio.Lock:
    return _locks.setdefault(uid, asyncio.Lock())


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _kube() -> Kube:
    return _state["kube"]  # type: ignore[no-any-return]


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 4
    # Least privilege: no cluster-wide list/watch of CRDs and namespaces. The namespaces are
    # fixed at start-up and preflight checked the CRDs, so dynamic scanning buys nothing.
    settings.scanning.disabled = True
    # the administrator's policy (allowed images, default ingress): cli.py exported it
    _state["settings"] = OperatorSettings.from_env(os.environ)
    log.info(
        "allowed router image repositories: %s",
        ", ".join(_state["settings"].allowed_image_repositories),
    )
    _state["kube"] = await Kube.connect()
    # force_close: a probe measures a fresh connection, and no idle TLS connections pile up.
    _state["probe_session"] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64, force_close=True)
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if "kube" in _state:
        await _state.pop("kube").close()
    if "probe_session" in _state:
        await _state.pop("probe_session").close()


# ---------------------------------------------------------------- indexes (in memory)


@kopf.index(GROUP, VERSION, "federatedrouters")
def router_refs(namespace: str, name: str, spec: Mapping[str, Any], **_: Any) -> dict[str, Any]:
    """namespace -> (router name, node selector, policy name): for usedBy lists."""
    selector = spec.get("nodeSelector") or {}
    policy = (spec.get("policyRef") or {}).get("name", "")
    return {namespace: (name, selector, policy)}


def _routers_selecting(index: kopf.Index[str, Any], namespace: str, labels: Mapping[str, str]) -> list[str]:
    out = []
    for name, selector, _policy in index.get(namespace, []):
        try:
            if LabelSelector.model_validate(selector).matches(dict(labels)):
                out.append(name)
        except ValueError:
            continue
    return out


def _routers_using(index: kopf.Index[str, Any], namespace: str, policy: str) -> list[str]:
    return [name for name, _sel, pol in index.get(namespace, []) if pol == policy]


# ---------------------------------------------------------------- FederatedRouter


async def _reconcile_router(body: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    async with _lock(str(meta.get("uid", ""))):
        # Re-read under the lock: a body from an earlier event (kopf's, or a poke queued
        # behind another reconcile) carries a stale status, and the rollout engine resumes
        # from status; deciding from a stale one would step a rollout back (flapping).
        fresh = await _kube().get("FederatedRouter", str(meta.get("namespace")), str(meta.get("name")))
        if fresh is None:
            return
        body = fresh
        outcome = await reconcile_router(_kube(), dict(body), _now(), _state.get("settings"))
    for message in outcome.rendered.plan.events if outcome.rendered is not None else ():
        # rollout transitions (switched, promoted, aborted...) as Events on the router
        kopf.info(dict(body), reason="Rollout", message=message)  # type: ignore[arg-type]
    if outcome.requeue_after is not None and outcome.requeue_after < CONFIG.resync_seconds:
        # The rollout engine (or a certificate) wants a look before the next resync.
        asyncio.get_running_loop().call_later(
            max(0.5, outcome.requeue_after), poke_router, str(meta.get("namespace")), str(meta.get("name"))
        )
    ready = next((c for c in outcome.status.get("conditions", []) if c["type"] == "Ready"), None)
    if outcome.written and ready is not None:
        log.info(
            "FederatedRouter %s/%s: Ready=%s (%s) %s",
            meta.get("namespace"),
            meta.get("name"),
            ready["status"],
            ready["reason"],
            ready["message"],
        )


_pending: set[tuple[str, str]] = set()
_poke_tasks: set[asyncio.Task[None]] = set()


def poke_router(namespace: str, name: str) -> None:
    """Reconcile a router soon (its Deployment, a node or its policy changed); bursts coalesce."""
    key = (namespace, name)
    if key in _pending:
        return
    _pending.add(key)
    task = asyncio.get_running_loop().create_task(_poked(key))
    _poke_tasks.add(task)
    task.add_done_callback(_poke_tasks.discard)


async def _poked(key: tuple[str, str]) -> None:
    try:
        await asyncio.sleep(0.2)
        _pending.discard(key)
        body = await _kube().get("FederatedRouter", *key)
        if body is not None:
            await _reconcile_router(body)
    except Exception:
        log.exception("reconciling FederatedRouter %s/%s after a change failed; the resync retries", *key)
    finally:
        _pending.discard(key)


@kopf.on.resume(GROUP, VERSION, "federatedrouters")
@kopf.on.create(GROUP, VERSION, "federatedrouters")
@kopf.on.update(GROUP, VERSION, "federatedrouters")
async def router_changed(body: kopf.Body, **_: Any) -> None:
    await _reconcile_router(body)


@kopf.timer(
    GROUP, VERSION, "federatedrouters", interval=CONFIG.resync_seconds, initial_delay=CONFIG.resync_seconds
)
async def router_resync(body: kopf.Body, **_: Any) -> None:
    """Safety net and clock: certificate renewal time, anything a poke missed."""
    await _reconcile_router(body)


@kopf.on.event("apps", "v1", "deployments", labels={ROUTER_LABEL: kopf.PRESENT})
async def router_deployment_changed(body: kopf.Body, **_: Any) -> None:
    """A router's Deployment moved (became available, rolled): update the router's status now."""
    for ref in body.metadata.get("ownerReferences") or []:
        if ref.get("kind") == "FederatedRouter" and ref.get("apiVersion", "").startswith(f"{GROUP}/"):
            poke_router(body.metadata.namespace or "", ref["name"])


# ---------------------------------------------------------------- PrivacyPolicy


async def _reconcile_policy(body: kopf.Body, router_refs: kopf.Index[str, Any]) -> None:
    meta = body.metadata
    used_by = _routers_using(router_refs, meta.namespace or "", meta.name or "")
    async with _lock(meta.uid or ""):
        await reconcile_policy(_kube(), dict(body), used_by, _now())


@kopf.on.resume(GROUP, VERSION, "privacypolicies")
@kopf.on.create(GROUP, VERSION, "privacypolicies")
@kopf.on.update(GROUP, VERSION, "privacypolicies")
async def policy_changed(body: kopf.Body, router_refs: kopf.Index[str, Any], **_: Any) -> None:
    meta = body.metadata
    for router in _routers_using(router_refs, meta.namespace or "", meta.name or ""):
        poke_router(meta.namespace or "", router)
    await _reconcile_policy(body, router_refs)


@kopf.on.delete(GROUP, VERSION, "privacypolicies", optional=True)
async def policy_deleted(body: kopf.Body, router_refs: kopf.Index[str, Any], **_: Any) -> None:
    meta = body.metadata
    for router in _routers_using(router_refs, meta.namespace or "", meta.name or ""):
        poke_router(meta.namespace or "", router)


@kopf.timer(
    GROUP, VERSION, "privacypolicies", interval=CONFIG.resync_seconds, initial_delay=CONFIG.resync_seconds
)
async def policy_resync(body: kopf.Body, router_refs: kopf.Index[str, Any], **_: Any) -> None:
    await _reconcile_policy(body, router_refs)


# ---------------------------------------------------------------- HospitalNode


@kopf.on.create(GROUP, VERSION, "hospitalnodes")
async def node_created(body: kopf.Body, **_: Any) -> None:
    """Ready=False + Reconciling=True at once, before the first probe."""
    if not (body.get("status") or {}).get("conditions"):
        gen = int(body.metadata.get("generation", 1))
        await _kube().patch_status(
            "HospitalNode",
            body.metadata.namespace or "",
            body.metadata.name or "",
            {
                "observedGeneration": gen,
                "conditions": cond.merge(
                    [], cond.initial_conditions("waiting for the first health probe"), _now(), gen
                ),
            },
        )


@kopf.daemon(GROUP, VERSION, "hospitalnodes", cancellation_timeout=5)
async def node_prober(
    body: kopf.Body, stopped: kopf.DaemonStopped, router_refs: kopf.Index[str, Any], **_: Any
) -> None:
    """One long-lived task per node: probe, record, sleep ``intervalSeconds`` (a spec change
    probes at once). ``body`` is kopf's live view of the latest object."""
    while not stopped:
        meta = body.metadata
        gen = int(meta.get("generation", 1))
        ns = meta.namespace or ""
        used_by = _routers_selecting(router_refs, ns, meta.labels or {})
        try:
            async with _lock(meta.uid or ""):
                outcome = await reconcile_node(_kube(), _state["probe_session"], dict(body), _now(), used_by)
        except Exception:
            log.exception("probing HospitalNode %s/%s failed; retrying", ns, meta.name)
        else:
            if outcome.event is not None:
                log.info(
                    "HospitalNode %s/%s: %s %s", ns, meta.name, outcome.event.reason, outcome.event.message
                )
                kopf.event(
                    body, type=outcome.event.type, reason=outcome.event.reason, message=outcome.event.message
                )
                for router in used_by:  # the node joins or leaves their config now, not at the next resync
                    poke_router(ns, router)
        interval = float(((body.spec.get("healthCheck") or {}).get("intervalSeconds")) or 10)
        deadline = asyncio.get_running_loop().time() + interval
        while not stopped and int(body.metadata.get("generation", 1)) == gen:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            await stopped.wait(min(left, CONFIG.probe_tick_seconds))
