"""Blue/green state machine (``spec.rollout.strategy: BlueGreen``).

Called by ``render/workloads.py`` once per reconcile. Two Deployments, ``blue`` and
``green``; the active Service selects the active color, the preview Service the other.

1. A new revision (pod template hash) is deployed to the inactive color at
   ``previewReplicas`` (default: the full count). The active color is never touched.
2. When the preview is Available: promote automatically (``autoPromotionEnabled``, after
   ``autoPromotionSeconds`` if set) or pause (``Paused=True``) until the user promotes.
   ``autoPromotionSeconds`` only applies with auto promotion on (Argo Rollouts issue #2000:
   users found the opposite rule confusing); with it off the Paused message says so.
3. Promotion scales the preview to the full count, waits until it is Available, then switches
   the active Service's selector (and the HPA) to it.
4. The old color keeps its pods for ``scaleDownDelaySeconds`` (clients finish in-flight
   requests, a quick manual revert is instant), then goes to 0.

Abort, a missed progress deadline or a failed analysis scale the preview to 0, leave the
active color untouched (Ready stays True) and set Stalled until the pod template changes.
Every decision is recomputed from spec, the observed Deployments/Service and status
timestamps: the active color is read from the Service that really serves, so a restart
between "switch the Service" and "write status" resumes correctly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from fdp_operator.rollout import common, switch
from fdp_operator.rollout.types import (
    AnalysisVerdict,
    DeploymentIntent,
    Incumbent,
    Phase,
    Reason,
    RolloutDecision,
    RolloutInput,
    RolloutStatus,
)

BLUE = "blue"
GREEN = "green"
STRATEGY = "BlueGreen"


def other(color: str) -> str:
    return GREEN if color == BLUE else BLUE


def decide(inp: RolloutInput) -> RolloutDecision:
    """One reconcile's decision for a blue/green router."""
    active = inp.observed_active_color or inp.status.active_color
    if active not in (BLUE, GREEN):
        active = BLUE
    # Right after a strategy switch (switch.py) the active color first takes over the old
    # strategy's revision; then the desired revision is previewed and promoted as usual.
    if switch.switching(inp, STRATEGY):
        inc = switch.incumbent(inp)
        if inc is not None and not _took_over(inp, active, inc):
            return _handover(inp, active, inc)
        return switch.after_handover(inp, _decide(switch.fresh(inp), active), STRATEGY, active)
    return _decide(inp, active)


def _took_over(inp: RolloutInput, active: str, inc: Incumbent) -> bool:
    act = inp.deployments.get(active)
    if act is None or inc.view.revision is None:
        return False
    n = act.spec_replicas if inp.autoscaled else inp.total_replicas
    return act.available_at(inc.view.revision, n)


def _handover(inp: RolloutInput, active: str, inc: Incumbent) -> RolloutDecision:
    """Strategy switch: the active color starts at the incumbent's revision, no preview yet."""
    act = inp.deployments.get(active)
    ina = inp.deployments.get(other(active))
    others = (
        [DeploymentIntent(other(active), ina.revision or inp.desired_revision, 0)] if ina is not None else []
    )
    return switch.handover(
        inp,
        inc,
        strategy=STRATEGY,
        role=active,
        replicas=_active_replicas(inp),
        expected=act.spec_replicas if inp.autoscaled and act is not None else inp.total_replicas,
        others=others,
        status=inp.status.with_(active_color=active, canary_weight=None),
    )


def _decide(inp: RolloutInput, active: str) -> RolloutDecision:
    act = inp.deployments.get(active)
    # The stable revision is whatever the active color runs (we never change its template
    # while it is active); on the very first reconcile it does not exist yet and the
    # desired revision goes straight to the active color.
    stable = act.revision if act is not None and act.revision else inp.desired_revision
    if stable == inp.desired_revision:
        return _steady(inp, active)
    if inp.status.aborted_revision == inp.desired_revision:
        return _failed(inp, active, stable, inp.status)
    return _rolling(inp, active, stable)


def _active_replicas(inp: RolloutInput) -> int | None:
    return None if inp.autoscaled else inp.total_replicas


def _old_color_intent(
    inp: RolloutInput, role: str, status: RolloutStatus
) -> tuple[DeploymentIntent | None, RolloutStatus, float | None]:
    """Scale the no-longer-active color down once scaleDownDelaySeconds have passed."""
    dep = inp.deployments.get(role)
    if dep is None:
        return None, status.with_(scale_down_at=None), None
    keep = dep.revision or inp.desired_revision
    if dep.spec_replicas == 0:
        return DeploymentIntent(role, keep, 0), status.with_(scale_down_at=None), None
    # No recorded promotion time (e.g. status lost in a restart): start the delay now,
    # which errs on the side of keeping pods a little longer.
    at = status.scale_down_at or inp.now + timedelta(seconds=inp.spec.scale_down_delay_seconds)
    if inp.now >= at:
        return DeploymentIntent(role, keep, 0), status.with_(scale_down_at=None), None
    return (
        DeploymentIntent(role, keep, dep.spec_replicas),
        status.with_(scale_down_at=at),
        common.seconds_until(inp.now, at),
    )


def _steady(inp: RolloutInput, active: str) -> RolloutDecision:
    """The active color runs the desired revision: keep it at full size, retire the other."""
    rev = inp.desired_revision
    act = inp.deployments.get(active)
    n = inp.total_replicas if not inp.autoscaled or act is None else act.spec_replicas
    ready = act is not None and act.available_at(rev, n)
    status = inp.status.with_(
        strategy=STRATEGY,
        current_revision=rev,
        active_color=active,
        preview_color=None,
        preview_available_since=None,
        promoting_revision=None,
        aborted_revision=None,
        abort_reason=None,
        current_step_index=None,
        canary_weight=None,
        step_started_at=None,
        pause_reason=None,
    )
    if ready:
        status = status.with_(stable_revision=rev)
    status, events = common.consume_intents(inp, status, "no rollout in progress")
    old, status, requeue = _old_color_intent(inp, other(active), status)
    intents = [DeploymentIntent(active, rev, _active_replicas(inp))]
    if old is not None:
        intents.append(old)

    stalled: Reason | None = None
    marker = f"{rev}|{act.available_replicas if act else 0}"
    last, marker = common.progress_clock(inp.status, marker, inp.now, paused=ready)
    if ready:
        message = f"active color {active} serves revision {rev} with {n} available replica(s)"
    else:
        available = act.available_replicas if act else 0
        message = f"waiting for {active} to have {n} available replica(s) of revision {rev} ({available} now)"
        due = common.deadline(last, inp.spec.progress_deadline_seconds)
        if inp.now >= due:
            stalled = Reason.PROGRESS_DEADLINE_EXCEEDED
            message = f"{message}: no progress within progressDeadlineSeconds"
        else:
            wait = common.seconds_until(inp.now, due)
            requeue = min(requeue, wait) if requeue else wait
    status = status.with_(
        phase=Phase.HEALTHY if ready else (Phase.DEGRADED if stalled else Phase.PROGRESSING),
        message=message,
        last_progress_time=last,
        progress_marker=marker,
    )
    return common.decision(
        intents=intents,
        active_role=active,
        preview_role=other(active),
        hpa_role=active,
        status=status,
        ready=ready,
        reconciling=not ready,
        message=message,
        stalled=stalled,
        requeue=requeue,
        events=events,
    )


def _failed(
    inp: RolloutInput,
    active: str,
    stable: str,
    status: RolloutStatus,
    events: list[str] | tuple[str, ...] = (),
    *,
    reason: Reason | None = None,
    detail: str = "",
) -> RolloutDecision:
    """After abort / deadline / failed analysis: preview at 0, active untouched, Stalled."""
    return common.failed(
        inp,
        status.with_(
            active_color=active, preview_color=None, preview_available_since=None, promoting_revision=None
        ),
        strategy=STRATEGY,
        serving_role=active,
        other_role=other(active),
        stable=stable,
        replicas=_active_replicas(inp),
        active_role=active,
        preview_role=other(active),
        events=events,
        reason=reason,
        detail=detail,
    )


@dataclass(frozen=True)
class _Gate:
    """The promotion gate's verdict on this reconcile: promote now, wait (why), or fail."""

    status: RolloutStatus
    promoting: bool
    paused: Reason | None = None
    requeue: float | None = None
    analysis_failed: bool = False


def _rolling(inp: RolloutInput, active: str, stable: str) -> RolloutDecision:
    """A new revision is on its way: preview it on the inactive color, gate, promote."""
    rev = inp.desired_revision
    status, events = _begin(inp, active, stable)
    abort = common.unhandled(inp.intents.abort, status.handled_abort)
    if abort:
        status = status.with_(handled_abort=abort, aborted_revision=rev, abort_reason=Reason.ABORTED)
        return _failed(inp, active, stable, status, [*events, f"rollout of {rev} aborted by user"])
    total = _full_count(inp, active)
    gate = _promotion_gate(inp, active, status, events)
    if gate.analysis_failed:
        assert inp.analysis is not None
        status = gate.status.with_(aborted_revision=rev, abort_reason=Reason.ANALYSIS_FAILED)
        return _failed(
            inp, active, stable, status, events, reason=Reason.ANALYSIS_FAILED, detail=inp.analysis.message
        )
    if gate.promoting and _preview_ready(inp, active, total):
        return _switch(inp, active, stable, gate.status, events)
    return _sync_status(inp, active, stable, gate, events)


def _begin(inp: RolloutInput, active: str, stable: str) -> tuple[RolloutStatus, list[str]]:
    """A revision seen for the first time starts with no preview history."""
    rev = inp.desired_revision
    status = inp.status.with_(
        strategy=STRATEGY, current_revision=rev, stable_revision=stable, active_color=active
    )
    if inp.status.current_revision == rev:
        return status, []
    status = status.with_(
        preview_available_since=None, promoting_revision=None, aborted_revision=None, abort_reason=None
    )
    return status, [
        f"rolling out revision {rev} to {other(active)} (preview); {active} keeps serving {stable}"
    ]


def _full_count(inp: RolloutInput, active: str) -> int:
    act = inp.deployments.get(active)
    return inp.total_replicas if not inp.autoscaled or act is None else act.spec_replicas


def _preview_count(inp: RolloutInput, active: str) -> int:
    return inp.spec.preview_replicas or _full_count(inp, active)


def _preview_ready(inp: RolloutInput, active: str, n: int) -> bool:
    ina = inp.deployments.get(other(active))
    return ina is not None and ina.available_at(inp.desired_revision, n)


def _promotion_gate(inp: RolloutInput, active: str, status: RolloutStatus, events: list[str]) -> _Gate:
    """Once the preview is Available: analysis, spec.rollout.paused, a promote intent, or the
    auto-promotion timer decide whether it is promoted (appends events)."""
    rev = inp.desired_revision
    spec = inp.spec
    promoting = status.promoting_revision == rev
    if promoting or not _preview_ready(inp, active, _preview_count(inp, active)):
        return _Gate(status, promoting)
    since = status.preview_available_since or inp.now
    status = status.with_(preview_available_since=since)
    if inp.analysis is not None and inp.analysis.verdict == AnalysisVerdict.FAILED:
        return _Gate(status, False, analysis_failed=True)
    token = common.unhandled(inp.intents.promote, status.handled_promote)
    auto_at = since + timedelta(seconds=spec.auto_promotion_seconds or 0)
    if spec.paused:
        return _Gate(status, False, paused=Reason.PAUSED_BY_SPEC)
    if token or (spec.auto_promotion_enabled and inp.now >= auto_at):
        status = status.with_(promoting_revision=rev)
        if token:
            status = status.with_(handled_promote=token)
            events.append(f"promotion of {rev} requested by user")
        return _Gate(status, True)
    if spec.auto_promotion_enabled:
        return _Gate(
            status,
            False,
            paused=Reason.AUTO_PROMOTION_PENDING,
            requeue=common.seconds_until(inp.now, auto_at),
        )
    return _Gate(status, False, paused=Reason.WAITING_FOR_PROMOTION)


def _preview_message(inp: RolloutInput, active: str, gate: _Gate, target_n: int, available: int) -> str:
    rev = inp.desired_revision
    inactive = other(active)
    if gate.paused is Reason.PAUSED_BY_SPEC:
        return (
            f"preview {inactive} runs revision {rev}; paused by spec.rollout.paused "
            f"(set it to false to continue)"
        )
    if gate.paused is Reason.AUTO_PROMOTION_PENDING:
        return f"preview {inactive} runs revision {rev}; promoting automatically in {gate.requeue:.0f}s"
    if gate.paused is Reason.WAITING_FOR_PROMOTION:
        ignored = (
            " (autoPromotionSeconds only applies when autoPromotionEnabled is true)"
            if inp.spec.auto_promotion_seconds
            else ""
        )
        return (
            f"preview {inactive} runs revision {rev} and is available; waiting for promotion: "
            f"run `fdp-operator promote NAME` or set annotation fdp.io/promote{ignored}"
        )
    if gate.promoting:
        return f"promoting {rev}: scaling {inactive} to {target_n} replica(s) ({available} available)"
    return (
        f"waiting for preview {inactive} to have {target_n} available replica(s) "
        f"of revision {rev} ({available} now)"
    )


def _sync_status(
    inp: RolloutInput, active: str, stable: str, gate: _Gate, events: list[str]
) -> RolloutDecision:
    """Size the preview, check the progress deadline, write status."""
    rev = inp.desired_revision
    inactive = other(active)
    ina = inp.deployments.get(inactive)
    act = inp.deployments.get(active)
    paused, requeue = gate.paused, gate.requeue
    target_n = _full_count(inp, active) if gate.promoting else _preview_count(inp, active)
    available = ina.available_replicas if ina else 0
    message = _preview_message(inp, active, gate, target_n, available)
    marker = f"{rev}|{gate.promoting}|{available}|{ina.updated_replicas if ina else 0}"
    last, marker = common.progress_clock(inp.status, marker, inp.now, paused=paused is not None)
    due = common.deadline(last, inp.spec.progress_deadline_seconds)
    if paused is None and inp.now >= due:
        # The preview made no progress for progressDeadlineSeconds (a pause does not count).
        status = gate.status.with_(aborted_revision=rev, abort_reason=Reason.PROGRESS_DEADLINE_EXCEEDED)
        return _failed(
            inp,
            active,
            stable,
            status,
            [*events, f"rollout of {rev} exceeded its progress deadline; rolled back"],
            reason=Reason.PROGRESS_DEADLINE_EXCEEDED,
            detail=message,
        )
    if paused is None:
        wait = common.seconds_until(inp.now, due)
        requeue = min(requeue, wait) if requeue else wait
    status = gate.status.with_(
        preview_color=inactive,
        phase=Phase.PAUSED if paused else Phase.PROGRESSING,
        pause_reason=str(paused) if paused else None,
        message=message,
        last_progress_time=last,
        progress_marker=marker,
        scale_down_at=None,
    )
    return common.decision(
        intents=(
            DeploymentIntent(active, stable, _active_replicas(inp)),
            DeploymentIntent(inactive, rev, target_n),
        ),
        active_role=active,
        preview_role=inactive,
        hpa_role=active,
        status=status,
        ready=act is not None and act.serving(),
        reconciling=True,
        message=message,
        paused=paused,
        requeue=requeue,
        events=events,
    )


def _switch(
    inp: RolloutInput, active: str, stable: str, status: RolloutStatus, events: list[str]
) -> RolloutDecision:
    """The preview is Available at full size: make it active; the old color waits, then 0."""
    rev = inp.desired_revision
    new_active = other(active)
    old = inp.deployments.get(active)
    new = inp.deployments.get(new_active)
    at = inp.now + timedelta(seconds=inp.spec.scale_down_delay_seconds)
    old_n = old.spec_replicas if old is not None else 0
    n = new.spec_replicas if new is not None else inp.total_replicas
    message = (
        f"promoted revision {rev}: active Service now selects {new_active}; "
        f"{active} (revision {stable}) scales down at {at.isoformat()}"
    )
    status = status.with_(
        active_color=new_active,
        preview_color=None,
        stable_revision=rev,
        promoting_revision=None,
        preview_available_since=None,
        scale_down_at=at,
        phase=Phase.HEALTHY,
        pause_reason=None,
        message=message,
        last_progress_time=inp.now,
        progress_marker=f"{rev}|switched",
    )
    return common.decision(
        intents=(
            DeploymentIntent(new_active, rev, None if inp.autoscaled else n),
            DeploymentIntent(active, stable, old_n),
        ),
        active_role=new_active,
        preview_role=active,
        hpa_role=new_active,
        status=status,
        ready=True,
        reconciling=False,
        message=message,
        requeue=common.seconds_until(inp.now, at),
        events=(*events, f"switched active Service to {new_active} (revision {rev})"),
    )
