"""Conditions from a chain of pure checks; metav1.Condition shape; no churn."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fdp_operator import conditions as c

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HEALTHY = c.RouterObservation(
    policy_name="pol", nodes_selected=2, nodes_ready=2, rollout=c.RolloutFacts(available=True)
)


def _by_type(conds):
    return {t: (s, r, m) for t, s, r, m in conds}


def test_all_checks_passing_gives_ready_and_not_reconciling() -> None:
    got = _by_type(c.router_status(HEALTHY, "serving"))
    assert got["Ready"] == ("True", "Ready", "serving")
    assert got["Reconciling"][0] == "False" and got["Stalled"][0] == "False"
    assert got["NodesReady"][0] == "True"


@pytest.mark.parametrize(
    ("change", "reason", "stalled", "needle"),
    [
        ({"spec_error": "spec.x: bad"}, "InvalidSpec", True, "spec.x: bad"),
        ({"policy_found": False}, "PolicyNotFound", True, "PrivacyPolicy 'pol' not found"),
        ({"policy_error": "spec.delta: too big"}, "PolicyInvalid", True, "'pol' is invalid"),
        ({"tls_error": "TLS Secret 's' missing"}, "TLSSecretMissing", True, "'s'"),
        ({"image_error": "spec.image 'evil/x:1' is not"}, "ImageNotAllowed", True, "'evil/x:1'"),
        (
            {"scheduling_error": "spec.scheduling.priorityClassName 'system-node-critical' is not"},
            "SchedulingNotAllowed",
            True,
            "'system-node-critical'",
        ),
        (
            {"secret_refusals": (("SecretNotAllowed", "Secret 'jwt' (spec.auth.hs256SecretRef) does not"),)},
            "SecretNotAllowed",
            True,
            "Secret 'jwt' (spec.auth.hs256SecretRef)",
        ),
        (
            {"nodes_ready": 0, "nodes_selected": 0, "refused_nodes": ("a: Secret 'a-ca' not found",)},
            "NoReadyNodes",
            True,
            "a: Secret 'a-ca' not found",
        ),
        ({"nodes_ready": 0}, "NoReadyNodes", True, "none of the 2"),
        ({"nodes_selected": 0, "nodes_ready": 0}, "NoReadyNodes", True, "no HospitalNode matches"),
        ({"rollout": c.RolloutFacts(message="rolling")}, "Progressing", False, "rolling"),
    ],
)
def test_the_first_failing_check_decides(change, reason, stalled, needle) -> None:
    obs = c.RouterObservation(**{**HEALTHY.__dict__, **change})
    got = _by_type(c.router_status(obs, ""))
    assert got["Ready"][:2] == ("False", reason) and needle in got["Ready"][2]
    assert got["Stalled"][0] == ("True" if stalled else "False")
    assert got["Reconciling"][0] == ("False" if stalled else "True")


def test_an_image_that_is_not_allowed_wins_over_everything_but_an_invalid_spec() -> None:
    obs = c.RouterObservation(
        image_error="spec.image 'x'", secret_refusals=(("SecretMissing", "m"),), policy_found=False
    )
    assert _by_type(c.router_status(obs, ""))["Ready"][1] == "ImageNotAllowed"


def test_a_node_left_out_for_its_secret_is_named_in_nodes_ready() -> None:
    obs = c.RouterObservation(
        **{**HEALTHY.__dict__, "refused_nodes": ("b: Secret 'b-ca' (spec.tls.caSecretRef) does not",)}
    )
    got = _by_type(c.router_status(obs, ""))
    assert got["Ready"][0] == "True"  # a still serves
    assert got["NodesReady"][:2] == ("False", "SecretNotAllowed") and "b-ca" in got["NodesReady"][2]


def test_an_invalid_spec_wins_over_a_missing_policy() -> None:
    obs = c.RouterObservation(spec_error="spec.a: x", policy_found=False, policy_name="p")
    assert _by_type(c.router_status(obs, ""))["Ready"][1] == "InvalidSpec"


def test_initial_conditions_say_in_progress_at_once() -> None:
    got = _by_type(c.initial_conditions("starting"))
    assert got["Ready"][0] == "False" and got["Reconciling"][0] == "True" and got["Stalled"][0] == "False"


def test_merge_keeps_transition_time_unless_the_status_flips() -> None:
    first = c.merge([], [("Ready", "False", "Created", "")], NOW, 1)
    later = NOW + timedelta(minutes=5)
    same = c.merge(first, [("Ready", "False", "Progressing", "x")], later, 2)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["observedGeneration"] == 2 and same[0]["reason"] == "Progressing"
    flipped = c.merge(same, [("Ready", "True", "Ready", "")], later, 2)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    assert set(flipped[0]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }
