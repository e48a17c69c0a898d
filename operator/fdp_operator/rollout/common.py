"""Pieces shared by the blue/green and canary state machines: the progress clock, intent
bookkeeping, and the conditions every decision ends with.

Conditions follow kstatus and the Argo CD health checks (charts/.../argocd/): ``Ready`` is
True while the stable revision serves (also during and after a failed rollout),
``Reconciling`` is True while a change is rolling out (also while paused: the rollout is
not done), ``Stalled`` is True with the failure reason after an abort, a missed progress
deadline or a failed analysis (and then ``Reconciling`` is False, so kstatus says Failed),
``Paused`` is True while waiting for a promotion, a pause step or ``spec.rollout.paused``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from fdp_operator.rollout.types import (
    FAILURE_REASONS,
    Condition,
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


def conditions(
    *,
    ready: bool,
    ready_message: str,
    reconciling: bool,
    reason: Reason,
    message: str,
    stalled: Reason | None,
    paused: Reason | None,
) -> tuple[Condition, ...]:
    def flag(b: bool) -> str:
        return "True" if b else "False"

    return (
        Condition(
            "Ready",
            flag(ready),
            Reason.HEALTHY if ready else Reason.STABLE_UNAVAILABLE,
            ready_message,
        ),
        Condition("Reconciling", flag(reconciling and stalled is None), reason, message),
        Condition(
            "Stalled",
            flag(stalled is not None),
            stalled or Reason.HEALTHY,
            message if stalled else "rollout is not stalled",
        ),
        Condition(
            "Paused",
            flag(paused is not None),
            paused or Reason.HEALTHY,
            message if paused else "rollout is not paused",
        ),
    )


def decision(
    *,
    intents: Iterable[DeploymentIntent],
    active_role: str | None,
    preview_role: str | None,
    hpa_role: str,
    status: RolloutStatus,
    ready: bool,
    ready_message: str,
    reconciling: bool,
    reason: Reason,
    message: str,
    stalled: Reason | None = None,
    paused: Reason | None = None,
    requeue: float | None = None,
    events: Iterable[str] = (),
    ready_condition: bool | None = None,
    keep_incumbent: bool = False,
) -> RolloutDecision:
    """A decision with its conditions. `progressing` and `stalled_reason` follow from
    `reconciling` and `stalled`, so every strategy derives them the same way; the Ready
    condition is `ready` unless `ready_condition` says otherwise."""
    return RolloutDecision(
        deployments=tuple(intents),
        active_role=active_role,
        preview_role=preview_role,
        hpa_role=hpa_role,
        status=status,
        conditions=conditions(
            ready=ready if ready_condition is None else ready_condition,
            ready_message=ready_message,
            reconciling=reconciling,
            reason=reason,
            message=message,
            stalled=stalled,
            paused=paused,
        ),
        ready=ready,
        progressing=reconciling and stalled is None,
        stalled_reason=str(stalled) if stalled else None,
        message=message,
        requeue_after=requeue,
        events=tuple(events),
        keep_incumbent=keep_incumbent,
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
