"""Conditions as a chain of pure checks, shaped like metav1.Condition.

Each check looks at one observation and either passes (None) or returns a ``Verdict``:
the first failing check decides Ready/Reconciling/Stalled, so the reason users see is the
most fundamental one (an invalid spec before a missing policy before a rollout in
progress). kstatus (Flux, Helm 4, Config Sync) reads Reconciling=True as in progress and
Stalled=True as failed; Ready is what ``kubectl wait --for=condition=Ready`` waits on.
``merge`` keeps ``lastTransitionTime`` when a condition's status did not change, so a
status recomputed from scratch on every reconcile does not churn. Called by reconcile/.

One chain per kind: ``router_status`` (FederatedRouter), ``reconcile.node.node_conditions``
and ``reconcile.policy.policy_status`` turn facts into conditions; the rollout engine
(``rollout/``) only reports facts (``RolloutFacts``) and writes no condition itself. Every
reason any of them writes is a member of the one ``Reason`` enum below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Every condition reason the operator writes (one enum, as kopf and cert-manager keep)."""

    READY = "Ready"
    CREATED = "Created"
    PROGRESSING = "Progressing"
    INVALID_SPEC = "InvalidSpec"
    IMAGE_NOT_ALLOWED = "ImageNotAllowed"
    SCHEDULING_NOT_ALLOWED = "SchedulingNotAllowed"
    SECRET_NOT_ALLOWED = "SecretNotAllowed"  # noqa: S105 - a reason, not a password
    SECRET_MISSING = "SecretMissing"  # noqa: S105 - a reason, not a password
    POLICY_NOT_FOUND = "PolicyNotFound"
    POLICY_INVALID = "PolicyInvalid"
    TLS_SECRET_MISSING = "TLSSecretMissing"  # noqa: S105 - a reason, not a password
    APPLY_FAILED = "ApplyFailed"
    NO_READY_NODES = "NoReadyNodes"
    ROLLOUT_STALLED = "RolloutStalled"
    PROBE_SUCCEEDED = "ProbeSucceeded"
    PROBE_FAILED = "ProbeFailed"
    NOT_PROBED = "NotProbedYet"
    ALL_NODES_READY = "AllNodesReady"
    SOME_NODES_NOT_READY = "SomeNodesNotReady"
    CERTIFICATE_ISSUED = "CertificateIssued"
    EXTERNAL_SECRET = "ExternalSecret"  # noqa: S105 - a reason, not a password
    GUARANTEE_COMPUTED = "GuaranteeComputed"
    # The rollout engine's reasons: status.rollout.pauseReason / abortReason and the Paused
    # condition (Argo Rollouts' words where it has one).
    HEALTHY = "RolloutHealthy"
    WAITING_FOR_PROMOTION = "WaitingForPromotion"
    AUTO_PROMOTION_PENDING = "AutoPromotionPending"
    PAUSED_BY_SPEC = "PausedBySpec"
    PAUSE_STEP = "CanaryPauseStep"
    ABORTED = "Aborted"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ANALYSIS_FAILED = "AnalysisFailed"


@dataclass(frozen=True)
class Verdict:
    """Outcome of the first failing check. ``stalled``: needs a person; else still converging."""

    reason: Reason
    message: str
    stalled: bool


Condition = tuple[str, str, str, str]  # type, status, reason, message


@dataclass(frozen=True)
class RolloutFacts:
    """What the workloads' rollout reports (``WorkloadPlan.rollout``, ``RolloutDecision.facts``)."""

    #: the stable revision serves (also during a rollout and after a rollback)
    available: bool = False
    #: a change is rolling out (also while paused)
    progressing: bool = False
    #: why the rollout failed and was rolled back, if it did
    stalled: str | None = None
    #: why the rollout waits (a Reason), if it does
    paused: str | None = None
    message: str = ""
    #: blue/green or canary: the CR carries a Paused condition
    progressive: bool = False


@dataclass(frozen=True)
class RouterObservation:
    spec_error: str | None = None
    image_error: str | None = None
    scheduling_error: str | None = None
    #: (reason, message) per refused Secret the router's own spec names (security.py)
    secret_refusals: tuple[tuple[str, str], ...] = ()
    policy_name: str = ""
    policy_found: bool = True
    policy_error: str | None = None
    tls_error: str | None = None
    apply_error: str | None = None
    nodes_selected: int = 0
    nodes_ready: int = 0
    not_ready_nodes: tuple[str, ...] = ()
    #: "node: why" for selected nodes left out because a Secret they name was refused
    refused_nodes: tuple[str, ...] = ()
    rollout: RolloutFacts = RolloutFacts()
    #: the serving certificate came from spec.tls.secretName (not issued by the operator)
    tls_external: bool = False
    #: when the serving certificate expires; None: not known yet (reconcile stopped early)
    tls_valid_until: str | None = None


Check = Callable[[RouterObservation], Verdict | None]


def spec_is_valid(o: RouterObservation) -> Verdict | None:
    return Verdict(Reason.INVALID_SPEC, o.spec_error, True) if o.spec_error else None


def image_is_allowed(o: RouterObservation) -> Verdict | None:
    return Verdict(Reason.IMAGE_NOT_ALLOWED, o.image_error, True) if o.image_error else None


def scheduling_is_allowed(o: RouterObservation) -> Verdict | None:
    if o.scheduling_error:
        return Verdict(Reason.SCHEDULING_NOT_ALLOWED, o.scheduling_error, True)
    return None


def secrets_are_allowed(o: RouterObservation) -> Verdict | None:
    """Every Secret the router's spec names exists, opted in, and has the keys it needs."""
    if not o.secret_refusals:
        return None
    reason = o.secret_refusals[0][0]
    message = (
        "; ".join(m for _, m in o.secret_refusals) + "; the operator deploys nothing until this is fixed"
    )
    return Verdict(Reason(reason), message, True)


def policy_exists(o: RouterObservation) -> Verdict | None:
    if o.policy_found:
        return None
    return Verdict(
        Reason.POLICY_NOT_FOUND,
        f"PrivacyPolicy '{o.policy_name}' not found; running pods keep their last good config",
        True,
    )


def policy_is_valid(o: RouterObservation) -> Verdict | None:
    if o.policy_error is None:
        return None
    return Verdict(
        Reason.POLICY_INVALID,
        f"PrivacyPolicy '{o.policy_name}' is invalid ({o.policy_error}); "
        "running pods keep their last good config",
        True,
    )


def tls_is_available(o: RouterObservation) -> Verdict | None:
    return Verdict(Reason.TLS_SECRET_MISSING, o.tls_error, True) if o.tls_error else None


def children_applied(o: RouterObservation) -> Verdict | None:
    return Verdict(Reason.APPLY_FAILED, o.apply_error, True) if o.apply_error else None


def has_ready_nodes(o: RouterObservation) -> Verdict | None:
    if o.nodes_ready > 0:
        return None
    if o.nodes_selected == 0 and not o.refused_nodes:
        msg = "no HospitalNode matches spec.nodeSelector"
    else:
        msg = f"none of the {o.nodes_selected + len(o.refused_nodes)} selected HospitalNodes is ready"
        if o.refused_nodes:
            msg += f" (left out, a Secret was refused: {'; '.join(o.refused_nodes)})"
    return Verdict(Reason.NO_READY_NODES, msg, True)


def rollout_not_stalled(o: RouterObservation) -> Verdict | None:
    if o.rollout.stalled is None:
        return None
    return Verdict(Reason.ROLLOUT_STALLED, f"{o.rollout.stalled}: {o.rollout.message}", True)


def workloads_available(o: RouterObservation) -> Verdict | None:
    if o.rollout.available:
        return None
    return Verdict(Reason.PROGRESSING, o.rollout.message or "waiting for the router pods", False)


ROUTER_CHECKS: tuple[Check, ...] = (
    spec_is_valid,
    image_is_allowed,
    scheduling_is_allowed,
    secrets_are_allowed,
    policy_exists,
    policy_is_valid,
    tls_is_available,
    children_applied,
    has_ready_nodes,
    rollout_not_stalled,
    workloads_available,
)


def first_failure(checks: Sequence[Check], o: RouterObservation) -> Verdict | None:
    for check in checks:
        verdict = check(o)
        if verdict is not None:
            return verdict
    return None


def summary(verdict: Verdict | None, ready_message: str) -> list[Condition]:
    """Ready / Reconciling / Stalled from the first failing check (None: all passed)."""
    if verdict is None:
        return [
            ("Ready", "True", Reason.READY.value, ready_message),
            ("Reconciling", "False", Reason.READY.value, ""),
            ("Stalled", "False", Reason.READY.value, ""),
        ]
    return [
        ("Ready", "False", verdict.reason.value, verdict.message),
        (
            "Reconciling",
            "False" if verdict.stalled else "True",
            verdict.reason.value,
            "" if verdict.stalled else verdict.message,
        ),
        (
            "Stalled",
            "True" if verdict.stalled else "False",
            verdict.reason.value,
            verdict.message if verdict.stalled else "",
        ),
    ]


def router_status(o: RouterObservation, ready_message: str) -> list[Condition]:
    """The FederatedRouter's conditions: Ready/Reconciling/Stalled, NodesReady, Paused, TLSReady."""
    verdict = first_failure(ROUTER_CHECKS, o)
    out = summary(verdict, ready_message)
    # Blue/green and canary: while the stable revision serves, Ready stays True during a
    # rollout (Reconciling=True says it is not done) and after a rollback (Stalled=True).
    if o.rollout.available and verdict is None and o.rollout.progressing:
        out[1] = ("Reconciling", "True", Reason.PROGRESSING.value, o.rollout.message)
    elif o.rollout.available and verdict is not None and verdict.reason == Reason.ROLLOUT_STALLED:
        out[0] = ("Ready", "True", Reason.READY.value, ready_message)
    if o.spec_error is None and o.policy_found and o.policy_error is None:
        out.extend(_nodes_ready(o))
    if o.rollout.progressive:
        out.append(_paused(o.rollout))
    if o.tls_valid_until is not None:
        reason = Reason.EXTERNAL_SECRET if o.tls_external else Reason.CERTIFICATE_ISSUED
        out.append(("TLSReady", "True", reason.value, f"serving certificate valid until {o.tls_valid_until}"))
    return out


def _nodes_ready(o: RouterObservation) -> list[Condition]:
    if o.refused_nodes:
        return [
            (
                "NodesReady",
                "False",
                Reason.SECRET_NOT_ALLOWED.value,
                f"{o.nodes_ready}/{o.nodes_selected + len(o.refused_nodes)} ready; left out because "
                f"a Secret they name was refused: {'; '.join(o.refused_nodes)}"
                + (f"; not ready: {', '.join(o.not_ready_nodes)}" if o.not_ready_nodes else ""),
            )
        ]
    if o.not_ready_nodes:
        return [
            (
                "NodesReady",
                "False",
                Reason.SOME_NODES_NOT_READY.value,
                f"{o.nodes_ready}/{o.nodes_selected} ready; failing probes: {', '.join(o.not_ready_nodes)}",
            )
        ]
    if o.nodes_selected:
        return [
            ("NodesReady", "True", Reason.ALL_NODES_READY.value, f"{o.nodes_ready}/{o.nodes_selected} ready")
        ]
    return []


def _paused(r: RolloutFacts) -> Condition:
    """Paused=True while waiting for a promotion, a pause step or spec.rollout.paused."""
    if r.paused is None:
        return ("Paused", "False", Reason.HEALTHY.value, "rollout is not paused")
    return ("Paused", "True", str(r.paused), r.message)


def initial_conditions(message: str) -> list[Condition]:
    """Written at once on creation: kstatus treats a resource without status as current."""
    return [
        ("Ready", "False", Reason.CREATED.value, message),
        ("Reconciling", "True", Reason.CREATED.value, message),
        ("Stalled", "False", Reason.CREATED.value, ""),
    ]


def merge(
    old: Sequence[Mapping[str, Any]] | None, new: Sequence[Condition], now: datetime, generation: int
) -> list[dict[str, Any]]:
    """metav1.Condition list; lastTransitionTime moves only when a condition's status changes."""
    previous = {c.get("type"): c for c in old or []}
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    out = []
    for ctype, status, reason, message in new:
        prev = previous.get(ctype)
        changed = prev is None or prev.get("status") != status
        out.append(
            {
                "type": ctype,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": stamp if changed else prev.get("lastTransitionTime", stamp),  # type: ignore[union-attr]
            }
        )
    return out


def is_true(conditions: Sequence[Mapping[str, Any]] | None, ctype: str) -> bool:
    return any(c.get("type") == ctype and c.get("status") == "True" for c in conditions or [])
