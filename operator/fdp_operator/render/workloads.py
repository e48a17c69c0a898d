"""THE SEAM between the operator core and progressive delivery: router workloads.

``render_workloads(router, pod_template, observed) -> WorkloadPlan`` decides which
Deployments and Services serve a FederatedRouter's traffic. The operator core
(``reconcile/router.py``) builds the pod template (config hash, TLS, probes, security),
observes the Deployments/Services the router already owns, calls this function, applies
``plan.objects``, deletes ``plan.prune``, points the HPA at ``plan.hpa_target``, and merges
``plan.rollout_status`` and ``plan.replicas`` into the CR status; ``plan.rollout`` are the
facts ``conditions.router_status`` turns into conditions. It requeues after
``plan.requeue_after`` seconds when set.

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
  replicas        {desired, ready, available, updated} across serving Deployments.
  rollout         ``conditions.RolloutFacts``: available (the current revision serves with
                  every desired replica available), progressing (a change is still rolling
                  out), stalled (the rollout failed: deadline, analysis, abort), paused, message.
  requeue_after   seconds until the engine wants to look again (timers, delays), or None.

Strategies: ``RollingUpdate`` is the plain single-Deployment case below. ``BlueGreen`` and
``Canary`` are decided by the rollout engine (``fdp_operator.rollout``): this module only
translates between cluster objects and the engine's typed input/decision. Deployments are
``<name>-blue``/``<name>-green`` or ``<name>-stable``/``<name>-canary``; the active Service
is ``<name>``, the blue/green preview Service ``<name>-preview``. A role's pods carry
``fdp.io/color`` or ``fdp.io/track`` so Services and Deployments select exactly them. For
progressive strategies ``available`` means "the stable revision serves" (so Ready stays True
during a rollout and after a rollback) and ``progressing`` that a change is rolling out.
Switching strategy (``rollout/switch.py``): the old strategy's serving Deployment, the
*incumbent*, keeps serving (the active Service keeps selecting it) while the new strategy's
stable role starts with a copy of its pod template; then the incumbent and every other
Deployment of the old strategy are pruned and the desired revision rolls out under the new
strategy. Old-strategy Deployments that do not serve (a preview, a canary) go at once.

Pure: no I/O, no clock, no Kubernetes client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fdp_operator import rollout
from fdp_operator.conditions import RolloutFacts
from fdp_operator.models import FederatedRouter, RolloutStrategy
from fdp_operator.render import names
from fdp_operator.rollout import intents
from fdp_operator.rollout.bluegreen import BLUE, GREEN
from fdp_operator.rollout.canary import CANARY, STABLE
from fdp_operator.rollout.revision import REVISION_ANNOTATION, ROLE_LABELS, revision_of
from fdp_operator.rollout.switch import PLAIN
from fdp_operator.rollout.types import Analysis, DeploymentView, Incumbent, RolloutInput, RolloutStatus

__all__ = [
    "REVISION_ANNOTATION",
    "SCALE_FIELD_MANAGER",
    "ObservedState",
    "WorkloadPlan",
    "render_workloads",
    "revision_of",
]


@dataclass(frozen=True)
class ObservedState:
    now: datetime
    deployments: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    services: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    previous_rollout_status: Mapping[str, Any] = field(default_factory=dict)
    hpa: Mapping[str, Any] | None = None
    #: verdict of the rollout analysis (fdp_operator.analysis), when one is configured
    analysis: Analysis | None = None


@dataclass(frozen=True)
class WorkloadPlan:
    objects: list[dict[str, Any]]
    prune: list[tuple[str, str]]
    hpa_target: str
    rollout_status: dict[str, Any]
    replicas: dict[str, int] = field(default_factory=dict)
    rollout: RolloutFacts = field(default_factory=RolloutFacts)
    requeue_after: float | None = None
    #: rollout transitions to post as Events on the FederatedRouter (switched, promoted, aborted)
    events: tuple[str, ...] = ()
    #: replicas-only Deployment objects, applied after ``objects`` with SCALE_FIELD_MANAGER
    scale: list[dict[str, Any]] = field(default_factory=list)

    @property
    def available(self) -> bool:
        return self.rollout.available

    @property
    def progressing(self) -> bool:
        return self.rollout.progressing

    @property
    def stalled_reason(self) -> str | None:
        return self.rollout.stalled

    @property
    def message(self) -> str:
        return self.rollout.message


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
        "strategy": (
            # one SQLite ledger on one claim: the old pod is gone before the new one starts
            {"type": "Recreate"}
            if router.spec.ledger.backend == "sqlite"
            else {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
        ),
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
    """Deployments and Services for the router's rollout strategy (see the module docstring)."""
    if router.spec.rollout.strategy in (RolloutStrategy.BLUE_GREEN, RolloutStrategy.CANARY):
        return _progressive(router, pod_template, observed)
    return _plain(router, pod_template, observed)


def _plain(router: FederatedRouter, pod_template: Mapping[str, Any], observed: ObservedState) -> WorkloadPlan:
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
        prune=_stale_progressive(router, observed, keep=()) if available else [],
        hpa_target=name,
        rollout_status={
            "strategy": spec.rollout.strategy.value,
            "currentRevision": revision,
            "stableRevision": revision if available else previous_stable,
        },
        replicas=_replica_counts(existing, desired),
        rollout=RolloutFacts(
            available=available,
            progressing=not available and stalled is None,
            stalled=stalled,
            message=(
                f"deployment {name} has {desired} available replica(s) of revision {revision}"
                if available
                else f"waiting for deployment {name} to roll out revision {revision}"
            ),
        ),
    )


# ---------------------------------------------------------------- progressive strategies

COLOR_LABEL = "fdp.io/color"
#: Field manager of blue/green and canary replica counts. The Deployment manifests never
#: carry spec.replicas; the counts the engine decides go out as replicas-only applies under
#: this manager, and a count the HPA owns is simply not sent. Server-side apply removes a
#: field only when its manager applies without it, so nothing ever resets the HPA's count
#: to the default of 1, and no stale read of it is ever written back over the HPA's value.
SCALE_FIELD_MANAGER = "fdp-operator-scale"
TRACK_LABEL = "fdp.io/track"
ROLES = {BLUE: COLOR_LABEL, GREEN: COLOR_LABEL, STABLE: TRACK_LABEL, CANARY: TRACK_LABEL}


def role_deployment(router: str, role: str) -> str:
    """The Deployment of a role (``PLAIN``: the RollingUpdate Deployment ``<router>``)."""
    return names.deployment(router) if role == PLAIN else f"{router}-{role}"


def preview_service(router: str) -> str:
    return f"{router}-preview"


def deployment_view(name: str, dep: Mapping[str, Any]) -> DeploymentView:
    """The engine's view of an observed Deployment."""
    meta, spec, status = dep.get("metadata") or {}, dep.get("spec") or {}, dep.get("status") or {}
    return DeploymentView(
        name=name,
        revision=(meta.get("annotations") or {}).get(REVISION_ANNOTATION),
        spec_replicas=int(spec.get("replicas", 1)),
        replicas=int(status.get("replicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        available_replicas=int(status.get("availableReplicas", 0)),
        generation_observed=int(status.get("observedGeneration", 0)) >= int(meta.get("generation", 0)),
    )


def _hpa_total(router: FederatedRouter, observed: ObservedState, fallback: int | None) -> int:
    """With an HPA: the count it wants now (status), else what its target runs, else minReplicas."""
    status = (observed.hpa or {}).get("status") or {}
    for key in ("desiredReplicas", "currentReplicas"):
        if int(status.get(key, 0) or 0) > 0:
            return int(status[key])
    return fallback if fallback is not None else router.spec.autoscaling.min_replicas


def _stale_progressive(
    router: FederatedRouter, observed: ObservedState, keep: tuple[str, ...]
) -> list[tuple[str, str]]:
    """Owned workload objects of another strategy, to delete once the current one serves."""
    name = router.ref.name
    wanted = set(keep) | {names.deployment(name)} if not keep else set(keep)
    out = [
        ("Deployment", n)
        for n in sorted(observed.deployments)
        if n not in wanted and n in {role_deployment(name, r) for r in ROLES} | {names.deployment(name)}
    ]
    if (
        router.spec.rollout.strategy != RolloutStrategy.BLUE_GREEN
        and preview_service(name) in observed.services
    ):
        out.append(("Service", preview_service(name)))
    return out


def _scale_object(router: FederatedRouter, name: str, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": router.ref.namespace},
        "spec": {"replicas": replicas},
    }


def _role_template(template: Mapping[str, Any], role: str) -> dict[str, Any]:
    """``template`` for ``role``'s pods: another role's label (a copied template) is dropped."""
    out: dict[str, Any] = json.loads(json.dumps(template))
    labels = out.setdefault("metadata", {}).setdefault("labels", {})
    for key in ROLE_LABELS:
        labels.pop(key, None)
    labels[ROLES[role]] = role
    return out


def _annotated_revision(dep: Mapping[str, Any]) -> str | None:
    rev = ((dep.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    return str(rev) if rev else None


def _template_running(observed: ObservedState, revision: str, prefer: str | None) -> Mapping[str, Any] | None:
    """The pod template of an owned Deployment that runs ``revision`` (``prefer`` first).

    A strategy switch starts the new stable role with the incumbent's revision: its template
    is copied, exactly as observed, from the Deployment that runs it.
    """
    order = ([prefer] if prefer else []) + sorted(observed.deployments)
    for dep_name in order:
        dep = observed.deployments.get(dep_name)
        if dep is not None and _annotated_revision(dep) == revision:
            return (dep.get("spec") or {}).get("template") or None
    return None


def _intent_template(
    observed: ObservedState,
    role: str,
    revision: str,
    current: Mapping[str, Any] | None,
    pod_template: Mapping[str, Any],
    desired: str,
    kept: Incumbent | None,
) -> tuple[dict[str, Any], str]:
    """The pod template ``role``'s Deployment must run for ``revision``, and its revision."""
    if revision == desired:
        return _role_template(pod_template, role), desired
    own: dict[str, Any] = json.loads(json.dumps(((current or {}).get("spec") or {}).get("template") or {}))
    if current is not None and _annotated_revision(current) == revision:
        return own, revision  # keep what it runs: its own template, exactly as observed
    source = _template_running(observed, revision, kept.view.name if kept else None)
    if source is not None:  # a strategy switch: another Deployment runs it; copy its template
        return _role_template(source, role), revision
    if current is not None:
        return own, revision
    return _role_template(pod_template, role), desired


def _incumbent(
    router: FederatedRouter, observed: ObservedState, service_color: str | None
) -> Incumbent | None:
    """The previous strategy's Deployment that serves now (after a strategy switch), if any."""
    name = router.ref.name
    present = {role for role in (*ROLES, PLAIN) if role_deployment(name, role) in observed.deployments}
    role = rollout.incumbent_role(router.spec.rollout.strategy, present, service_color)
    if role is None:
        return None
    dep_name = role_deployment(name, role)
    view = deployment_view(dep_name, observed.deployments[dep_name])
    return Incumbent(role, view) if view.revision else None


def _progressive(
    router: FederatedRouter, pod_template: Mapping[str, Any], observed: ObservedState
) -> WorkloadPlan:
    """Blue/green or canary: build the engine's input, run it, render its decision."""
    spec = router.spec
    name = router.ref.name
    autoscaled = spec.autoscaling.enabled
    desired = revision_of(pod_template)
    roles = (BLUE, GREEN) if spec.rollout.strategy == RolloutStrategy.BLUE_GREEN else (STABLE, CANARY)
    views = {
        role: deployment_view(role_deployment(name, role), observed.deployments[role_deployment(name, role)])
        for role in roles
        if role_deployment(name, role) in observed.deployments
    }
    active_svc = observed.services.get(names.service(name)) or {}
    active_color = ((active_svc.get("spec") or {}).get("selector") or {}).get(COLOR_LABEL)
    incumbent = _incumbent(router, observed, active_color if active_color in (BLUE, GREEN) else None)
    serving = active_color if active_color in views else (STABLE if STABLE in views else None)
    fallback = (
        views[serving].spec_replicas
        if serving
        else (incumbent.view.spec_replicas if incumbent is not None else None)
    )
    total = _hpa_total(router, observed, fallback) if autoscaled else spec.replicas
    decision = rollout.decide(
        spec.rollout.strategy,
        RolloutInput(
            now=observed.now,
            spec=spec.rollout,
            desired_revision=desired,
            total_replicas=total,
            autoscaled=autoscaled,
            deployments=views,
            status=RolloutStatus.from_dict(observed.previous_rollout_status),
            intents=intents.parse(dict(router.annotations)),
            observed_active_color=active_color if active_color in (BLUE, GREEN) else None,
            analysis=observed.analysis,
            incumbent=incumbent,
        ),
    )
    # during a strategy switch's hand-over the incumbent keeps serving, untouched
    kept = incumbent if decision.keep_incumbent else None

    objects: list[dict[str, Any]] = []
    scale: list[dict[str, Any]] = []
    counts = {"desired": 0, "ready": 0, "available": 0, "updated": 0}
    serving_roles = {decision.active_role} if decision.active_role else {STABLE, CANARY}
    for intent in decision.deployments:
        dep_name = role_deployment(name, intent.role)
        current = observed.deployments.get(dep_name)
        template, revision = _intent_template(
            observed, intent.role, intent.template_revision, current, pod_template, desired, kept
        )
        replicas = intent.replicas
        if replicas is not None or current is None:
            # the HPA owns the count of its target: sent only once, to create it
            scale.append(_scale_object(router, dep_name, total if replicas is None else replicas))
        if replicas is None:
            replicas = int(((current or {}).get("spec") or {}).get("replicas", total))
        dep = render_deployment(router, dep_name, template, None)
        role_label = {ROLES[intent.role]: intent.role}
        dep["spec"]["selector"]["matchLabels"].update(role_label)
        dep["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(
            {**names.selector_labels(name), **role_label}
        )
        dep["metadata"]["labels"].update(role_label)
        dep["metadata"]["annotations"] = {REVISION_ANNOTATION: revision}
        objects.append(dep)
        if intent.role in serving_roles:
            c = _replica_counts(current, replicas)
            for k in counts:
                counts[k] += c[k]

    selector = names.selector_labels(name)
    if kept is not None:
        # the active Service selects exactly what it selected before the switch
        color = {COLOR_LABEL: kept.role} if kept.role in (BLUE, GREEN) else {}
        objects.append(render_service(router, names.service(name), {**selector, **color}))
        counts = _replica_counts(observed.deployments.get(kept.view.name), kept.view.spec_replicas)
    elif decision.active_role:
        objects.append(
            render_service(router, names.service(name), {**selector, COLOR_LABEL: decision.active_role})
        )
    else:
        objects.append(render_service(router, names.service(name), selector))
    if decision.preview_role:
        objects.append(
            render_service(router, preview_service(name), {**selector, COLOR_LABEL: decision.preview_role})
        )
    keep = tuple(role_deployment(name, i.role) for i in decision.deployments)
    if kept is not None:
        keep += (kept.view.name,)
    prune = _stale_progressive(router, observed, keep)

    return WorkloadPlan(
        objects=objects,
        prune=prune,
        hpa_target=role_deployment(name, decision.hpa_role),
        rollout_status=decision.status.to_dict(),
        replicas=counts,
        rollout=decision.facts(),
        requeue_after=decision.requeue_after,
        events=decision.events,
        scale=scale,
    )
