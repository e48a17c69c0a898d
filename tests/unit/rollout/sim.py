"""A tiny simulated cluster for the rollout state machines.

``Sim`` plays the parts outside the engine: it applies each decision to fake Deployments
(template revision and replica count, like server-side apply would), lets a "kubelet" make
pods of good revisions Available (bad revisions never become ready), persists status through
its dict form (like the status subresource would), and moves a clock. Only these edges are
faked; every decision is the real engine's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fdp_operator.conditions import RouterObservation, router_status
from fdp_operator.models import RolloutSpec, RolloutStrategy
from fdp_operator.rollout import ROLES, decide, incumbent_role
from fdp_operator.rollout.types import (
    Analysis,
    DeploymentView,
    Incumbent,
    Intents,
    RolloutDecision,
    RolloutInput,
    RolloutStatus,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def rollout_spec(**fields: Any) -> RolloutSpec:
    return RolloutSpec.model_validate(fields)


@dataclass
class Sim:
    spec: RolloutSpec
    revision: str = "rev1"
    replicas: int = 4
    autoscaled: bool = False
    now: datetime = T0
    deployments: dict[str, DeploymentView] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    active_color: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    bad_revisions: set[str] = field(default_factory=set)
    analysis: Analysis | None = None
    last: RolloutDecision | None = None
    history: list[RolloutDecision] = field(default_factory=list)

    @property
    def strategy(self) -> RolloutStrategy:
        return self.spec.strategy

    def incumbent(self) -> Incumbent | None:
        """Like the seam: another strategy's Deployment that the active Service still reaches."""
        role = incumbent_role(self.strategy, set(self.deployments), self.active_color)
        return Incumbent(role, self.deployments[role]) if role is not None else None

    def input(self) -> RolloutInput:
        return RolloutInput(
            now=self.now,
            spec=self.spec,
            desired_revision=self.revision,
            total_replicas=self.replicas,
            autoscaled=self.autoscaled,
            # like the seam: the engine sees its own strategy's Deployments only
            deployments={r: v for r, v in self.deployments.items() if r in ROLES[self.strategy]},
            status=RolloutStatus.from_dict(self.status),
            intents=Intents(
                promote=self.annotations.get("fdp.io/promote"),
                promote_full=self.annotations.get("fdp.io/promote", "").startswith("full:"),
                abort=self.annotations.get("fdp.io/abort"),
            ),
            observed_active_color=self.active_color,
            analysis=self.analysis,
            incumbent=self.incumbent(),
        )

    def reconcile(self) -> RolloutDecision:
        inp = self.input()
        decision = decide(self.strategy, inp)
        for intent in decision.deployments:
            old = self.deployments.get(intent.role)
            replicas = intent.replicas
            if replicas is None:  # HPA-owned: keep what is there
                replicas = old.spec_replicas if old is not None else self.replicas
            changed_template = old is None or old.revision != intent.template_revision
            view = DeploymentView(
                name=intent.role,
                revision=intent.template_revision,
                spec_replicas=replicas,
                replicas=old.replicas if old is not None else 0,
                updated_replicas=0 if changed_template else (old.updated_replicas if old else 0),
                ready_replicas=0 if changed_template else (old.ready_replicas if old else 0),
                available_replicas=0 if changed_template else (old.available_replicas if old else 0),
            )
            self.deployments[intent.role] = view
        # like the seam: Deployments of another strategy are pruned, except an incumbent that
        # keeps serving during a hand-over (and the active Service keeps selecting it)
        keep = inp.incumbent.role if decision.keep_incumbent and inp.incumbent is not None else None
        for role in [r for r in self.deployments if r not in ROLES[self.strategy] and r != keep]:
            del self.deployments[role]
        if keep is None:
            self.active_color = decision.active_role
        self.status = decision.status.to_dict()
        self.last = decision
        self.history.append(decision)
        return decision

    def kubelet(self) -> None:
        """Deployment controller + kubelet: good revisions become fully available."""
        for role, dep in list(self.deployments.items()):
            n = dep.spec_replicas
            good = dep.revision not in self.bad_revisions
            self.deployments[role] = replace(
                dep,
                replicas=n,
                updated_replicas=n,
                ready_replicas=n if good else 0,
                available_replicas=n if good else 0,
            )

    def switch(self, strategy: str, revision: str | None = None, **fields: Any) -> None:
        """The user edits spec.rollout.strategy (and maybe the image) in one update."""
        self.spec = rollout_spec(strategy=strategy, **fields)
        if revision is not None:
            self.revision = revision

    def hpa_scales(self, role: str, replicas: int) -> None:
        dep = self.deployments[role]
        self.deployments[role] = replace(dep, spec_replicas=replicas)

    def tick(self, seconds: float = 1) -> None:
        self.now += timedelta(seconds=seconds)

    def run(self, rounds: int = 6, seconds: float = 1) -> RolloutDecision:
        """Reconcile, let pods settle, advance time; repeated ``rounds`` times."""
        decision = self.reconcile()
        for _ in range(rounds - 1):
            self.kubelet()
            self.tick(seconds)
            decision = self.reconcile()
        return decision

    def replicas_of(self, role: str) -> int:
        dep = self.deployments.get(role)
        return dep.spec_replicas if dep is not None else 0

    def revision_of(self, role: str) -> str | None:
        dep = self.deployments.get(role)
        return dep.revision if dep is not None else None

    def condition(self, type_: str) -> tuple[str, str]:
        """(status, reason) of the condition the operator writes to the CR for the last decision."""
        assert self.last is not None
        written = router_status(
            RouterObservation(policy_name="pol", nodes_selected=1, nodes_ready=1, rollout=self.last.facts()),
            "serving",
        )
        for ctype, status, reason, _ in written:
            if ctype == type_:
                return status, reason
        raise KeyError(type_)
