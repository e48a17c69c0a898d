"""Value types of the rollout engine: what it observes, what it remembers, what it decides.

The engine (``bluegreen.decide``, ``canary.decide``) is a pure function of
``RolloutInput`` -> ``RolloutDecision``: objects to apply, ``status.rollout`` and facts
(ready, progressing, stalled, paused); ``conditions.router_status`` turns the facts into the
CR's conditions. ``render/workloads.py`` builds the input from the
parsed FederatedRouter, the observed Deployments/Services/HPA and the previous
``status.rollout``, and turns the decision into objects to apply. Nothing here does I/O or
reads the clock: ``now`` is an input, so an operator restart at any point recomputes the
same decision from the same spec, cluster objects and status timestamps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from fdp_operator.conditions import Reason, RolloutFacts
from fdp_operator.models import RolloutSpec

__all__ = ["FAILURE_REASONS", "Reason"]  # Reason lives in conditions.py: one enum for every reason


#: Reasons that end a rollout with Stalled=True (the rollout is rolled back to stable).
FAILURE_REASONS = frozenset({Reason.ABORTED, Reason.PROGRESS_DEADLINE_EXCEEDED, Reason.ANALYSIS_FAILED})


class Phase(StrEnum):
    """Summary of ``status.rollout.phase``: what the Argo CD health check reads first."""

    HEALTHY = "Healthy"
    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    DEGRADED = "Degraded"


@dataclass(frozen=True)
class DeploymentView:
    """The parts of an observed Deployment the engine needs (``render.workloads.deployment_view``)."""

    name: str
    revision: str | None
    spec_replicas: int
    replicas: int = 0
    updated_replicas: int = 0
    ready_replicas: int = 0
    available_replicas: int = 0
    generation_observed: bool = True

    def runs(self, revision: str) -> bool:
        return self.revision == revision

    def available_at(self, revision: str, replicas: int) -> bool:
        """Runs ``revision`` with at least ``replicas`` available and no pods of an older template."""
        return (
            self.revision == revision
            and self.generation_observed
            and self.spec_replicas == replicas
            and self.updated_replicas >= replicas
            and self.available_replicas >= replicas
            and self.replicas == self.updated_replicas
        )

    def serving(self) -> bool:
        """At least one pod is available: the Service behind it answers."""
        return self.available_replicas > 0


@dataclass(frozen=True)
class Intents:
    """User intents from annotations (``intents.parse``): opaque tokens, acted on once each."""

    promote: str | None = None
    promote_full: bool = False
    abort: str | None = None


class AnalysisVerdict(StrEnum):
    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


@dataclass(frozen=True)
class Analysis:
    """The result of an analysis the caller ran (e.g. the router's error rate from Prometheus)."""

    verdict: AnalysisVerdict
    message: str = ""


_STATUS_KEYS = {
    "strategy": "strategy",
    "phase": "phase",
    "message": "message",
    "stable_revision": "stableRevision",
    "current_revision": "currentRevision",
    "active_color": "activeColor",
    "preview_color": "previewColor",
    "preview_available_since": "previewAvailableSince",
    "promoting_revision": "promotingRevision",
    "scale_down_at": "scaleDownAt",
    "current_step_index": "currentStepIndex",
    "canary_weight": "canaryWeight",
    "step_started_at": "stepStartedAt",
    "pause_reason": "pauseReason",
    "last_progress_time": "lastProgressTime",
    "progress_marker": "progressMarker",
    "aborted_revision": "abortedRevision",
    "abort_reason": "abortReason",
    "handled_promote": "handledPromote",
    "handled_abort": "handledAbort",
    "switching_from": "switchingFrom",
}
_TIME_FIELDS = {"preview_available_since", "scale_down_at", "step_started_at", "last_progress_time"}


def format_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True)
class RolloutStatus:
    """``status.rollout``: the engine's memory across reconciles and operator restarts.

    Only facts and timestamps live here, never user intents (those are in spec/annotations);
    ``handled_*`` record which intent tokens were already acted on, so each acts once.
    """

    strategy: str | None = None
    phase: str | None = None
    message: str | None = None
    stable_revision: str | None = None
    current_revision: str | None = None
    active_color: str | None = None
    preview_color: str | None = None
    preview_available_since: datetime | None = None
    promoting_revision: str | None = None
    scale_down_at: datetime | None = None
    current_step_index: int | None = None
    canary_weight: int | None = None
    step_started_at: datetime | None = None
    pause_reason: str | None = None
    last_progress_time: datetime | None = None
    progress_marker: str | None = None
    aborted_revision: str | None = None
    abort_reason: str | None = None
    handled_promote: str | None = None
    handled_abort: str | None = None
    #: The previous strategy's Deployment that serves while a strategy switch hands over.
    switching_from: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> RolloutStatus:
        """Tolerant: unknown keys are ignored and malformed values read as absent."""
        raw = raw or {}
        kwargs: dict[str, Any] = {}
        for attr, key in _STATUS_KEYS.items():
            value = raw.get(key)
            if value is None:
                continue
            if attr in _TIME_FIELDS:
                value = parse_time(str(value))
            elif attr in ("current_step_index", "canary_weight"):
                value = int(value) if isinstance(value, int | float | str) and str(value).isdigit() else None
            else:
                value = str(value)
            kwargs[attr] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[_STATUS_KEYS[f.name]] = format_time(value) if isinstance(value, datetime) else value
        return out

    def with_(self, **changes: Any) -> RolloutStatus:
        return replace(self, **changes)


@dataclass(frozen=True)
class Incumbent:
    """The previous strategy's Deployment that serves now (``spec.rollout.strategy`` changed).

    ``role`` is one of the other strategy's roles (``blue``, ``green``, ``stable``) or
    ``switch.PLAIN`` for the RollingUpdate Deployment; ``view.revision`` is the revision it runs.
    """

    role: str
    view: DeploymentView


@dataclass(frozen=True)
class RolloutInput:
    """Everything one decision depends on."""

    now: datetime
    spec: RolloutSpec
    desired_revision: str
    #: Replicas that should serve: spec.replicas, or with an HPA the count it currently owns.
    total_replicas: int
    autoscaled: bool
    deployments: Mapping[str, DeploymentView]  # keyed by role: blue/green or stable/canary
    status: RolloutStatus
    intents: Intents = Intents()
    #: The color the active Service selects now (what really serves), if it exists.
    observed_active_color: str | None = None
    analysis: Analysis | None = None
    #: After a strategy switch: the old strategy's Deployment that still serves, if any
    #: (``rollout.incumbent_role`` finds it; only read while ``status.strategy`` differs).
    incumbent: Incumbent | None = None


@dataclass(frozen=True)
class DeploymentIntent:
    """One Deployment the plan wants.

    ``template_revision`` is the revision whose pod template it must run: the desired one
    (render the new template) or the one it already runs (keep its observed template).
    ``replicas`` is None when the HPA owns the count.
    """

    role: str
    template_revision: str
    replicas: int | None


@dataclass(frozen=True)
class RolloutDecision:
    deployments: tuple[DeploymentIntent, ...]
    #: Role (color) the active Service must select; None selects every router pod (canary).
    active_role: str | None
    #: Role the preview Service selects (blue/green only).
    preview_role: str | None
    #: Role the HPA scales.
    hpa_role: str
    status: RolloutStatus
    #: the stable revision serves (Ready stays True during a rollout and after a rollback)
    ready: bool
    #: a change is rolling out (also while paused)
    progressing: bool
    stalled_reason: str | None
    message: str
    #: why the rollout waits, if it does (Paused=True on the CR)
    paused: Reason | None = None
    requeue_after: float | None = None
    events: tuple[str, ...] = field(default_factory=tuple)
    #: A strategy switch is handing over: the incumbent keeps serving (the active Service
    #: keeps selecting it, it is not pruned) until the new strategy's stable role is Available.
    keep_incumbent: bool = False

    def facts(self) -> RolloutFacts:
        """What ``conditions.router_status`` needs: the engine writes no condition itself."""
        return RolloutFacts(
            available=self.ready,
            progressing=self.progressing,
            stalled=self.stalled_reason,
            paused=self.paused,
            message=self.message,
            progressive=True,
        )
