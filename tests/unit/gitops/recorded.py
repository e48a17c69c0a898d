"""Statuses of the three kinds at every phase, as the operator writes them.

The FederatedRouter rollout phases carry ``status.rollout`` and conditions as the rollout
engine and the operator's condition chain produce them (metav1.Condition shape). Each
entry: (name, object, expected Argo CD health, expected kstatus verdict).
"""

from __future__ import annotations

from typing import Any

T = "2026-01-01T12:00:00Z"


def cond(ctype: str, status: str, reason: str, message: str = "", gen: int = 1) -> dict[str, Any]:
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": T,
        "observedGeneration": gen,
    }


def obj(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        out["status"] = status
    return out


def fr(
    *,
    ready: tuple[str, str, str],
    reconciling: tuple[str, str, str] = ("False", "Ready", ""),
    stalled: tuple[str, str, str] = ("False", "Ready", ""),
    paused: tuple[str, str, str] | None = None,
    rollout: dict[str, Any] | None = None,
    generation: int = 1,
    observed: int = 1,
) -> dict[str, Any]:
    conditions = [
        cond("Ready", *ready, gen=observed),
        cond("Reconciling", *reconciling, gen=observed),
        cond("Stalled", *stalled, gen=observed),
    ]
    if paused is not None:
        conditions.append(cond("Paused", *paused, gen=observed))
    status = {"observedGeneration": observed, "conditions": conditions, "rollout": rollout or {}}
    return obj("FederatedRouter", status, generation)


BG = {"strategy": "BlueGreen", "activeColor": "blue", "stableRevision": "aaa", "currentRevision": "bbb"}
CANARY = {"strategy": "Canary", "stableRevision": "aaa", "currentRevision": "bbb"}
SERVING = ("True", "RolloutHealthy", "active color blue serves stable revision aaa")
NOT_PAUSED = ("False", "RolloutHealthy", "rollout is not paused")

FEDERATED_ROUTER: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "created, status written at once",
        fr(
            ready=("False", "Created", "reconciling"),
            reconciling=("True", "Created", "reconciling"),
        ),
        "Progressing",
        "InProgress",
    ),
    (
        "status from an older generation",
        fr(
            ready=("True", "Ready", "serving"),
            generation=3,
            observed=2,
        ),
        "Progressing",
        "InProgress",
    ),
    (
        "healthy after the first rollout",
        fr(
            ready=("True", "Ready", "2 replica(s) serving 3 hospital node(s)"),
            paused=NOT_PAUSED,
            rollout={**BG, "currentRevision": "aaa", "phase": "Healthy"},
        ),
        "Healthy",
        "Current",
    ),
    (
        "blue/green preview not yet available",
        fr(
            ready=SERVING,
            reconciling=("True", "Progressing", "waiting for preview green"),
            paused=NOT_PAUSED,
            rollout={**BG, "previewColor": "green", "phase": "Progressing"},
        ),
        "Progressing",
        "InProgress",
    ),
    (
        "blue/green waiting for a manual promotion",
        fr(
            ready=SERVING,
            reconciling=("True", "WaitingForPromotion", "waiting for promotion"),
            paused=("True", "WaitingForPromotion", "waiting for promotion: run `fdp-operator promote NAME`"),
            rollout={**BG, "previewColor": "green", "phase": "Paused", "pauseReason": "WaitingForPromotion"},
        ),
        "Suspended",
        "InProgress",
    ),
    (
        "blue/green switched, old color waiting for scale-down",
        fr(
            ready=("True", "Ready", "serving"),
            paused=NOT_PAUSED,
            rollout={
                **BG,
                "activeColor": "green",
                "stableRevision": "bbb",
                "scaleDownAt": T,
                "phase": "Healthy",
            },
        ),
        "Healthy",
        "Current",
    ),
    (
        "canary at a setWeight step",
        fr(
            ready=SERVING,
            reconciling=("True", "Progressing", "step 1/4, weight 10%"),
            paused=NOT_PAUSED,
            rollout={**CANARY, "currentStepIndex": 0, "canaryWeight": 10, "phase": "Progressing"},
        ),
        "Progressing",
        "InProgress",
    ),
    (
        "canary in a timed pause step",
        fr(
            ready=SERVING,
            reconciling=("True", "CanaryPauseStep", "pause step ends in 20s"),
            paused=("True", "CanaryPauseStep", "pause step ends in 20s"),
            rollout={**CANARY, "currentStepIndex": 1, "canaryWeight": 10, "phase": "Paused"},
        ),
        "Suspended",
        "InProgress",
    ),
    (
        "canary promoting to stable",
        fr(
            ready=SERVING,
            reconciling=("True", "Promoting", "stable rolls to bbb"),
            paused=NOT_PAUSED,
            rollout={**CANARY, "canaryWeight": 100, "phase": "Progressing"},
        ),
        "Progressing",
        "InProgress",
    ),
    (
        "aborted, stable still serving",
        fr(
            ready=SERVING,
            stalled=("True", "Aborted", "Rollout of revision bbb was aborted; ..."),
            paused=NOT_PAUSED,
            rollout={**BG, "abortedRevision": "bbb", "phase": "Degraded"},
        ),
        "Degraded",
        "Failed",
    ),
    (
        "rolled back at the progress deadline",
        fr(
            ready=SERVING,
            stalled=("True", "ProgressDeadlineExceeded", "Rollout of revision bbb made no progress"),
            paused=NOT_PAUSED,
            rollout={**CANARY, "abortedRevision": "bbb", "phase": "Degraded"},
        ),
        "Degraded",
        "Failed",
    ),
    (
        "policy missing",
        fr(
            ready=("False", "PolicyNotFound", "PrivacyPolicy 'pol' not found"),
            stalled=("True", "PolicyNotFound", "PrivacyPolicy 'pol' not found"),
        ),
        "Degraded",
        "Failed",
    ),
]


def hn(conditions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return obj("HospitalNode", {"observedGeneration": 1, "conditions": conditions, **extra})


def pp(conditions: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return obj("PrivacyPolicy", {"observedGeneration": 1, "conditions": conditions, **extra})


HOSPITAL_NODE: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "waiting for the first probe",
        hn(
            [
                cond("Ready", "False", "Created", "waiting for the first health probe"),
                cond("Reconciling", "True", "Created", "waiting for the first health probe"),
                cond("Stalled", "False", "Created"),
            ]
        ),
        "Progressing",
        "InProgress",
    ),
    (
        "probe succeeded",
        hn(
            [
                cond("Ready", "True", "Ready", "health probe succeeded"),
                cond("Reconciling", "False", "Ready"),
                cond("Stalled", "False", "Ready"),
            ],
            consecutiveFailures=0,
            latencyMs=12.5,
        ),
        "Healthy",
        "Current",
    ),
    (
        "failed past the threshold",
        hn(
            [
                cond("Ready", "False", "ProbeFailed", "3 consecutive failed probes (threshold 3)"),
                cond("Reconciling", "False", "ProbeFailed"),
                cond("Stalled", "True", "ProbeFailed", "3 consecutive failed probes (threshold 3)"),
            ],
            consecutiveFailures=3,
        ),
        "Degraded",
        "Failed",
    ),
    (
        "spec changed, not yet probed again",
        obj(
            "HospitalNode",
            {
                "observedGeneration": 1,
                "conditions": [cond("Ready", "True", "Ready")],
            },
            generation=2,
        ),
        "Progressing",
        "InProgress",
    ),
]

PRIVACY_POLICY: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "valid, guarantee stated",
        pp(
            [
                cond("Ready", "True", "Ready", "(10, 1e-05)-DP per user per 24h window"),
                cond("Reconciling", "False", "Ready"),
                cond("Stalled", "False", "Ready"),
            ],
            guarantee="(10, 1e-05)-DP per user per 24h window",
        ),
        "Healthy",
        "Current",
    ),
    (
        "invalid",
        pp(
            [
                cond("Ready", "False", "PolicyInvalid", "delta must be in (0, 1e-3]"),
                cond("Reconciling", "False", "PolicyInvalid"),
                cond("Stalled", "True", "PolicyInvalid", "delta must be in (0, 1e-3]"),
            ]
        ),
        "Degraded",
        "Failed",
    ),
    ("not yet validated", obj("PrivacyPolicy", None), "Progressing", "Current"),
]
