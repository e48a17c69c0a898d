"""Canary state machine (``spec.rollout.strategy: Canary``).

Called by ``render/workloads.py`` once per reconcile. Two Deployments, ``stable`` and
``canary``, behind one Service; a weight is realised as a replica ratio (``split.py``).

The rollout walks ``spec.rollout.steps`` from ``status.rollout.currentStepIndex``:

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
        return _failed(inp, stable, events=(), status=inp.status)
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
    *,
    events: tuple[str, ...] | list[str],
    status: RolloutStatus,
    reason: Reason | None = None,
    detail: str = "",
) -> RolloutDecision:
    """After abort / deadline / failed analysis: canary at 0, stable back to full size."""
    rev = inp.desired_revision
    why = common.reason_of(reason or status.abort_reason)
    message = common.failed_rollout_message(inp, status, why, stable, detail)
    status, more = common.consume_intents(
        inp, status, f"the rollout of {rev} failed; change the spec to retry"
    )
    status = status.with_(
        strategy=STRATEGY,
        current_revision=rev,
        stable_revision=stable,
        aborted_revision=rev,
        abort_reason=str(why),
        phase=Phase.DEGRADED,
        pause_reason=None,
        canary_weight=0,
    )
    write_n, _ = _stable_count(inp)
    intents = [DeploymentIntent(STABLE, stable, write_n)]
    can = inp.deployments.get(CANARY)
    if can is not None:
        intents.append(DeploymentIntent(CANARY, can.revision or rev, 0))
    st = inp.deployments.get(STABLE)
    serving = st is not None and st.serving()
    return _decision(
        inp,
        intents=intents,
        status=status,
        ready=serving,
        reconciling=False,
        message=message,
        stalled=why,
        events=[*events, *more],
    )


def _side_ready(dep: DeploymentView | None, revision: str, replicas: int, *, exact: bool) -> bool:
    if replicas == 0:
        return True
    if dep is None:
        return False
    if exact:
        return dep.available_at(revision, replicas)
    return dep.runs(revision) and dep.available_replicas >= replicas


def _rolling(inp: RolloutInput, stable: str) -> RolloutDecision:
    rev = inp.desired_revision
    spec = inp.spec
    now = inp.now
    steps = spec.steps
    prev = inp.status
    st = inp.deployments.get(STABLE)
    can = inp.deployments.get(CANARY)
    status = prev.with_(strategy=STRATEGY, current_revision=rev, stable_revision=stable)
    events: list[str] = []
    if prev.current_revision != rev:
        status = status.with_(
            current_step_index=0, step_started_at=now, aborted_revision=None, abort_reason=None
        )
        events.append(f"canary rollout of revision {rev} started; stable serves {stable}")

    abort = common.unhandled(inp.intents.abort, status.handled_abort)
    if abort:
        status = status.with_(handled_abort=abort, aborted_revision=rev, abort_reason=Reason.ABORTED)
        return _failed(inp, stable, events=[*events, f"rollout of {rev} aborted by user"], status=status)

    index = min(status.current_step_index or 0, len(steps))
    started = status.step_started_at or now
    token = common.unhandled(inp.intents.promote, status.handled_promote)
    if token and inp.intents.promote_full:
        index, started = len(steps), now
        status = status.with_(handled_promote=token)
        events.append(f"full promotion of {rev} requested by user")
        token = None

    paused: Reason | None = None
    requeue: float | None = None
    waiting = ""
    for _ in range(len(steps) + 1):
        if index >= len(steps):
            break
        weight = weight_at(steps, index)
        write_stable, stable_n, canary_n = _sizes(inp, weight)
        both_ready = _side_ready(can, rev, canary_n, exact=True) and _side_ready(
            st, stable, stable_n, exact=not inp.autoscaled
        )
        step = steps[index]
        if spec.paused:
            paused = Reason.PAUSED_BY_SPEC
            break
        if step.set_weight is not None:
            if not both_ready:
                have = can.available_replicas if can is not None and can.runs(rev) else 0
                waiting = (
                    f"waiting for {canary_n} canary and {stable_n} stable pod(s) "
                    f"to be available ({have} canary now)"
                )
                break
            if inp.analysis is not None and inp.analysis.verdict == AnalysisVerdict.FAILED:
                status = status.with_(aborted_revision=rev, abort_reason=Reason.ANALYSIS_FAILED)
                return _failed(
                    inp,
                    stable,
                    events=[*events, f"analysis failed at step {index}: {inp.analysis.message}"],
                    status=status,
                    reason=Reason.ANALYSIS_FAILED,
                    detail=inp.analysis.message,
                )
            index, started = index + 1, now
            continue
        assert step.pause is not None
        if token:
            status = status.with_(handled_promote=token)
            events.append(f"promoted past pause step {index}")
            token = None
            index, started = index + 1, now
            continue
        if step.pause.duration is None:
            paused = Reason.WAITING_FOR_PROMOTION
            break
        seconds = parse_duration(step.pause.duration)
        elapsed = (now - started).total_seconds()
        if elapsed >= seconds:
            index, started = index + 1, now
            continue
        paused = Reason.PAUSE_STEP
        requeue = max(seconds - elapsed, 1.0)
        break

    status = status.with_(current_step_index=index, step_started_at=started)
    if index >= len(steps):
        return _promote(inp, stable, status, events)

    weight = weight_at(steps, index)
    write_stable, stable_n, canary_n = _sizes(inp, weight)
    intents = [
        DeploymentIntent(STABLE, stable, write_stable),
        DeploymentIntent(CANARY, rev, canary_n),
    ]
    where = f"step {index + 1}/{len(steps)}, weight {weight}% ({canary_n} canary / {stable_n} stable)"
    if paused is Reason.PAUSED_BY_SPEC:
        message = f"canary {rev} at {where}; paused by spec.rollout.paused (set it to false to continue)"
    elif paused is Reason.WAITING_FOR_PROMOTION:
        message = (
            f"canary {rev} at {where}; paused until promoted: run `fdp-operator promote NAME` "
            f"(or `--full` to skip the remaining steps) or set annotation fdp.io/promote"
        )
    elif paused is Reason.PAUSE_STEP:
        message = f"canary {rev} at {where}; pause step ends in {requeue:.0f}s"
    else:
        message = f"canary {rev} at {where}: {waiting}"

    have_canary = can.available_replicas if can is not None and can.runs(rev) else 0
    marker = f"{rev}|{index}|{have_canary}|{st.available_replicas if st else 0}"
    last, marker = common.progress_clock(prev, marker, now, paused=paused is not None)
    due = common.deadline(last, spec.progress_deadline_seconds)
    if paused is None and now >= due:
        status = status.with_(aborted_revision=rev, abort_reason=Reason.PROGRESS_DEADLINE_EXCEEDED)
        return _failed(
            inp,
            stable,
            events=[*events, f"rollout of {rev} exceeded its progress deadline; rolled back"],
            status=status,
            reason=Reason.PROGRESS_DEADLINE_EXCEEDED,
            detail=message,
        )
    if paused is None:
        wait = common.seconds_until(now, due)
        requeue = min(requeue, wait) if requeue else wait
    status = status.with_(
        canary_weight=weight,
        phase=Phase.PAUSED if paused else Phase.PROGRESSING,
        pause_reason=str(paused) if paused else None,
        last_progress_time=last,
        progress_marker=marker,
    )
    serving = st is not None and st.serving()
    return _decision(
        inp,
        intents=intents,
        status=status,
        ready=serving,
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
