"""Parsing at the edge: defaults, and errors that name the field and the reason."""

from __future__ import annotations

import pytest
from fdp_operator.models import LabelSelector, SpecError, parse_duration, parse_policy, parse_router

from .conftest import router_body


def test_a_minimal_router_gets_safe_defaults() -> None:
    r = parse_router(router_body())
    assert r.spec.replicas == 1 and r.spec.ledger.backend == "sqlite"
    assert r.spec.rollout.strategy.value == "RollingUpdate"
    assert r.spec.tls.duration_seconds == 2160 * 3600


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"replicas": 3}, "ledger.backend 'sqlite' allows one router replica"),
        (
            {"autoscaling": {"enabled": False, "minReplicas": 5, "maxReplicas": 2}},
            "maxReplicas must be >= autoscaling.minReplicas",
        ),
        ({"tls": {"duration": "1h", "renewBefore": "2h"}}, "renewBefore must be shorter"),
        (
            {"rollout": {"strategy": "Canary", "steps": [{"setWeight": 50}, {"setWeight": 20}]}},
            "must not decrease",
        ),
        ({"rollout": {"steps": [{"setWeight": 10, "pause": {}}]}}, "exactly one of setWeight or pause"),
        ({"ledger": {"backend": "postgres"}}, "dsnSecretRef is required"),
    ],
)
def test_invalid_router_specs_are_rejected_with_the_field_named(spec, needle) -> None:
    with pytest.raises(SpecError, match="spec") as exc:
        parse_router(router_body(**spec))
    assert needle in str(exc.value)


def test_a_policy_names_the_broken_field() -> None:
    with pytest.raises(SpecError) as exc:
        parse_policy({"metadata": {"name": "p"}, "spec": {"delta": 0.5}})
    assert "spec.delta" in str(exc.value)


def test_period_window_needs_a_period() -> None:
    with pytest.raises(SpecError, match=r"window\.period is required"):
        parse_policy({"metadata": {"name": "p"}, "spec": {"window": {"kind": "period"}}})
    p = parse_policy({"metadata": {"name": "p"}, "spec": {"window": {"kind": "period", "period": "24h"}}})
    assert p.spec.window.period_seconds == 86400


@pytest.mark.parametrize(
    ("text", "secs"), [("2160h", 7776000.0), ("1h30m", 5400.0), ("90s", 90.0), ("1.5h", 5400.0)]
)
def test_go_durations_parse_like_cert_manager(text, secs) -> None:
    assert parse_duration(text) == secs


def test_bad_duration_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("3 days")


@pytest.mark.parametrize(
    ("selector", "labels", "match"),
    [
        ({}, {"a": "1"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "t", "operator": "In", "values": ["x", "y"]}]}, {"t": "y"}, True),
        ({"matchExpressions": [{"key": "t", "operator": "NotIn", "values": ["x"]}]}, {"t": "x"}, False),
        ({"matchExpressions": [{"key": "t", "operator": "Exists"}]}, {}, False),
        ({"matchExpressions": [{"key": "t", "operator": "DoesNotExist"}]}, {}, True),
    ],
)
def test_label_selectors_follow_kubernetes_semantics(selector, labels, match) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is match


def test_a_label_selector_becomes_the_api_servers_query_string() -> None:
    sel = LabelSelector.model_validate(
        {
            "matchLabels": {"net": "x", "a": "1"},
            "matchExpressions": [
                {"key": "t", "operator": "In", "values": ["p", "q"]},
                {"key": "u", "operator": "NotIn", "values": ["r"]},
                {"key": "v", "operator": "Exists"},
                {"key": "w", "operator": "DoesNotExist"},
            ],
        }
    )
    assert sel.to_query() == "a=1,net=x,t in (p,q),u notin (r),v,!w"
    assert LabelSelector().to_query() == ""
