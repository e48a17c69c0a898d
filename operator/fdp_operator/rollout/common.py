"""Pieces shared by the blue/green and canary state machines: the progress clock, intent
bookkeeping, the failure message, and the facts every decision ends with.

The facts feed ``conditions.router_status`` (kstatus and the Argo CD health checks in
charts/.../argocd/ read the result): ``ready`` is True while the stable revision serves (also
during and after a failed rollout), ``reconciling`` while a change is rolling out (also while
paused: the rollout is not done), ``stalled`` names the failure after an abort, a missed
progress deadline or a failed analysis, ``paused`` the wait for a promotion, a pause step or
``spec.rollout.paused``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from fdp_operator.rollout.types import (
    FAILURE_REASONS,
    DeploymentIntent,
    Phase,
    Reason,
    RolloutDecision,
    RolloutInput,
    RolloutStatus,
)


def progress_clock(prev: RolloutStatus, marker: str, now: datetime, *, paused: bool) -> tuple[datetime, str]:
    """When did this rollout last make progress? Pauses do not count against the deadline.

    ``marker`` summarises observable progress (revision, step, available pods); any change
    of it restarts the clock. Derived from status + observation only, so it survives restarts.
    """
    if paused or prev.progress_marker != marker or prev.last_progress_time is None:
        return now, marker
    return prev.last_progress_time, marker


def deadline(last_progress: datetime, seconds: int) -> datetime:
    return last_progress + timedelta(seconds=seconds)


def seconds_until(now: datetime, when: datetime) -> float:
    return max((when - now).total_seconds(), 1.0)


def unhandled(token: str | None, handled: str | None) -> str | None:
    """The intent token if it has not been acted on yet."""
    return token if token and token != handled else None


def decision(
    *,
    intents: Iterable[DeploymentIntent],
    active_role: str | None,
    preview_role: str | None,
    hpa_role: str,
    status: RolloutStatus,
    ready: bool,
    reconciling: bool,
    message: str,
    stalled: Reason | None = None,
    paused: Reason | None = None,
    requeue: float | None = None,
    events: Iterable[str] = (),
    keep_incumbent: bool = False,
) -> RolloutDecision:
    """A decision and its facts. `progressing` and `stalled_reason` follow from
    `reconciling` and `stalled`, so every strategy derives them the same way."""
    return RolloutDecision(
        deployments=tuple(intents),
        active_role=active_role,
        preview_role=preview_role,
        hpa_role=hpa_role,
        status=status,
        ready=ready,
        progressing=reconciling and stalled is None,
        stalled_reason=str(stalled) if stalled else None,
        message=message,
        requeue_after=requeue,
        events=tuple(events),
        keep_incumbent=keep_incumbent,
        paused=paused,
    )


def failure_message(reason: Reason, revision: str, stable: str | None, detail: str) -> str:
    """The message after a failed rollout: what happened and exactly what to do next."""
    what = {
        Reason.ABORTED: "was aborted",
        Reason.PROGRESS_DEADLINE_EXCEEDED: (
            "made no progress within progressDeadlineSeconds and was rolled back"
        ),
        Reason.ANALYSIS_FAILED: "failed analysis and was rolled back",
    }.get(reason, f"failed ({reason})")
    serving = f"stable revision {stable} keeps serving" if stable else "no stable revision serves"
    detail = f" ({detail})" if detail else ""
    return (
        f"Rollout of revision {revision} {what}{detail}; {serving}. To retry, change the pod "
        f"template (e.g. a new image tag or config); to clear this state, revert the spec to "
        f"the stable revision."
    )


def consume_intents(inp: RolloutInput, status: RolloutStatus, what: str) -> tuple[RolloutStatus, list[str]]:
    """Promote/abort tokens that arrive when there is nothing to act on are recorded as handled."""
    events: list[str] = []
    token = unhandled(inp.intents.promote, status.handled_promote)
    if token:
        events.append(f"promote ignored: {what}")
        status = status.with_(handled_promote=token)
    token = unhandled(inp.intents.abort, status.handled_abort)
    if token:
        events.append(f"abort ignored: {what}")
        status = status.with_(handled_abort=token)
    return status, events


def failed_rollout_message(
    inp: RolloutInput, status: RolloutStatus, why: Reason, stable: str | None, detail: str
) -> str:
    """failure_message, but keep the detail recorded when the rollout first failed."""
    rev = inp.desired_revision
    if not detail and status.phase == Phase.DEGRADED and status.aborted_revision == rev and status.message:
        return status.message
    return failure_message(why, rev, stable, detail)


def reason_of(text: str | None) -> Reason:
    """A recorded failure reason, defaulting to Aborted for anything unknown."""
    try:
        reason = Reason(text or Reason.ABORTED)
    except ValueError:
        return Reason.ABORTED
    return reason if reason in FAILURE_REASONS else Reason.ABORTED


def failed(
    inp: RolloutInput,
    status: RolloutStatus,
    *,
    strategy: str,
    serving_role: str,
    other_role: str,
    stable: str,
    replicas: int | None,
    active_role: str | None,
    preview_role: str | None,
    events: Iterable[str] = (),
    reason: Reason | None = None,
    detail: str = "",
) -> RolloutDecision:
    """After abort / deadline / failed analysis: ``other_role`` (preview or canary) at 0,
    ``serving_role`` on the stable revision at ``replicas`` (None: the HPA's), Stalled.

    Blue/green and canary alike; ``status`` comes with the strategy's own fields reset. The
    first failure's detail stays in the message on later reconciles (``failed_rollout_message``).
    """
    rev = inp.desired_revision
    why = reason_of(reason or status.abort_reason)
    message = failed_rollout_message(inp, status, why, stable, detail)
    status, more = consume_intents(inp, status, f"the rollout of {rev} failed; change the spec to retry")
    status = status.with_(
        strategy=strategy,
        current_revision=rev,
        stable_revision=stable,
        aborted_revision=rev,
        abort_reason=str(why),
        phase=Phase.DEGRADED,
        message=message,
        pause_reason=None,
    )
    intents = [DeploymentIntent(serving_role, stable, replicas)]
    other = inp.deployments.get(other_role)
    if other is not None:
        intents.append(DeploymentIntent(other_role, other.revision or rev, 0))
    serving = inp.deployments.get(serving_role)
    return decision(
        intents=intents,
        active_role=active_role,
        preview_role=preview_role,
        hpa_role=serving_role,
        status=status,
        ready=serving is not None and serving.serving(),
        reconciling=False,
        message=message,
        stalled=why,
        events=[*events, *more],
    )
