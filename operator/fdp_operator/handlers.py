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
    _state["kube"] = await Kube.connect()
    _state["probe_session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))


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


async def _reconcile_router(body: kopf.Body) -> None:
    async with _lock(body.metadata.uid or ""):
        outcome = await reconcile_router(_kube(), dict(body), _now())
    for message in outcome.rendered.plan.events if outcome.rendered is not None else ():
        kopf.info(body, reason="Rollout", message=message)  # promoted, switched, aborted...
    ready = next((c for c in outcome.status.get("conditions", []) if c["type"] == "Ready"), None)
    if outcome.written and ready is not None:
        log.info(
            "FederatedRouter %s/%s: Ready=%s (%s) %s",
            body.metadata.namespace,
            body.metadata.name,
            ready["status"],
            ready["reason"],
            ready["message"],
        )


@kopf.on.resume(GROUP, VERSION, "federatedrouters")
@kopf.on.create(GROUP, VERSION, "federatedrouters")
@kopf.on.update(GROUP, VERSION, "federatedrouters")
async def router_changed(body: kopf.Body, **_: Any) -> None:
    await _reconcile_router(body)


@kopf.timer(
    GROUP, VERSION, "federatedrouters", interval=CONFIG.resync_seconds, initial_delay=CONFIG.resync_seconds
)
async def router_resync(body: kopf.Body, **_: Any) -> None:
    await _reconcile_router(body)


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
    await _reconcile_policy(body, router_refs)


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


@kopf.timer(GROUP, VERSION, "hospitalnodes", interval=CONFIG.probe_tick_seconds)
async def node_probe(body: kopf.Body, memo: kopf.Memo, router_refs: kopf.Index[str, Any], **_: Any) -> None:
    interval = float(((body.spec.get("healthCheck") or {}).get("intervalSeconds")) or 10)
    loop = asyncio.get_running_loop()
    gen = int(body.metadata.get("generation", 1))
    due = memo.get("next_probe", 0.0)
    # A spec change (new endpoint, new interval) probes at once.
    if loop.time() < due and memo.get("generation") == gen:
        return
    memo["next_probe"] = loop.time() + interval
    memo["generation"] = gen
    meta = body.metadata
    used_by = _routers_selecting(router_refs, meta.namespace or "", meta.labels or {})
    async with _lock(meta.uid or ""):
        outcome = await reconcile_node(_kube(), _state["probe_session"], dict(body), _now(), used_by)
    if outcome.event is not None:
        log.info(
            "HospitalNode %s/%s: %s %s",
            meta.namespace,
            meta.name,
            outcome.event.reason,
            outcome.event.message,
        )
        kopf.event(body, type=outcome.event.type, reason=outcome.event.reason, message=outcome.event.message)
