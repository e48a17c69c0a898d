"""Reconcile one FederatedRouter: ordered idempotent steps ending in one status write.

Steps: parse the spec (edge) -> the image must be in an allowed repository (security.py)
-> resolve the PrivacyPolicy (it must parse and pass the router's own policy check,
guarantee.py) -> resolve HospitalNodes (selected ones whose Secrets are allowed reach the
config, healthy or not: the router probes them itself) -> TLS -> the Secrets the spec names
(opt-in label, keys) -> observe owned children -> the ledger's claim and audit key
(ledger_step.py) -> render (pure) -> apply and prune -> conditions (pure chain) -> write
status if it changed.
A step that cannot proceed (invalid spec, image not allowed, a Secret refused,
missing/invalid policy, missing TLS Secret) returns early *without touching the children*,
so running pods keep their last good config; the status then says why. Called by
handlers.py on create/update/resume and on the resync timer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from fdp_operator import conditions as cond
from fdp_operator.analysis import fetch_analysis
from fdp_operator.apply import apply_all, delete_all, write_status
from fdp_operator.guarantee import PolicyRefused, assess
from fdp_operator.kube import ApiError, Kube
from fdp_operator.models import (
    FederatedRouter,
    HospitalNode,
    SpecError,
    parse_node,
    parse_policy,
    parse_router,
)
from fdp_operator.reconcile.ledger_step import ensure_ledger
from fdp_operator.reconcile.tls_step import ensure_tls
from fdp_operator.render import names
from fdp_operator.render.config import selected_nodes
from fdp_operator.render.router import Rendered, dsn_targets, render
from fdp_operator.render.workloads import SCALE_FIELD_MANAGER, ObservedState
from fdp_operator.rollout.types import RolloutStatus
from fdp_operator.security import (
    OperatorSettings,
    image_refusal,
    node_secret_uses,
    refusals,
    router_secret_uses,
    scheduling_refusal,
)

log = logging.getLogger(__name__)
KIND = "FederatedRouter"


@dataclass(frozen=True)
class Outcome:
    status: dict[str, Any]
    written: bool
    requeue_after: float | None = None
    rendered: Rendered | None = None


def _stamp(t: datetime | None) -> str | None:
    return None if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def node_is_healthy(body: Mapping[str, Any]) -> bool:
    """A node serves until it has failed ``failureThreshold`` probes in a row."""
    threshold = int(((body.get("spec") or {}).get("healthCheck") or {}).get("failureThreshold", 3))
    failures = int((body.get("status") or {}).get("consecutiveFailures", 0) or 0)
    return failures < threshold


def parse_nodes(bodies: Sequence[Mapping[str, Any]]) -> list[HospitalNode]:
    out = []
    for b in bodies:
        try:
            out.append(parse_node(dict(b), healthy=node_is_healthy(b)))
        except SpecError as exc:
            log.warning("skipping invalid HospitalNode %s: %s", (b.get("metadata") or {}).get("name"), exc)
    return out


def _owned(items: list[dict[str, Any]], uid: str) -> dict[str, dict[str, Any]]:
    return {
        i["metadata"]["name"]: i
        for i in items
        if any(r.get("uid") == uid for r in i["metadata"].get("ownerReferences") or [])
    }


def _active_or_weight(rollout: Mapping[str, Any]) -> str:
    if rollout.get("activeColor"):
        return str(rollout["activeColor"])
    if rollout.get("canaryWeight") is not None:
        return f"{rollout['canaryWeight']}%"
    return "-"


def _failed(body: Mapping[str, Any], obs: cond.RouterObservation, now: datetime, gen: int) -> dict[str, Any]:
    """Status when reconcile stopped early: the old fields stay, conditions say why."""
    old = dict(body.get("status") or {})
    old["observedGeneration"] = gen
    old["conditions"] = cond.merge(old.get("conditions"), cond.router_status(obs, ""), now, gen)
    return old


async def read_secrets(kube: Kube, namespace: str, names_: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """The named Secrets (None: absent), each read once, concurrently."""
    unique = sorted(set(names_))
    found = await asyncio.gather(*(kube.get("Secret", namespace, n) for n in unique))
    return dict(zip(unique, found, strict=True))


def allowed_nodes(
    nodes: Sequence[HospitalNode], secrets: Mapping[str, Mapping[str, Any] | None]
) -> tuple[list[HospitalNode], tuple[str, ...]]:
    """Nodes whose Secrets may be mounted, and "node: why" for each one left out."""
    keep, refused = [], []
    for n in nodes:
        why = refusals(node_secret_uses(n), secrets)
        if why:
            refused.append(f"{n.ref.name}: {why[0].message}")
        else:
            keep.append(n)
    return keep, tuple(refused)


def _ledger_targets(
    router: FederatedRouter, secrets: Mapping[str, Mapping[str, Any] | None]
) -> list[tuple[str, int]]:
    """Where the PostgreSQL ledger lives (for the NetworkPolicy's egress), read from its DSN."""
    ref = router.spec.ledger.dsn_secret_ref
    if router.spec.ledger.backend != "postgres" or ref is None:
        return []
    raw = ((secrets.get(ref.name) or {}).get("data") or {}).get(ref.key)
    if not raw:
        return []
    try:
        return dsn_targets(base64.b64decode(raw).decode())
    except (ValueError, UnicodeDecodeError):
        return [("", 5432)]


async def reconcile_router(
    kube: Kube, body: Mapping[str, Any], now: datetime, settings: OperatorSettings | None = None
) -> Outcome:
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation", 1))
    old_status = dict(body.get("status") or {})

    async def finish(status: dict[str, Any], **kw: Any) -> Outcome:
        written = await write_status(kube, KIND, ns, name, old_status, status)
        return Outcome(status=status, written=written, **kw)

    # 1. the spec, parsed once
    try:
        router = parse_router(dict(body))
    except SpecError as exc:
        return await finish(_failed(body, cond.RouterObservation(spec_error=str(exc)), now, gen))
    settings = settings or OperatorSettings()
    obs = cond.RouterObservation(policy_name=router.spec.policy_ref.name)

    # 1b. only images from the repositories the operator's administrator allows
    image_error = image_refusal(router.spec.image, settings.allowed_image_repositories)
    if image_error is not None:
        return await finish(_failed(body, replace(obs, image_error=image_error), now, gen))
    # 1c. only the priority classes and tolerations the administrator allows
    scheduling_error = scheduling_refusal(router.spec.scheduling, settings)
    if scheduling_error is not None:
        return await finish(_failed(body, replace(obs, scheduling_error=scheduling_error), now, gen))

    # 2. the policy: missing or invalid -> stop before touching children
    policy_body = await kube.get("PrivacyPolicy", ns, router.spec.policy_ref.name)
    if policy_body is None:
        return await finish(_failed(body, replace(obs, policy_found=False), now, gen))
    try:
        policy = parse_policy(policy_body)
        # the pods would refuse it at start-up (their ledger runs the same check)
        await asyncio.to_thread(assess, policy.spec.config(policy.ref.name))
    except (SpecError, PolicyRefused) as exc:
        return await finish(_failed(body, replace(obs, policy_error=str(exc)), now, gen))

    # 3.-5. the nodes, TLS and the children we own: independent reads, done concurrently
    # (the API server filters nodes by the selector; selected_nodes re-checks it).
    selector = f"{names.ROUTER_LABEL}={name}"
    uid = router.ref.uid
    node_items, tls_state, *owned_lists = await asyncio.gather(
        kube.list("HospitalNode", ns, router.spec.node_selector.to_query() or None),
        ensure_tls(kube, router, now),
        *(
            kube.list(kind, ns, selector)
            for kind in ("Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "NetworkPolicy")
        ),
    )
    # the Secrets the router's spec and its nodes name: mounted only if their owner opted in
    candidates = selected_nodes(router, parse_nodes(node_items))
    uses = router_secret_uses(router)
    secrets = await read_secrets(
        kube, ns, [u.name for u in uses] + [u.name for n in candidates for u in node_secret_uses(n)]
    )
    nodes, refused_nodes = allowed_nodes(candidates, secrets)
    selected = selected_nodes(router, nodes)
    ready = [n for n in selected if n.healthy]
    obs = replace(
        obs,
        nodes_selected=len(selected),
        nodes_ready=len(ready),
        not_ready_nodes=tuple(n.ref.name for n in selected if not n.healthy),
        refused_nodes=refused_nodes,
    )
    refused = [(r.reason, r.message) for r in refusals(uses, secrets)]
    if tls_state.refused is not None:
        refused.append(tls_state.refused)
    if refused:
        return await finish(_failed(body, replace(obs, secret_refusals=tuple(refused)), now, gen))
    if tls_state.error:
        return await finish(_failed(body, replace(obs, tls_error=tls_state.error), now, gen))
    # the ledger outlives pods: its claim (sqlite) and audit key exist before any pod mounts them
    try:
        ledger = await ensure_ledger(kube, router)
    except ApiError as exc:
        return await finish(
            _failed(
                body,
                replace(obs, apply_error=f"creating the ledger's claim or audit key failed: {exc}"),
                now,
                gen,
            )
        )
    if ledger.refusal is not None:
        refusal = ((ledger.refusal.reason, ledger.refusal.message),)
        return await finish(_failed(body, replace(obs, secret_refusals=refusal), now, gen))
    deployments, services, config_maps, hpas, netpols = (_owned(items, uid) for items in owned_lists)
    observed = ObservedState(
        now=now,
        deployments=deployments,
        services=services,
        previous_rollout_status=old_status.get("rollout") or {},
        hpa=hpas.get(name),
        analysis=await fetch_analysis(router, RolloutStatus.from_dict(old_status.get("rollout"))),
    )

    # 6. render (pure)
    rendered = render(
        router,
        policy,
        nodes,
        tls_secret=tls_state.secret_name,
        tls_serial=tls_state.serial,
        observed=observed,
        owned_config_maps={n: cm for n, cm in config_maps.items() if n.startswith(f"{name}-config-")},
        hpa_exists=name in hpas,
        network_policy_exists=name in netpols,
        default_ingress_from=settings.default_ingress_from,
        ledger_targets=_ledger_targets(router, secrets),
    )

    # 7. apply and prune
    try:
        await apply_all(kube, rendered.objects, (KIND, name, uid))
        # replica counts of blue/green and canary Deployments: their own field manager, so
        # a count the HPA owns is never sent (and never reset) by the manifests above
        await apply_all(kube, rendered.plan.scale, (KIND, name, uid), field_manager=SCALE_FIELD_MANAGER)
        await delete_all(kube, ns, rendered.prune)
    except ApiError as exc:
        return await finish(
            _failed(body, replace(obs, apply_error=f"applying children failed: {exc}"), now, gen)
        )

    # 8. conditions and the one status write
    plan = rendered.plan
    obs = replace(
        obs,
        rollout=plan.rollout,
        tls_external=bool(router.spec.tls.secret_name),
        tls_valid_until=_stamp(tls_state.not_after) or "an unknown time",
    )
    ready_msg = f"{plan.replicas.get('available', 0)} replica(s) serving {len(ready)} hospital node(s)"
    conds = cond.router_status(obs, ready_msg)
    svc = router.spec.service
    status: dict[str, Any] = {
        "observedGeneration": gen,
        "conditions": cond.merge(old_status.get("conditions"), conds, now, gen),
        "rollout": plan.rollout_status,
        "replicas": plan.replicas.get("desired", 0),
        "readyReplicas": plan.replicas.get("ready", 0),
        "availableReplicas": plan.replicas.get("available", 0),
        "endpoint": f"https://{names.service(name)}.{ns}.svc:{svc.port}",
        "configHash": rendered.config_hash,
        "ledger": {
            k: v
            for k, v in {
                "backend": router.spec.ledger.backend,
                "claimName": ledger.claim,
                "claimPhase": ledger.claim_phase,
                "auditKeySecret": ledger.audit_key_secret,
            }.items()
            if v is not None
        },
        "configMapName": rendered.config_map_name,
        "nodes": {"selected": len(candidates), "ready": len(ready), "names": rendered.node_names},
        "nodesSummary": f"{len(ready)}/{len(candidates)}",
        "activeOrWeight": _active_or_weight(plan.rollout_status),
        "tls": {
            k: v
            for k, v in {
                "secretName": tls_state.secret_name,
                "notAfter": _stamp(tls_state.not_after),
                "renewalTime": _stamp(tls_state.renewal_time),
                "serial": tls_state.serial,
            }.items()
            if v is not None
        },
    }
    requeue = plan.requeue_after
    if tls_state.renewal_time is not None:
        until = max(0.0, (tls_state.renewal_time - now).total_seconds())
        requeue = until if requeue is None else min(requeue, until)
    return await finish(status, requeue_after=requeue, rendered=rendered)
