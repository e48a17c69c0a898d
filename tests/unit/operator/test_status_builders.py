"""Node and policy status builders, and the skip-if-unchanged status patch."""

from __future__ import annotations

from datetime import UTC, datetime

from fdp_operator.apply import status_patch
from fdp_operator.models import HospitalNodeSpec
from fdp_operator.probe import ProbeResult
from fdp_operator.reconcile.node import next_status, transition_event
from fdp_operator.reconcile.policy import policy_status
from fdp_operator.reconcile.router import node_is_healthy

NOW = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = HospitalNodeSpec.model_validate(
    {
        "endpoint": "https://a:1",
        "hospital": "h",
        "healthCheck": {"failureThreshold": 2},
        "privacy": {"dataClass": "PHI", "mechanism": "PureDP"},
    }
)
OK = ProbeResult(True, 12.5)
FAIL = ProbeResult(False, None, "connection refused")


def _ready(status):
    return next(c for c in status["conditions"] if c["type"] == "Ready")["status"]


def test_a_node_flips_only_at_the_failure_threshold_and_back_on_success() -> None:
    s1 = next_status({}, SPEC, OK, NOW, 1, ["fr"])
    assert _ready(s1) == "True" and s1["latencyMs"] == 12.5 and s1["usedBy"] == ["fr"]
    s2 = next_status(s1, SPEC, FAIL, NOW, 1, ["fr"])
    assert _ready(s2) == "True" and s2["consecutiveFailures"] == 1
    assert transition_event(s1, s2) is None
    s3 = next_status(s2, SPEC, FAIL, NOW, 1, ["fr"])
    assert _ready(s3) == "False" and s3["consecutiveFailures"] == 2
    assert "connection refused" in s3["lastError"]
    event = transition_event(s2, s3)
    assert event is not None and event.type == "Warning" and event.reason == "NodeUnreachable"
    s4 = next_status(s3, SPEC, OK, NOW, 1, ["fr"])
    assert _ready(s4) == "True" and s4["consecutiveFailures"] == 0
    assert transition_event(s3, s4).reason == "NodeRecovered"


def test_router_side_health_uses_the_same_threshold() -> None:
    body = {"spec": {"healthCheck": {"failureThreshold": 2}}, "status": {"consecutiveFailures": 1}}
    assert node_is_healthy(body)
    body["status"]["consecutiveFailures"] = 2
    assert not node_is_healthy(body)
    assert node_is_healthy({"spec": {}})  # never probed: in, until it fails


def test_policy_status_states_the_guarantee_and_its_users() -> None:
    body = {
        "metadata": {"name": "p", "namespace": "ns", "generation": 3},
        "spec": {"delta": 1e-5, "budgets": {"perUser": 10}, "window": {"kind": "period", "period": "24h"}},
    }
    st = policy_status(body, ["b", "a"], NOW)
    assert st["observedGeneration"] == 3 and st["usedBy"] == ["a", "b"]
    assert "(10, 1e-05)-DP per user" in st["guarantee"] and "24" in st["guarantee"]
    assert st["epsilonPerUser"] == 10 and _ready(st) == "True"


def test_an_invalid_policy_is_not_ready_and_says_why() -> None:
    body = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"delta": 0.5}}
    st = policy_status(body, [], NOW)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and "spec.delta" in ready["message"]


def test_status_patch_is_none_when_equal_and_nulls_removed_keys() -> None:
    old = {"a": 1, "rollout": {"x": 1, "pauseReason": "p"}, "gone": True}
    assert status_patch(old, dict(old)) is None
    new = {"a": 1, "rollout": {"x": 2}}
    assert status_patch(old, new) == {"rollout": {"x": 2, "pauseReason": None}, "gone": None}


def test_a_policy_the_router_refuses_is_not_ready_and_names_the_budget() -> None:
    """perUser = max = 1 passes the CRD and the config model, but the router's own check
    (a budget that cannot admit one query at maxEpsilonPerQuery) refuses it: every router
    pod would stop. It showed Ready=True (issue 13)."""
    body = {
        "metadata": {"name": "p", "namespace": "ns", "generation": 2},
        "spec": {"defaultEpsilonPerQuery": 1, "maxEpsilonPerQuery": 1, "budgets": {"perUser": 1}},
    }
    st = policy_status(body, [], NOW)
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PolicyInvalid"
    assert "budgets.perUser" in ready["message"] and "maxEpsilonPerQuery" in ready["message"]
    assert "guarantee" not in st
