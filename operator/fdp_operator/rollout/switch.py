"""Strategy switches (``spec.rollout.strategy`` changed): hand the stable revision over first.

The rule: the strategy in the spec that introduces a revision governs its rollout. When the
strategy changes, the new strategy's Deployments do not exist yet while the old strategy's
serving Deployment, the *incumbent* (``<name>``, the active color or ``<name>-stable``),
still runs the stable revision. Without this module the new strategy saw no Deployment of its
own and put the desired revision straight onto its stable role, so a switch to Canary that
came with a new image skipped every canary step. A switch now runs in two parts:

1. Hand-over: the new strategy's stable role (``stable``, or the active color) starts with
   the incumbent's revision at the full count (the seam copies the incumbent's pod
   template); the incumbent keeps serving and the active Service keeps selecting it
   (``RolloutDecision.keep_incumbent``). No pod of the desired revision runs yet. The old
   strategy's other Deployments (a blue/green preview, a canary) are removed at once.
2. Once that role is Available the incumbent is retired, and the desired revision (if it
   differs) rolls out under the new strategy from its beginning: every canary step, or a
   blue/green preview and promotion, exactly as for an image change without a switch.

So a rollout in progress under the old strategy starts over under the new one. A canary
whose stable Deployment already took the new template (past its last step) cannot go back:
the incumbent runs the new revision, so the hand-over finishes it. A revision that failed
(aborted, deadline, analysis) stays failed across a switch until the pod template changes.
An abort during the hand-over marks the desired revision failed; the hand-over itself (which
only moves the stable revision) still completes.

The engine knows a switch is under way from ``status.rollout``: ``strategy`` (the strategy
of the last decision) differs from the spec, or ``switchingFrom`` names the incumbent of a
hand-over in progress. So an operator restart resumes a hand-over, and an incumbent whose
deletion lags behind never starts a second one. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from fdp_operator.rollout import common
from fdp_operator.rollout.types import (
    DeploymentIntent,
    Incumbent,
    Phase,
    Reason,
    RolloutDecision,
    RolloutInput,
    RolloutStatus,
)

#: Role of the RollingUpdate strategy's single Deployment (named ``<router>``).
PLAIN = "plain"
_COLORS = ("blue", "green")


def incumbent_role(
    own_roles: Collection[str], present: Collection[str], service_color: str | None
) -> str | None:
    """Which Deployment of another strategy serves now, if any.

    ``own_roles``: the current strategy's roles; ``present``: roles whose Deployment exists
    (``PLAIN`` for ``<router>``); ``service_color``: the color the active Service selects,
    or None when it selects every router pod (canary, RollingUpdate, a hand-over from them).
    """
    if service_color in _COLORS:
        return service_color if service_color in present and service_color not in own_roles else None
    for role in ("stable", PLAIN):
        if role in present and role not in own_roles:
            return role
    return None


def switching(inp: RolloutInput, strategy: str) -> bool:
    """Is this the first decision under ``strategy``, or is a hand-over to it in progress?"""
    return inp.status.strategy != strategy or inp.status.switching_from is not None


def incumbent(inp: RolloutInput) -> Incumbent | None:
    inc = inp.incumbent
    return inc if inc is not None and inc.view.revision else None


def fresh(inp: RolloutInput) -> RolloutInput:
    """The input for the first normal decision after a switch: any rollout starts from scratch."""
    return replace(inp, status=inp.status.with_(current_revision=None, switching_from=None))


def after_handover(inp: RolloutInput, decision: RolloutDecision, strategy: str, role: str) -> RolloutDecision:
    """The first normal decision after a switch: say that the incumbent is being retired."""
    inc = incumbent(inp)
    if inc is None:
        return decision
    event = f"switched to {strategy}: {role} serves revision {inc.view.revision}; {inc.view.name} is retired"
    return replace(decision, events=(event, *decision.events))


def handover(
    inp: RolloutInput,
    inc: Incumbent,
    *,
    strategy: str,
    role: str,
    replicas: int | None,
    expected: int,
    others: Sequence[DeploymentIntent],
    status: RolloutStatus,
) -> RolloutDecision:
    """Start ``role`` with the incumbent's revision; the incumbent serves until it is Available.

    ``replicas`` is the count to write (None when the HPA owns it), ``expected`` the count
    that must be available, ``others`` the strategy's other Deployments (already at 0),
    ``status`` the previous status with the strategy's own fields reset.
    """
    old = inc.view.revision
    assert old is not None
    rev = inp.desired_revision
    now = inp.now
    dep = inp.deployments.get(role)
    events: list[str] = []
    if inp.status.switching_from != inc.view.name:
        then = f"; then revision {rev} rolls out under {strategy}" if rev != old else ""
        events.append(
            f"switching to {strategy}: {role} starts at revision {old}, "
            f"{inc.view.name} serves until it is available{then}"
        )
    status = status.with_(
        strategy=strategy,
        switching_from=inc.view.name,
        current_revision=rev,
        stable_revision=old,
        pause_reason=None,
        promoting_revision=None,
        preview_color=None,
        preview_available_since=None,
        scale_down_at=None,
        current_step_index=None,
        step_started_at=None,
    )
    if status.aborted_revision != rev:
        status = status.with_(aborted_revision=None, abort_reason=None)
    aborted = rev != old and status.aborted_revision == rev
    token = common.unhandled(inp.intents.abort, status.handled_abort)
    if token and rev != old:
        status = status.with_(handled_abort=token, aborted_revision=rev, abort_reason=Reason.ABORTED)
        events.append(f"rollout of {rev} aborted by user before it started; the switch to {strategy} goes on")
        aborted = True

    available = dep.available_replicas if dep is not None and dep.runs(old) else 0
    message = (
        f"switching to {strategy}: {inc.view.name} serves revision {old} until {role} has {expected} "
        f"available replica(s) of it ({available} now)"
    )
    if aborted:
        message += f"; the rollout of revision {rev} was aborted and will not start"
    elif rev != old:
        message += f"; then revision {rev} rolls out under {strategy}"
    last, marker = common.progress_clock(inp.status, f"{old}|switch|{available}", now, paused=False)
    due = common.deadline(last, inp.spec.progress_deadline_seconds)
    stalled: Reason | None = None
    requeue: float | None = None
    if now >= due:
        stalled = Reason.PROGRESS_DEADLINE_EXCEEDED
        message += ": no progress within progressDeadlineSeconds"
    else:
        requeue = common.seconds_until(now, due)
    status = status.with_(
        phase=Phase.DEGRADED if stalled else Phase.PROGRESSING,
        message=message,
        last_progress_time=last,
        progress_marker=marker,
    )
    serving = inc.view.serving()
    return common.decision(
        intents=(DeploymentIntent(role, old, replicas), *others),
        active_role=None,
        preview_role=None,
        hpa_role=inc.role,
        status=status,
        ready=serving,
        reconciling=True,
        message=message,
        stalled=stalled,
        requeue=requeue,
        events=events,
        keep_incumbent=True,
    )
