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
        return _failed(inp, active, stable, events=())
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
    *,
    events: tuple[str, ...],
    reason: str | None = None,
    detail: str = "",
    status: RolloutStatus | None = None,
) -> RolloutDecision:
    """After abort / deadline / failed analysis: preview at 0, active untouched, Stalled."""
    status = status or inp.status
    why = common.reason_of(reason or status.abort_reason)
    rev = inp.desired_revision
    inactive = other(active)
    act = inp.deployments.get(active)
    message = common.failed_rollout_message(inp, status, why, stable, detail)
    status, more = common.consume_intents(
        inp, status, f"the rollout of {rev} failed; change the spec to retry"
    )
    status = status.with_(
        strategy=STRATEGY,
        current_revision=rev,
        stable_revision=stable,
        active_color=active,
        preview_color=None,
        preview_available_since=None,
        promoting_revision=None,
        aborted_revision=rev,
        abort_reason=str(why),
        phase=Phase.DEGRADED,
        message=message,
        pause_reason=None,
    )
    intents = [DeploymentIntent(active, stable, _active_replicas(inp))]
    ina = inp.deployments.get(inactive)
    if ina is not None:
        intents.append(DeploymentIntent(inactive, ina.revision or rev, 0))
    serving = act is not None and act.serving()
    return common.decision(
        intents=intents,
        active_role=active,
        preview_role=inactive,
        hpa_role=active,
        status=status,
        ready=serving,
        reconciling=False,
        message=message,
        stalled=why,
        events=events + tuple(more),
    )


def _rolling(inp: RolloutInput, active: str, stable: str) -> RolloutDecision:
    """A new revision is on its way: preview it on the inactive color, gate, promote."""
    rev = inp.desired_revision
    spec = inp.spec
    now = inp.now
    inactive = other(active)
    ina = inp.deployments.get(inactive)
    act = inp.deployments.get(active)
    prev = inp.status
    new_rollout = prev.current_revision != rev
    status = prev.with_(strategy=STRATEGY, current_revision=rev, stable_revision=stable, active_color=active)
    if new_rollout:
        status = status.with_(
            preview_available_since=None, promoting_revision=None, aborted_revision=None, abort_reason=None
        )
    events: list[str] = []
    if new_rollout:
        events.append(f"rolling out revision {rev} to {inactive} (preview); {active} keeps serving {stable}")

    abort = common.unhandled(inp.intents.abort, status.handled_abort)
    if abort:
        status = status.with_(handled_abort=abort, aborted_revision=rev, abort_reason=Reason.ABORTED)
        return _failed(
            inp, active, stable, events=(*events, f"rollout of {rev} aborted by user"), status=status
        )

    total = inp.total_replicas if not inp.autoscaled or act is None else act.spec_replicas
    preview_n = spec.preview_replicas or total
    promoting = status.promoting_revision == rev
    paused: Reason | None = None
    requeue: float | None = None

    def preview_ready(n: int) -> bool:
        return ina is not None and ina.available_at(rev, n)

    if not promoting and preview_ready(preview_n):
        since = status.preview_available_since or now
        status = status.with_(preview_available_since=since)
        token = common.unhandled(inp.intents.promote, status.handled_promote)
        if inp.analysis is not None and inp.analysis.verdict == AnalysisVerdict.FAILED:
            status = status.with_(aborted_revision=rev, abort_reason=Reason.ANALYSIS_FAILED)
            return _failed(
                inp,
                active,
                stable,
                events=tuple(events),
                reason=Reason.ANALYSIS_FAILED,
                detail=inp.analysis.message,
                status=status,
            )
        auto_at = since + timedelta(seconds=spec.auto_promotion_seconds or 0)
        if spec.paused:
            paused = Reason.PAUSED_BY_SPEC
        elif token or (spec.auto_promotion_enabled and now >= auto_at):
            promoting = True
            status = status.with_(promoting_revision=rev)
            if token:
                status = status.with_(handled_promote=token)
                events.append(f"promotion of {rev} requested by user")
        elif spec.auto_promotion_enabled:
            paused = Reason.AUTO_PROMOTION_PENDING
            requeue = common.seconds_until(now, auto_at)
        else:
            paused = Reason.WAITING_FOR_PROMOTION

    if promoting and preview_ready(total):
        return _switch(inp, active, stable, status, events)

    target_n = total if promoting else preview_n
    available = ina.available_replicas if ina else 0
    if paused is Reason.PAUSED_BY_SPEC:
        message = (
            f"preview {inactive} runs revision {rev}; paused by spec.rollout.paused "
            f"(set it to false to continue)"
        )
    elif paused is Reason.AUTO_PROMOTION_PENDING:
        message = f"preview {inactive} runs revision {rev}; promoting automatically in {requeue:.0f}s"
    elif paused is Reason.WAITING_FOR_PROMOTION:
        ignored = (
            " (autoPromotionSeconds only applies when autoPromotionEnabled is true)"
            if spec.auto_promotion_seconds
            else ""
        )
        message = (
            f"preview {inactive} runs revision {rev} and is available; waiting for promotion: "
            f"run `fdp-operator promote NAME` or set annotation fdp.io/promote{ignored}"
        )
    elif promoting:
        message = f"promoting {rev}: scaling {inactive} to {target_n} replica(s) ({available} available)"
    else:
        message = (
            f"waiting for preview {inactive} to have {target_n} available replica(s) "
            f"of revision {rev} ({available} now)"
        )

    marker = f"{rev}|{promoting}|{available}|{ina.updated_replicas if ina else 0}"
    last, marker = common.progress_clock(prev, marker, now, paused=paused is not None)
    due = common.deadline(last, spec.progress_deadline_seconds)
    if paused is None and now >= due:
        status = status.with_(aborted_revision=rev, abort_reason=Reason.PROGRESS_DEADLINE_EXCEEDED)
        return _failed(
            inp,
            active,
            stable,
            events=(*events, f"rollout of {rev} exceeded its progress deadline; rolled back"),
            reason=Reason.PROGRESS_DEADLINE_EXCEEDED,
            detail=message,
            status=status,
        )
    if paused is None:
        wait = common.seconds_until(now, due)
        requeue = min(requeue, wait) if requeue else wait

    status = status.with_(
        preview_color=inactive,
        phase=Phase.PAUSED if paused else Phase.PROGRESSING,
        pause_reason=str(paused) if paused else None,
        message=message,
        last_progress_time=last,
        progress_marker=marker,
        scale_down_at=None,
    )
    serving = act is not None and act.serving()
    return common.decision(
        intents=(
            DeploymentIntent(active, stable, _active_replicas(inp)),
            DeploymentIntent(inactive, rev, target_n),
        ),
        active_role=active,
        preview_role=inactive,
        hpa_role=active,
        status=status,
        ready=serving,
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
