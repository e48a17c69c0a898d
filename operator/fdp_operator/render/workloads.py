"""THE SEAM between the operator core and progressive delivery: router workloads.

``render_workloads(router, pod_template, observed) -> WorkloadPlan`` decides which
Deployments and Services serve a FederatedRouter's traffic. The operator core
(``reconcile/router.py``) builds the pod template (config hash, TLS, probes, security),
observes the Deployments/Services the router already owns, calls this function, applies
``plan.objects``, deletes ``plan.prune``, points the HPA at ``plan.hpa_target``, and merges
``plan.rollout_status``, ``plan.conditions`` and ``plan.replicas`` into the CR status. It
requeues after ``plan.requeue_after`` seconds when set.

Inputs
  router        the parsed FederatedRouter (``router.spec.rollout`` holds the strategy,
                ``router.annotations`` the user's promote/abort intents).
  pod_template  the complete desired pod template (metadata + spec) for the *current*
                revision; ``revision_of(pod_template)`` is its stable hash.
  observed      what exists now: owned Deployments and Services by name, the HPA's
                view, the previous ``status.rollout`` (to resume after a restart), and
                ``now`` (never read the clock inside this module).

Output (WorkloadPlan)
  objects         Deployments + Services to server-side apply (plain dicts, no ownerRefs:
                  the apply layer adds them).
  prune           (kind, name) of owned workload objects to delete.
  hpa_target      name of the Deployment the HPA scales (what serves traffic).
  rollout_status  dict written to ``status.rollout`` (strategy, activeColor, previewColor,
                  stableRevision, currentRevision, currentStepIndex, canaryWeight, pauseReason).
  conditions      extra conditions (e.g. ``Paused``) as (type, status, reason, message).
  replicas        {desired, ready, available, updated} across serving Deployments.
  available       True when the current revision serves with every desired replica available.
  progressing     True while a change is still rolling out.
  stalled_reason / message   set when the rollout failed (deadline, analysis, abort).
  requeue_after   seconds until the engine wants to look again (timers, delays), or None.

This first version implements only the plain single-Deployment case (RollingUpdate). The
rollout engine (issue 6) replaces the body with blue/green and canary; the signature and
``WorkloadPlan`` fields are the contract.

Pure: no I/O, no clock, no Kubernetes client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fdp_operator.models import FederatedRouter
from fdp_operator.render import names

REVISION_ANNOTATION = "fdp.io/revision"


@dataclass(frozen=True)
class ObservedState:
    now: datetime
    deployments: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    services: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    previous_rollout_status: Mapping[str, Any] = field(default_factory=dict)
    hpa: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class WorkloadPlan:
    objects: list[dict[str, Any]]
    prune: list[tuple[str, str]]
    hpa_target: str
    rollout_status: dict[str, Any]
    conditions: list[tuple[str, str, str, str]] = field(default_factory=list)
    replicas: dict[str, int] = field(default_factory=dict)
    available: bool = False
    progressing: bool = True
    stalled_reason: str | None = None
    message: str = ""
    requeue_after: float | None = None


def revision_of(pod_template: Mapping[str, Any]) -> str:
    """Stable short hash of a pod template: the rollout's notion of a revision."""
    raw = json.dumps(pod_template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(raw).hexdigest()[:10]


def deployment_available(dep: Mapping[str, Any] | None, desired: int) -> bool:
    """The Deployment controller has seen the latest spec and every desired replica is available."""
    if dep is None:
        return False
    meta, status = dep.get("metadata", {}), dep.get("status") or {}
    if int(status.get("observedGeneration", 0)) < int(meta.get("generation", 0)):
        return False
    return (
        int(status.get("updatedReplicas", 0)) >= desired
        and int(status.get("availableReplicas", 0)) >= desired
        and int(status.get("replicas", 0)) == int(status.get("updatedReplicas", 0))
    )


def render_service(router: FederatedRouter, name: str, selector: dict[str, str]) -> dict[str, Any]:
    svc = router.spec.service
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": router.ref.namespace,
            "labels": names.common_labels(router.ref.name),
            "annotations": dict(svc.annotations),
        },
        "spec": {
            "type": svc.type,
            "selector": selector,
            "ports": [{"name": "https", "port": svc.port, "targetPort": "https", "protocol": "TCP"}],
        },
    }


def render_deployment(
    router: FederatedRouter, name: str, pod_template: Mapping[str, Any], replicas: int | None
) -> dict[str, Any]:
    """A Deployment of the router; ``replicas=None`` leaves spec.replicas to the HPA."""
    selector = names.selector_labels(router.ref.name)
    template = json.loads(json.dumps(pod_template))
    template.setdefault("metadata", {}).setdefault("labels", {}).update(selector)
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector},
        "revisionHistoryLimit": 3,
        "progressDeadlineSeconds": router.spec.rollout.progress_deadline_seconds,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": template,
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": router.ref.namespace,
            "labels": names.common_labels(router.ref.name),
        },
        "spec": spec,
    }


def _replica_counts(dep: Mapping[str, Any] | None, desired: int) -> dict[str, int]:
    status = (dep or {}).get("status") or {}
    return {
        "desired": desired,
        "ready": int(status.get("readyReplicas", 0)),
        "available": int(status.get("availableReplicas", 0)),
        "updated": int(status.get("updatedReplicas", 0)),
    }


def render_workloads(
    router: FederatedRouter, pod_template: Mapping[str, Any], observed: ObservedState
) -> WorkloadPlan:
    """Plain case: one Deployment ``<name>`` (RollingUpdate) behind one Service ``<name>``."""
    spec = router.spec
    name = names.deployment(router.ref.name)
    existing = observed.deployments.get(name)
    autoscaled = spec.autoscaling.enabled
    # With an HPA the operator never sets spec.replicas: the HPA owns it.
    desired = (
        int(((existing or {}).get("spec") or {}).get("replicas", spec.autoscaling.min_replicas))
        if autoscaled
        else spec.replicas
    )
    dep = render_deployment(router, name, pod_template, None if autoscaled else spec.replicas)
    revision = revision_of(dep["spec"]["template"])
    svc = render_service(router, names.service(router.ref.name), names.selector_labels(router.ref.name))
    dep["metadata"]["annotations"] = {REVISION_ANNOTATION: revision}
    current_in_cluster = (
        existing is not None
        and ((existing.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION) == revision
    )
    available = current_in_cluster and deployment_available(existing, desired)
    previous_stable = observed.previous_rollout_status.get("stableRevision")
    stalled = None
    for cond in ((existing or {}).get("status") or {}).get("conditions", []):
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            stalled = "ProgressDeadlineExceeded"
    return WorkloadPlan(
        objects=[dep, svc],
        prune=[],
        hpa_target=name,
        rollout_status={
            "strategy": spec.rollout.strategy.value,
            "currentRevision": revision,
            "stableRevision": revision if available else previous_stable,
        },
        replicas=_replica_counts(existing, desired),
        available=available,
        progressing=not available and stalled is None,
        stalled_reason=stalled,
        message=(
            f"deployment {name} has {desired} available replica(s) of revision {revision}"
            if available
            else f"waiting for deployment {name} to roll out revision {revision}"
        ),
    )
