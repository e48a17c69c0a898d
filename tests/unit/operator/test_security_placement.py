"""The placement rule of the confused-deputy defences: whoever may edit a FederatedRouter
chooses `spec.scheduling`, and the operator creates the pods with its own rights. These tests
try what such a person would to reach further than the operator's administrator allows:
Kubernetes' own critical PriorityClasses (to preempt the cluster's system pods), a key-less
toleration (tolerates every taint, control-plane and NoExecute ones included), a class or key
just outside the allow-list, and settings that look like an allow-everything; each time the
operator must deploy nothing and name the field (reconcile with a fake API, as the image rule).
"""

from __future__ import annotations

from typing import Any

import pytest
from fdp_operator.models import SchedulingSpec
from fdp_operator.security import OperatorSettings, scheduling_refusal

from .test_security import _deployed, _reconcile

DEDICATED = {"key": "dedicated", "operator": "Equal", "value": "fdp-router", "effect": "NoSchedule"}


def _refusal(scheduling: dict[str, Any], settings: OperatorSettings | None = None) -> str | None:
    return scheduling_refusal(SchedulingSpec.model_validate(scheduling), settings or OperatorSettings())


@pytest.mark.parametrize(
    "scheduling",
    [
        {},
        {"priorityClassName": "fdp-high"},
        {"tolerations": [DEDICATED, {"key": "zone", "operator": "Exists"}]},
        {"priorityClassName": "system-cluster-critical-not"},  # a user class that only starts alike
    ],
)
def test_the_default_allows_ordinary_placement(scheduling: dict[str, Any]) -> None:
    assert _refusal(scheduling) is None


@pytest.mark.parametrize(
    ("scheduling", "field", "value"),
    [
        (
            {"priorityClassName": "system-node-critical"},
            "spec.scheduling.priorityClassName",
            "system-node-critical",
        ),
        (
            {"priorityClassName": "system-cluster-critical"},
            "spec.scheduling.priorityClassName",
            "system-cluster-critical",
        ),
        ({"tolerations": [{"operator": "Exists"}]}, "spec.scheduling.tolerations[0]", "without a key"),
        (
            {"tolerations": [DEDICATED, {"operator": "Exists", "effect": "NoExecute"}]},
            "spec.scheduling.tolerations[1]",
            "without a key",
        ),
        (
            {"tolerations": [{"key": "", "operator": "Exists"}]},
            "spec.scheduling.tolerations[0]",
            "without a key",
        ),
    ],
)
def test_the_default_refuses_what_reaches_the_clusters_own_pods_and_nodes(
    scheduling: dict[str, Any], field: str, value: str
) -> None:
    why = _refusal(scheduling)
    assert why is not None and why.startswith(field) and value in why
    assert "routerScheduling" in why  # says which setting would allow it


def test_an_allow_list_admits_exactly_its_entries() -> None:
    settings = OperatorSettings(
        allowed_priority_classes=("fdp-high",), allowed_toleration_keys=("dedicated",)
    )
    assert _refusal({"priorityClassName": "fdp-high", "tolerations": [DEDICATED]}, settings) is None
    for attempt, field in (
        ({"priorityClassName": "fdp-high2"}, "priorityClassName"),
        ({"priorityClassName": "system-node-critical"}, "priorityClassName"),
        ({"tolerations": [{"key": "dedicated2", "operator": "Exists"}]}, "tolerations[0]"),
        ({"tolerations": [DEDICATED, {"key": "node-role.kubernetes.io/control-plane"}]}, "tolerations[1]"),
        ({"tolerations": [{"operator": "Exists"}]}, "tolerations[0]"),
    ):
        why = _refusal(attempt, settings)
        assert why is not None and why.startswith(f"spec.scheduling.{field}"), (attempt, why)


def test_a_star_allows_everything_and_an_empty_list_nothing() -> None:
    anything = OperatorSettings(allowed_priority_classes=("*",), allowed_toleration_keys=("*",))
    assert (
        _refusal(
            {"priorityClassName": "system-node-critical", "tolerations": [{"operator": "Exists"}]}, anything
        )
        is None
    )
    nothing = OperatorSettings(allowed_priority_classes=(), allowed_toleration_keys=())
    assert _refusal({}, nothing) is None  # asking for nothing is always allowed
    assert _refusal({"priorityClassName": "fdp-high"}, nothing) is not None
    assert _refusal({"tolerations": [DEDICATED]}, nothing) is not None


def test_settings_come_from_the_environment_and_malformed_ones_stop_the_operator() -> None:
    s = OperatorSettings.from_env(
        {"FDP_ALLOWED_PRIORITY_CLASSES": "fdp-high, fdp-low", "FDP_ALLOWED_TOLERATION_KEYS": "dedicated"}
    )
    assert s.allowed_priority_classes == ("fdp-high", "fdp-low") and s.allowed_toleration_keys == (
        "dedicated",
    )
    default = OperatorSettings.from_env({"FDP_ALLOWED_PRIORITY_CLASSES": " "})
    assert default.allowed_priority_classes is None and default.allowed_toleration_keys is None
    assert OperatorSettings.from_env({"FDP_ALLOWED_TOLERATION_KEYS": "-"}).allowed_toleration_keys == ()
    for bad in ("fdp-high,", "a b", "*x", "-,fdp-high", "fdp-high\nsystem-node-critical"):
        with pytest.raises(ValueError, match="FDP_ALLOWED_PRIORITY_CLASSES"):
            OperatorSettings.from_env({"FDP_ALLOWED_PRIORITY_CLASSES": bad})


async def test_a_refused_placement_deploys_nothing_and_says_why_in_status() -> None:
    kube, ready = await _reconcile({"scheduling": {"priorityClassName": "system-node-critical"}})
    assert kube.writes == [] and ready["status"] == "False" and ready["reason"] == "SchedulingNotAllowed"
    assert ready["message"].startswith("spec.scheduling.priorityClassName 'system-node-critical'")
    stalled = next(c for c in kube.status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True"
    kube, ready = await _reconcile({"scheduling": {"tolerations": [{"operator": "Exists"}]}})
    assert kube.writes == [] and ready["reason"] == "SchedulingNotAllowed"


async def test_the_administrators_allow_list_admits_a_router_the_default_refuses() -> None:
    spec = {"scheduling": {"priorityClassName": "system-cluster-critical"}}
    settings = OperatorSettings(allowed_priority_classes=("system-cluster-critical",))
    kube, ready = await _reconcile(spec, settings=settings)
    assert "Deployment" in _deployed(kube) and ready["reason"] != "SchedulingNotAllowed"
