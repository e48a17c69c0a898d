"""Canary state machine (``spec.rollout.strategy: Canary``).

Called by ``render/workloads.py`` once per reconcile. Two Deployments, ``stable`` and
``canary``, behind one Service; a weight is realised as a replica ratio (``split.py``).

The rollout walks ``spec.rollout.steps`` from ``status.rollout.currentStepIndex``
(``_rolling``: ``_begin``, abort, ``_walk_steps``, then ``_promote`` or ``_sync_status``):

* ``setWeight: W``: size the canary for W% and wait until both sides are Available (plus
  the analysis, when configured), then go on.
* ``pause: {duration: 30s}``: wait that long (from ``stepStartedAt``), or until promoted.
* ``pause: {}``: wait until promoted (``fdp.io/promote`` annotation).

After the last step the stable Deployment takes the new template (a normal rolling update,
with the canary still serving the same revision beside it); once stable is Available the
canary goes to 0. ``fdp.io/promote: full:<token>`` jumps straight there. Abort, a missed
progress deadline or a failed analysis scale the canary to 0 and restore stable's count
(Ready stays True, Stalled=True) until the pod template changes. An aborted canary stays at
0 whatever the HPA or spec.replicas do (Argo Rollouts issue #4973). Abort wins over a
pending full promotion (Argo issue #4461); abort with no rollout in progress is a no-op
(Argo issue #1292).

With an HPA, the HPA scales ``stable`` and the operator never writes that count; the canary
is sized in proportion to it (``split.canary_for_stable``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from fdp_operator.models import CanaryStep, parse_duration
from fdp_operator.rollout import common, split, switch
from fdp_operator.rollout.types import (
    AnalysisVerdict,
    DeploymentIntent,
    DeploymentView,
    Incumbent,
    Phase,
    Reason,
    RolloutDecision,
    RolloutInput,
    RolloutStatus,
)

STABLE = "stable"
CANARY = "canary"
STRATEGY = "Canary"


def weight_at(steps: tuple[CanaryStep, ...], index: int) -> int:
    """The canary weight in force at step ``index`` (100 once every step is done)."""
    if index >= len(steps):
        return 100
    weight = 0
    for step in steps[: index + 1]:
        if step.set_weight is not None:
            weight = step.set_weight
    return weight


def decide(inp: RolloutInput) -> RolloutDecision:
    """One reconcile's decision for a canary router.

    Right after a strategy switch (``switch.py``) stable first takes over the old strategy's
    revision; then the desired revision walks every step from the first.
    """
    if switch.switching(inp, STRATEGY):
        inc = switch.incumbent(inp)
        if inc is not None and not _took_over(inp, inc):
            return _handover(inp, inc)
        return switch.after_handover(inp, _decide(switch.fresh(inp)), STRATEGY, STABLE)
    return _decide(inp)


def _took_over(inp: RolloutInput, inc: Incumbent) -> bool:
    st = inp.deployments.get(STABLE)
    _, n = _stable_count(inp)
    return st is not None and inc.view.revision is not None and st.available_at(inc.view.revision, n)


def _handover(inp: RolloutInput, inc: Incumbent) -> RolloutDecision:
    """Strategy switch: stable starts at the incumbent's revision, no canary pods yet."""
    write_n, n = _stable_count(inp)
    can = inp.deployments.get(CANARY)
    others = [DeploymentIntent(CANARY, can.revision or inp.desired_revision, 0)] if can is not None else []
    return switch.handover(
        inp,
        inc,
        strategy=STRATEGY,
        role=STABLE,
        replicas=write_n,
        expected=n,
        others=others,
        status=inp.status.with_(active_color=None, canary_weight=0),
    )


def _decide(inp: RolloutInput) -> RolloutDecision:
    st = inp.deployments.get(STABLE)
    stable = st.revision if st is not None and st.revision else inp.desired_revision
    if stable == inp.desired_revision:
        return _steady(inp)
    if inp.status.aborted_revision == inp.desired_revision:
        return _failed(inp, stable, inp.status)
    return _rolling(inp, stable)


def _sizes(inp: RolloutInput, weight: int) -> tuple[int | None, int, int]:
    """(stable replicas to write or None for the HPA, expected stable, canary)."""
    st = inp.deployments.get(STABLE)
    if inp.autoscaled and st is not None:
        return None, st.spec_replicas, split.canary_for_stable(st.spec_replicas, weight)
    parts = split.split_total(inp.total_replicas, weight)
    return parts.stable, parts.stable, parts.canary


def _stable_count(inp: RolloutInput) -> tuple[int | None, int]:
    st = inp.deployments.get(STABLE)
    if inp.autoscaled:
        return None, st.spec_replicas if st is not None else inp.total_replicas
    return inp.total_replicas, inp.total_replicas


def _decision(
    inp: RolloutInput,
    *,
    intents: list[DeploymentIntent],
    status: RolloutStatus,
    ready: bool,
    reconciling: bool,
    message: str,
    stalled: Reason | None = None,
    paused: Reason | None = None,
    requeue: float | None = None,
    events: list[str] | tuple[str, ...] = (),
) -> RolloutDecision:
    return common.decision(
        intents=intents,
        active_role=None,
        preview_role=None,
        hpa_role=STABLE,
        status=status.with_(message=message),
        ready=ready,
        reconciling=reconciling,
        message=message,
        stalled=stalled,
        paused=paused,
        requeue=requeue,
        events=events,
    )


def _steady(inp: RolloutInput) -> RolloutDecision:
    """Stable runs the desired revision; the canary drains once stable is fully Available."""
    rev = inp.desired_revision
    st = inp.deployments.get(STABLE)
    can = inp.deployments.get(CANARY)
    write_n, n = _stable_count(inp)
    ready = st is not None and st.available_at(rev, n)
    status = inp.status.with_(
        strategy=STRATEGY,
        current_revision=rev,
        aborted_revision=None,
        abort_reason=None,
        promoting_revision=None,
        pause_reason=None,
        active_color=None,
        preview_color=None,
    )
    status, events = common.consume_intents(inp, status, "no rollout in progress")
    intents = [DeploymentIntent(STABLE, rev, write_n)]
    canary_draining = False
    if can is not None:
        # Just promoted: the canary (same revision) keeps serving until stable is Available.
        keep = can.runs(rev) and not ready and can.spec_replicas > 0
        canary_draining = keep
        intents.append(DeploymentIntent(CANARY, can.revision or rev, can.spec_replicas if keep else 0))
    marker = f"{rev}|{st.available_replicas if st else 0}"
    last, marker = common.progress_clock(inp.status, marker, inp.now, paused=ready)
    stalled: Reason | None = None
    requeue: float | None = None
    if ready:
        status = status.with_(
            stable_revision=rev, current_step_index=None, canary_weight=0, step_started_at=None
        )
        message = f"stable serves revision {rev} with {n} available replica(s)"
    else:
        available = st.available_replicas if st else 0
        message = f"waiting for stable to have {n} available replica(s) of revision {rev} ({available} now)"
        if canary_draining:
            message += "; the canary keeps serving until then"
        due = common.deadline(last, inp.spec.progress_deadline_seconds)
        if inp.now >= due:
            stalled = Reason.PROGRESS_DEADLINE_EXCEEDED
            message += ": no progress within progressDeadlineSeconds"
        else:
            requeue = common.seconds_until(inp.now, due)
    status = status.with_(
        phase=Phase.HEALTHY if ready else (Phase.DEGRADED if stalled else Phase.PROGRESSING),
        last_progress_time=last,
        progress_marker=marker,
    )
    serving = st is not None and st.serving()
    return _decision(
        inp,
        intents=intents,
        status=status,
        ready=ready or (serving and inp.status.stable_revision is not None) or canary_draining,
        reconciling=not ready,
        message=message,
        stalled=stalled,
        requeue=requeue,
        events=events,
    )


def _failed(
    inp: RolloutInput,
    stable: str,
    status: RolloutStatus,
    events: list[str] | tuple[str, ...] = (),
    *,
    reason: Reason | None = None,
    detail: str = "",
) -> RolloutDecision:
    """After abort / deadline / failed analysis: canary at 0, stable back to full size."""
    write_n, _ = _stable_count(inp)
    return common.failed(
        inp,
        status.with_(canary_weight=0),
        strategy=STRATEGY,
        serving_role=STABLE,
        other_role=CANARY,
        stable=stable,
        replicas=write_n,
        active_role=None,
        preview_role=None,
        events=events,
        reason=reason,
        detail=detail,
    )


def _side_ready(dep: DeploymentView | None, revision: str, replicas: int, *, exact: bool) -> bool:
    if replicas == 0:
        return True
    if dep is None:
        return False
    if exact:
        return dep.available_at(revision, replicas)
    return dep.runs(revision) and dep.available_replicas >= replicas


@dataclass(frozen=True)
class _Walk:
    """Where this reconcile's walk through ``spec.rollout.steps`` stopped, and why."""

    index: int
    started: datetime
    status: RolloutStatus
    paused: Reason | None = None
    requeue: float | None = None
    waiting: str = ""
    analysis_failed: bool = False


def _rolling(inp: RolloutInput, stable: str) -> RolloutDecision:
    """A new revision walks the steps; the step names read as the algorithm (Argo's canary.go)."""
    rev = inp.desired_revision
    status, events = _begin(inp, stable)
    abort = common.unhandled(inp.intents.abort, status.handled_abort)
    if abort:
        status = status.with_(handled_abort=abort, aborted_revision=rev, abort_reason=Reason.ABORTED)
        return _failed(inp, stable, status, [*events, f"rollout of {rev} aborted by user"])
    walk = _walk_steps(inp, stable, status, events)
    if walk.analysis_failed:
        assert inp.analysis is not None
        status = walk.status.with_(aborted_revision=rev, abort_reason=Reason.ANALYSIS_FAILED)
        return _failed(
            inp,
            stable,
            status,
            [*events, f"analysis failed at step {walk.index}: {inp.analysis.message}"],
            reason=Reason.ANALYSIS_FAILED,
            detail=inp.analysis.message,
        )
    status = walk.status.with_(current_step_index=walk.index, step_started_at=walk.started)
    if walk.index >= len(inp.spec.steps):
        return _promote(inp, stable, status, events)
    return _sync_status(inp, stable, replace(walk, status=status), events)


def _begin(inp: RolloutInput, stable: str) -> tuple[RolloutStatus, list[str]]:
    """A revision seen for the first time starts at step 0."""
    rev = inp.desired_revision
    status = inp.status.with_(strategy=STRATEGY, current_revision=rev, stable_revision=stable)
    if inp.status.current_revision == rev:
        return status, []
    status = status.with_(
        current_step_index=0, step_started_at=inp.now, aborted_revision=None, abort_reason=None
    )
    return status, [f"canary rollout of revision {rev} started; stable serves {stable}"]


def _walk_steps(inp: RolloutInput, stable: str, status: RolloutStatus, events: list[str]) -> _Walk:
    """Pass every step that is complete now; stop at the first that is not (appends events)."""
    steps = inp.spec.steps
    index = min(status.current_step_index or 0, len(steps))
    started = status.step_started_at or inp.now
    token = common.unhandled(inp.intents.promote, status.handled_promote)
    if token and inp.intents.promote_full:
        index, started = len(steps), inp.now
        status = status.with_(handled_promote=token)
        events.append(f"full promotion of {inp.desired_revision} requested by user")
        token = None
    while index < len(steps):
        step = steps[index]
        if inp.spec.paused:
            return _Walk(index, started, status, paused=Reason.PAUSED_BY_SPEC)
        if step.set_weight is not None:
            waiting = _weight_reached(inp, stable, index)
            if waiting:
                return _Walk(index, started, status, waiting=waiting)
            if inp.analysis is not None and inp.analysis.verdict == AnalysisVerdict.FAILED:
                return _Walk(index, started, status, analysis_failed=True)
        elif token:
            status = status.with_(handled_promote=token)
            events.append(f"promoted past pause step {index}")
            token = None
        else:
            paused, requeue = _pause_step(step, started, inp.now)
            if paused is not None:
                return _Walk(index, started, status, paused=paused, requeue=requeue)
        index, started = index + 1, inp.now
    return _Walk(index, started, status)


def _weight_reached(inp: RolloutInput, stable: str, index: int) -> str:
    """ "" when both sides are Available at step ``index``'s weight, else what is awaited."""
    _, stable_n, canary_n = _sizes(inp, weight_at(inp.spec.steps, index))
    st = inp.deployments.get(STABLE)
    can = inp.deployments.get(CANARY)
    rev = inp.desired_revision
    if _side_ready(can, rev, canary_n, exact=True) and _side_ready(
        st, stable, stable_n, exact=not inp.autoscaled
    ):
        return ""
    have = can.available_replicas if can is not None and can.runs(rev) else 0
    return f"waiting for {canary_n} canary and {stable_n} stable pod(s) to be available ({have} canary now)"


def _pause_step(step: CanaryStep, started: datetime, now: datetime) -> tuple[Reason | None, float | None]:
    """(why it still waits, seconds left) for a pause step; (None, None) once it is over."""
    assert step.pause is not None
    if step.pause.duration is None:
        return Reason.WAITING_FOR_PROMOTION, None
    seconds = parse_duration(step.pause.duration)
    elapsed = (now - started).total_seconds()
    if elapsed >= seconds:
        return None, None
    return Reason.PAUSE_STEP, max(seconds - elapsed, 1.0)


def _step_message(inp: RolloutInput, walk: _Walk, where: str) -> str:
    rev = inp.desired_revision
    if walk.paused is Reason.PAUSED_BY_SPEC:
        return f"canary {rev} at {where}; paused by spec.rollout.paused (set it to false to continue)"
    if walk.paused is Reason.WAITING_FOR_PROMOTION:
        return (
            f"canary {rev} at {where}; paused until promoted: run `fdp-operator promote NAME` "
            f"(or `--full` to skip the remaining steps) or set annotation fdp.io/promote"
        )
    if walk.paused is Reason.PAUSE_STEP:
        return f"canary {rev} at {where}; pause step ends in {walk.requeue:.0f}s"
    return f"canary {rev} at {where}: {walk.waiting}"


def _sync_status(inp: RolloutInput, stable: str, walk: _Walk, events: list[str]) -> RolloutDecision:
    """Size both tracks for the current step, check the progress deadline, write status."""
    rev = inp.desired_revision
    st = inp.deployments.get(STABLE)
    can = inp.deployments.get(CANARY)
    index, paused, requeue = walk.index, walk.paused, walk.requeue
    weight = weight_at(inp.spec.steps, index)
    write_stable, stable_n, canary_n = _sizes(inp, weight)
    where = (
        f"step {index + 1}/{len(inp.spec.steps)}, weight {weight}% ({canary_n} canary / {stable_n} stable)"
    )
    message = _step_message(inp, walk, where)
    have_canary = can.available_replicas if can is not None and can.runs(rev) else 0
    marker = f"{rev}|{index}|{have_canary}|{st.available_replicas if st else 0}"
    last, marker = common.progress_clock(inp.status, marker, inp.now, paused=paused is not None)
    due = common.deadline(last, inp.spec.progress_deadline_seconds)
    if paused is None and inp.now >= due:
        # No pod became available for progressDeadlineSeconds (pauses do not count).
        status = walk.status.with_(aborted_revision=rev, abort_reason=Reason.PROGRESS_DEADLINE_EXCEEDED)
        return _failed(
            inp,
            stable,
            status,
            [*events, f"rollout of {rev} exceeded its progress deadline; rolled back"],
            reason=Reason.PROGRESS_DEADLINE_EXCEEDED,
            detail=message,
        )
    if paused is None:
        wait = common.seconds_until(inp.now, due)
        requeue = min(requeue, wait) if requeue else wait
    status = walk.status.with_(
        canary_weight=weight,
        phase=Phase.PAUSED if paused else Phase.PROGRESSING,
        pause_reason=str(paused) if paused else None,
        last_progress_time=last,
        progress_marker=marker,
    )
    return _decision(
        inp,
        intents=[DeploymentIntent(STABLE, stable, write_stable), DeploymentIntent(CANARY, rev, canary_n)],
        status=status,
        ready=st is not None and st.serving(),
        reconciling=True,
        message=message,
        paused=paused,
        requeue=requeue,
        events=events,
    )


def _promote(inp: RolloutInput, stable: str, status: RolloutStatus, events: list[str]) -> RolloutDecision:
    """Every step passed: stable takes the new template; the canary serves beside it meanwhile."""
    rev = inp.desired_revision
    can = inp.deployments.get(CANARY)
    write_n, n = _stable_count(inp)
    canary_n = can.spec_replicas if can is not None and can.runs(rev) else 0
    message = f"promoting revision {rev}: stable rolls to it ({n} replica(s)); the canary serves meanwhile"
    status = status.with_(
        canary_weight=100,
        phase=Phase.PROGRESSING,
        pause_reason=None,
        promoting_revision=rev,
        last_progress_time=inp.now,
        progress_marker=f"{rev}|promoting",
    )
    intents = [DeploymentIntent(STABLE, rev, write_n)]
    if can is not None:
        intents.append(DeploymentIntent(CANARY, can.revision or rev, canary_n))
    return _decision(
        inp,
        intents=intents,
        status=status,
        ready=True,
        reconciling=True,
        message=message,
        requeue=2.0,
        events=[*events, f"promoting revision {rev} to stable"],
    )
