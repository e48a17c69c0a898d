"""Parsing at the edge: defaults, and errors that name the field and the reason."""

from __future__ import annotations

import pytest
from fdp_operator.models import (
    DataClassName,
    LabelSelector,
    MechanismName,
    SpecError,
    in_crd_words,
    parse_duration,
    parse_node,
    parse_policy,
    parse_router,
)
from fdp_router.config import DataClass, NodeMechanism

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
        ({"autoscaling": {"enabled": True}}, "ledger.backend 'sqlite' cannot autoscale"),
        (
            {"rollout": {"strategy": "BlueGreen"}},
            "ledger.backend 'sqlite' needs rollout.strategy RollingUpdate",
        ),
        (
            {"rollout": {"strategy": "Canary", "steps": [{"setWeight": 50}]}},
            "BlueGreen and Canary run two versions side by side",
        ),
        (
            {"ledger": {"timeouts": {"lockSeconds": 4, "statementSeconds": 3}}},
            "need lockSeconds <= statementSeconds <= operationSeconds",
        ),
        ({"ledger": {"timeouts": {"connectSeconds": 1}}}, "spec.ledger.timeouts.connectSeconds"),
        (
            {"routing": {"streamTimeoutSeconds": 0}},
            "spec.routing.streamTimeoutSeconds: Input should be greater than 0",
        ),
        ({"ledger": {"sqlite": {"size": "lots"}}}, "spec.ledger.sqlite.size"),
        ({"ledger": {"sqlite": {"whenDeleted": "Orphan"}}}, "spec.ledger.sqlite.whenDeleted"),
        ({"auth": {"maxTokenAgeSeconds": 30}}, "auth.maxTokenAgeSeconds must be 0 (no limit) or at least 60"),
        (
            {"rateLimits": {"perUser": {"ratePerSecond": 1, "burst": 0}}},
            "spec.rateLimits.perUser: ratePerSecond and burst are both 0 (no limit) or both > 0",
        ),
        ({"rateLimits": {"clientAddressHeader": "X Forwarded"}}, "spec.rateLimits.clientAddressHeader"),
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


# ---------------------------------------------------------------- the router's rules, at the edge


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ({"consensus": {"nodes": 2, "minAnswers": 3}}, "consensus.minAnswers must be <= consensus.nodes"),
        (
            {"defaultEpsilonPerQuery": 2, "maxEpsilonPerQuery": 1},
            "defaultEpsilonPerQuery must be <= maxEpsilonPerQuery",
        ),
        (
            {"defaultEpsilonPerQuery": 0.5, "maxEpsilonPerQuery": 3, "budgets": {"perUser": 2}},
            "maxEpsilonPerQuery must be <= budgets.perUser",
        ),
    ],
)
def test_a_policy_the_router_config_refuses_is_refused_when_parsed(spec, needle) -> None:
    """These parsed before, and render then raised inside reconcile (issue 13)."""
    with pytest.raises(SpecError) as exc:
        parse_policy({"metadata": {"name": "p"}, "spec": spec})
    assert needle in str(exc.value)


def test_a_policy_with_a_minimum_above_its_default_is_refused() -> None:
    with pytest.raises(SpecError, match="minEpsilonPerQuery must be <= defaultEpsilonPerQuery"):
        parse_policy({"metadata": {"name": "p"}, "spec": {"minEpsilonPerQuery": 0.5}})
    p = parse_policy({"metadata": {"name": "p"}, "spec": {"minEpsilonPerQuery": 0.05}})
    assert p.spec.config().min_epsilon == 0.05
    assert parse_policy({"metadata": {"name": "p"}, "spec": {}}).spec.config().min_epsilon == 0.1


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["Admit to ICU"], "consensus.candidateSets.triage: needs 2 to 32 options, got 1"),
        (["Admit to ICU", "admit to  ICU."], "consensus.candidateSets.triage[1]: duplicates option 0"),
        (["Admit", "   "], "consensus.candidateSets.triage[1]: must not be empty"),
        (["Admit", "x" * 501], "consensus.candidateSets.triage[1]: longer than 500 characters"),
        ([f"option {i}" for i in range(33)], "needs 2 to 32 options, got 33"),
    ],
)
def test_candidate_sets_follow_the_routers_option_rules(options, needle) -> None:
    with pytest.raises(SpecError) as exc:
        parse_policy(
            {"metadata": {"name": "p"}, "spec": {"consensus": {"candidateSets": {"triage": options}}}}
        )
    assert needle in str(exc.value)


def test_a_field_the_model_does_not_know_is_an_error_not_silently_dropped() -> None:
    with pytest.raises(SpecError, match=r"spec\.autoscaling\.targetCpuUtilizationPercentage"):
        parse_router(router_body(autoscaling={"targetCpuUtilizationPercentage": 50}))


# ---------------------------------------------------------------- HospitalNode privacy


def _node(**spec):
    return parse_node(
        {"metadata": {"name": "n"}, "spec": {"endpoint": "https://n.example", "hospital": "h", **spec}}
    )


def test_a_phi_node_without_a_mechanism_is_refused_in_words_a_person_understands() -> None:
    with pytest.raises(SpecError) as exc:
        _node(privacy={"dataClass": "PHI"})
    assert str(exc.value) == (
        "spec.privacy: a PHI node must declare the DP mechanism its endpoint runs (PureDP or Gaussian); "
        "None is only for dataClass Public"
    )
    with pytest.raises(SpecError, match=r"spec\.privacy: Field required"):
        _node()
    with pytest.raises(SpecError, match=r"spec\.privacy\.dataClass"):
        _node(privacy={"dataClass": "phi", "mechanism": "PureDP"})


@pytest.mark.parametrize(
    ("privacy", "data_class", "mechanism"),
    [
        ({"dataClass": "PHI", "mechanism": "PureDP"}, DataClass.PHI, NodeMechanism.PURE_DP),
        ({"dataClass": "PHI", "mechanism": "Gaussian"}, DataClass.PHI, NodeMechanism.GAUSSIAN),
        ({"dataClass": "Public"}, DataClass.PUBLIC, NodeMechanism.NONE),
    ],
)
def test_a_nodes_privacy_becomes_the_routers(privacy, data_class, mechanism) -> None:
    config = _node(privacy=privacy).spec.privacy.config
    assert (config.data_class, config.mechanism) == (data_class, mechanism)
    assert config.releasable


def test_the_crd_spellings_cover_every_router_data_class_and_mechanism() -> None:
    assert {m.name for m in DataClassName} == {m.name for m in DataClass}
    assert {m.name for m in MechanismName} == {m.name for m in NodeMechanism}


def test_router_messages_are_translated_into_the_crds_field_names() -> None:
    assert in_crd_words("budgets.per_user: max_epsilon_per_query=1 from a pure_dp node") == (
        "budgets.perUser: maxEpsilonPerQuery=1 from a pure_dp node"
    )
    assert in_crd_words("window.period_seconds is required") == "window.period is required"


def test_a_postgres_ledger_may_run_every_rollout_strategy_and_autoscale() -> None:
    pg = {"backend": "postgres", "dsnSecretRef": {"name": "dsn"}}
    for rollout in ({"strategy": "BlueGreen"}, {"strategy": "Canary", "steps": [{"setWeight": 50}]}):
        parse_router(router_body(ledger=pg, replicas=4, rollout=rollout, autoscaling={"enabled": True}))


def test_the_sqlite_ledger_claim_is_retained_by_default() -> None:
    vol = parse_router(router_body()).spec.ledger.sqlite
    assert (vol.size, vol.storage_class_name, vol.when_deleted) == ("1Gi", None, "Retain")


def test_ledger_timeouts_default_to_the_routers_own() -> None:
    from fdp_router.config import LedgerTimeouts

    assert parse_router(router_body()).spec.ledger.timeouts.config() == LedgerTimeouts()


def test_a_node_reads_its_credentials_base_path_timeouts_and_probe_method() -> None:
    from .conftest import node_body

    n = parse_node(node_body("gw"))
    assert n.spec.api_base_path == "/v1" and n.spec.health_check.method == "GET"
    assert n.spec.auth.api_key_secret_ref is None and n.spec.timeouts.read_seconds is None
    n = parse_node(
        node_body("gw", auth={"apiKeySecretRef": {"name": "k"}, "headersSecretRef": {"name": "h"}})
    )
    assert (n.spec.auth.api_key_secret_ref.key, n.spec.auth.headers_secret_ref.key) == (
        "api-key",
        "headers.json",
    )
    for bad, field in (
        ({"apiBasePath": "v1"}, "spec.apiBasePath"),
        ({"apiBasePath": "/v1/"}, "spec.apiBasePath"),
        ({"timeouts": {"readSeconds": 0}}, "spec.timeouts.readSeconds"),
        ({"timeouts": {"streamSeconds": 0}}, "spec.timeouts.streamSeconds: Input should be greater than 0"),
        ({"timeouts": {"streamSeconds": -1}}, "spec.timeouts.streamSeconds: Input should be greater than 0"),
        ({"healthCheck": {"method": "POST"}}, "spec.healthCheck.method"),
    ):
        with pytest.raises(SpecError, match=field.replace(".", r"\.")):
            parse_node(node_body("gw", **bad))


def _scheduling(**fields):
    return router_body(scheduling=fields)


@pytest.mark.parametrize(
    ("scheduling", "needle"),
    [
        (
            {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
            "spec.scheduling.tolerations.0.value: must be empty when operator is Exists",
        ),
        (
            {"tolerations": [{"key": "k", "operator": "In"}]},
            "spec.scheduling.tolerations.0.operator: Input should be 'Exists' or 'Equal'",
        ),
        (
            {"tolerations": [{"key": "k"}, {"key": "k", "effect": "NoEvict"}]},
            "spec.scheduling.tolerations.1.effect: Input should be 'NoSchedule', 'PreferNoSchedule', "
            "'NoExecute' or ''",
        ),
        (
            {"tolerations": [{"value": "v"}]},
            "spec.scheduling.tolerations.0: a toleration without a key must have operator Exists",
        ),
        (
            {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 30}]},
            "spec.scheduling.tolerations.0.tolerationSeconds: is only allowed with effect NoExecute",
        ),
        (
            {"tolerations": [{"key": "k", "value": "not a label value"}]},
            "spec.scheduling.tolerations.0.value",
        ),
        ({"priorityClassName": "High_Priority"}, "spec.scheduling.priorityClassName: 'High_Priority' is not"),
        ({"priorityClassName": "x" * 254}, "spec.scheduling.priorityClassName"),
        ({"nodeSelector": {"pool": "not valid!"}}, "spec.scheduling.nodeSelector.pool"),
        ({"nodeSelector": {"no spaces/in keys": "x"}}, "spec.scheduling.nodeSelector.no spaces/in keys"),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 0, "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule"}
                ]
            },
            "spec.scheduling.topologySpreadConstraints.0.maxSkew: Input should be greater than or equal to 1",
        ),
        (
            {"topologySpreadConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]},
            "spec.scheduling.topologySpreadConstraints.0.topologyKey: Field required",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "Sometimes"}
                ]
            },
            "spec.scheduling.topologySpreadConstraints.0.whenUnsatisfiable: Input should be 'DoNotSchedule' "
            "or 'ScheduleAnyway'",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2}
                ]
            },
            "spec.scheduling.topologySpreadConstraints.0: minDomains is only allowed with whenUnsatisfiable "
            "DoNotSchedule",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule"},
                    {"maxSkew": 2, "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule"},
                ]
            },
            "spec.scheduling.topologySpreadConstraints: [1] repeats topologyKey 'z'",
        ),
        (
            {
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "z",
                        "whenUnsatisfiable": "DoNotSchedule",
                        "labelSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
                    }
                ]
            },
            "spec.scheduling.topologySpreadConstraints.0.labelSelector: matchExpressions.0.values must be "
            "non-empty with operator In",
        ),
        (
            {"affinity": {"nodeAfinity": {}}},
            "spec.scheduling.affinity.nodeAfinity: Extra inputs are not permitted",
        ),
        ({"affinity": []}, "spec.scheduling.affinity"),
        ({"tolerations": [{"key": "k"}], "nodeSelecter": {"a": "b"}}, "spec.scheduling.nodeSelecter"),
    ],
)
def test_invalid_scheduling_is_rejected_with_the_field_named(scheduling, needle) -> None:
    with pytest.raises(SpecError) as exc:
        parse_router(_scheduling(**scheduling))
    assert needle in str(exc.value)


def test_valid_scheduling_parses_and_leaves_the_hospital_node_selector_alone() -> None:
    r = parse_router(
        router_body(
            nodeSelector={"matchLabels": {"fdp.io/network": "x"}},
            scheduling={
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "tolerations": [
                    {"operator": "Exists"},  # every taint
                    {"key": "k", "operator": "Exists", "value": ""},
                    {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute", "tolerationSeconds": 60},
                    {"key": "k", "value": "v", "effect": ""},
                ],
                "affinity": {"podAntiAffinity": {"anything": ["the API server checks it"]}},
                "priorityClassName": "system-cluster-critical",
                "topologySpreadConstraints": [
                    {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule", "minDomains": 3},
                    {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "ScheduleAnyway"},
                ],
            },
        )
    )
    assert r.spec.node_selector.match_labels == {"fdp.io/network": "x"}  # HospitalNodes, as before
    assert r.spec.scheduling.node_selector == {"kubernetes.io/os": "linux"}
    assert len(r.spec.scheduling.tolerations) == 4
    assert r.spec.scheduling.affinity is not None and r.spec.scheduling.affinity.pod_anti_affinity


def test_a_spread_selector_label_value_is_checked_like_the_crd_checks_it() -> None:
    tsc = {"maxSkew": 1, "topologyKey": "z", "whenUnsatisfiable": "DoNotSchedule"}
    bad = {**tsc, "labelSelector": {"matchLabels": {"team": "not a label value"}}}
    with pytest.raises(SpecError) as exc:
        parse_router(_scheduling(topologySpreadConstraints=[bad]))
    assert "spec.scheduling.topologySpreadConstraints.0.labelSelector.matchLabels.team" in str(exc.value)
