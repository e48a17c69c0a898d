"""Progressive delivery for FederatedRouters: blue/green and canary as pure state machines.

``render/workloads.py`` (the seam with the operator core) calls ``decide`` once per
reconcile with a ``RolloutInput`` (spec, desired revision, observed Deployments, previous
``status.rollout``, user intents from annotations, ``now``) and turns the returned
``RolloutDecision`` into Deployments, Services, HPA target, status and conditions.

One file per concern: ``bluegreen.py``, ``canary.py``, ``split.py`` (weights as replica
counts), ``intents.py`` (promote/abort annotations), ``revision.py`` (template hashing),
``switch.py`` (strategy switches: hand the stable revision over first), ``common.py``
(progress clock, conditions), ``types.py``. No Kubernetes client, no I/O, no
clock: every decision derives from its inputs, so an operator restart resumes a rollout.
"""

from __future__ import annotations

from collections.abc import Collection

from fdp_operator.models import RolloutStrategy
from fdp_operator.rollout import bluegreen, canary, switch
from fdp_operator.rollout.types import RolloutDecision, RolloutInput

#: The Deployment roles of each progressive strategy (Deployments ``<router>-<role>``).
ROLES: dict[RolloutStrategy, tuple[str, str]] = {
    RolloutStrategy.BLUE_GREEN: (bluegreen.BLUE, bluegreen.GREEN),
    RolloutStrategy.CANARY: (canary.STABLE, canary.CANARY),
}


def decide(strategy: RolloutStrategy, inp: RolloutInput) -> RolloutDecision:
    """Dispatch to the strategy's state machine (RollingUpdate is not handled here)."""
    if strategy == RolloutStrategy.BLUE_GREEN:
        return bluegreen.decide(inp)
    if strategy == RolloutStrategy.CANARY:
        return canary.decide(inp)
    raise ValueError(f"rollout strategy {strategy!r} is not a progressive strategy")


def incumbent_role(
    strategy: RolloutStrategy, present: Collection[str], service_color: str | None
) -> str | None:
    """The role of another strategy's Deployment that serves now (see ``switch.incumbent_role``)."""
    return switch.incumbent_role(ROLES[strategy], present, service_color)
