"""render(): every child of a FederatedRouter, checked as plain dicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from fdp_operator.render import names
from fdp_operator.render.router import render, stale_config_maps
from fdp_operator.render.workloads import ObservedState
from fdp_router.config import RouterConfig

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PG = {"backend": "postgres", "dsnSecretRef": {"name": "ledger", "key": "dsn"}}


def _render(router, policy, nodes, **kw):
    kw.setdefault("observed", ObservedState(now=NOW))
    return render(router, policy, nodes, tls_secret="fr1-tls", tls_serial="abc", **kw)


def _kinds(r):
    return {(o["kind"], o["metadata"]["name"]): o for o in r.objects}


def _config(r) -> RouterConfig:
    cm = _kinds(r)[("ConfigMap", r.config_map_name)]
    return RouterConfig.model_validate_json(cm["data"][names.CONFIG_FILE])


def test_a_router_renders_all_its_children(make_router, make_policy, make_node) -> None:
    r = _render(make_router(), make_policy(), [make_node("a")])
    assert set(_kinds(r)) == {
        ("ConfigMap", r.config_map_name),
        ("ServiceAccount", "fr1-router"),
        ("Deployment", "fr1"),
        ("Service", "fr1"),
        ("PodDisruptionBudget", "fr1"),
        ("NetworkPolicy", "fr1"),
    }
    assert r.config_map_name == f"fr1-config-{r.config_hash[:10]}"


def test_the_config_is_the_router_model_with_managed_by_and_only_healthy_selected_nodes(
    make_router, make_policy, make_node
) -> None:
    router = make_router(nodeSelector={"matchLabels": {"net": "x"}})
    nodes = [
        make_node("in-ok", labels={"net": "x"}),
        make_node("in-down", labels={"net": "x"}, healthy=False),
        make_node("other", labels={"net": "y"}),
    ]
    r = _render(router, make_policy(), nodes)
    cfg = _config(r)
    assert [n.id for n in cfg.nodes] == ["in-ok"]
    assert cfg.managed_by is not None and (cfg.managed_by.namespace, cfg.managed_by.name) == ("ns", "fr1")
    assert cfg.server.tls_cert_file == "/etc/fdp/tls/tls.crt" and cfg.server.host == "0.0.0.0"
    assert r.selected_count == 2 and r.node_names == ["in-ok"]


def test_the_config_hash_is_stable_and_moves_with_the_policy(make_router, make_policy, make_node) -> None:
    nodes = [make_node("a")]
    a = _render(make_router(), make_policy(), nodes)
    b = _render(make_router(), make_policy(), nodes)
    c = _render(make_router(), make_policy(budgets={"perUser": 5}), nodes)
    assert a.config_hash == b.config_hash
    assert c.config_hash != a.config_hash and c.config_map_name != a.config_map_name
    assert _config(c).privacy.budgets.per_user == 5
    dep = _kinds(c)[("Deployment", "fr1")]
    assert dep["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION] == c.config_hash


def test_a_node_leaving_changes_the_config(make_router, make_policy, make_node) -> None:
    up = _render(make_router(), make_policy(), [make_node("a"), make_node("b")])
    down = _render(make_router(), make_policy(), [make_node("a"), make_node("b", healthy=False)])
    assert up.config_hash != down.config_hash
    assert [n.id for n in _config(down).nodes] == ["a"]


def test_pods_run_under_the_restricted_profile_with_probes_and_scrape_annotations(
    make_router, make_policy, make_node
) -> None:
    r = _render(make_router(), make_policy(), [make_node("a")])
    tpl = _kinds(r)[("Deployment", "fr1")]["spec"]["template"]
    pod, (ctr,) = tpl["spec"], tpl["spec"]["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = ctr["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ann = tpl["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert ann[names.TLS_SERIAL_ANNOTATION] == "abc"
    assert ctr["args"] == ["serve", "--config", "/etc/fdp/config/router-config.json"]


def test_secrets_the_config_names_are_mounted_where_the_config_points(
    make_router, make_policy, make_node
) -> None:
    router = make_router(auth={"hs256SecretRef": {"name": "jwt", "key": "secret"}})
    node = make_node("a", tls={"caSecretRef": {"name": "a-ca"}, "clientCertSecretRef": {"name": "a-client"}})
    r = _render(router, make_policy(), [node])
    cfg = _config(r)
    tpl = _kinds(r)[("Deployment", "fr1")]["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in tpl["containers"][0]["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in tpl["volumes"] if "secret" in v}
    for path, secret in (
        (cfg.auth.hs256_secret_file, "jwt"),
        (cfg.nodes[0].tls.ca_file, "a-ca"),
        (cfg.nodes[0].tls.client_cert_file, "a-client"),
    ):
        directory = path.rsplit("/", 1)[0]
        assert secrets[mounts[directory]] == secret


def test_autoscaling_renders_an_hpa_on_the_serving_deployment_and_leaves_replicas_alone(
    make_router, make_policy, make_node
) -> None:
    router = make_router(ledger=PG, autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 4})
    r = _render(router, make_policy(), [make_node("a")])
    hpa = _kinds(r)[("HorizontalPodAutoscaler", "fr1")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fr1"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert "replicas" not in _kinds(r)[("Deployment", "fr1")]["spec"]


def test_turning_autoscaling_off_prunes_the_hpa(make_router, make_policy, make_node) -> None:
    r = _render(make_router(), make_policy(), [make_node("a")], hpa_exists=True)
    assert ("HorizontalPodAutoscaler", "fr1") in r.prune
    assert ("HorizontalPodAutoscaler", "fr1") not in _kinds(r)


def test_old_config_maps_are_pruned_unless_a_deployment_still_mounts_them() -> None:
    dep = {
        "spec": {
            "template": {"spec": {"volumes": [{"name": "config", "configMap": {"name": "fr-config-old"}}]}}
        }
    }
    stale = stale_config_maps(
        "fr-config-new", ["fr-config-new", "fr-config-old", "fr-config-older"], {"blue": dep}
    )
    assert stale == ["fr-config-older"]


def test_network_policy_admits_only_the_listed_peers_on_the_https_port(
    make_router, make_policy, make_node
) -> None:
    peer = {"namespaceSelector": {"matchLabels": {"team": "clinical-apps"}}}
    r = _render(make_router(networkPolicy={"ingressFrom": [peer]}), make_policy(), [make_node("a")])
    np = _kinds(r)[("NetworkPolicy", "fr1")]
    assert np["spec"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8443}], "from": [peer]}]


def test_render_is_deterministic(make_router, make_policy, make_node) -> None:
    args = (make_router(), make_policy(), [make_node("b"), make_node("a")])
    assert json.dumps(_render(*args).objects, sort_keys=True) == json.dumps(
        _render(*args).objects, sort_keys=True
    )


def test_the_ledger_commit_mode_reaches_the_router_config(make_router, make_policy, make_node) -> None:
    default = _config(_render(make_router(), make_policy(), [make_node("a")]))
    deferred = _config(
        _render(make_router(ledger={"commitMode": "Deferred"}), make_policy(), [make_node("a")])
    )
    assert (default.ledger.commit_mode, deferred.ledger.commit_mode) == ("durable", "deferred")


def test_the_hpa_cpu_target_is_the_one_the_crd_spells(make_router, make_policy, make_node) -> None:
    """`targetCPUUtilizationPercentage` (CRD, docs, example) was dropped: the HPA always got 70."""
    router = make_router(
        ledger=PG,
        autoscaling={"enabled": True, "maxReplicas": 4, "targetCPUUtilizationPercentage": 50},
    )
    hpa = _kinds(_render(router, make_policy(), [make_node("a")]))[("HorizontalPodAutoscaler", "fr1")]
    cpu = next(m for m in hpa["spec"]["metrics"] if m["resource"]["name"] == "cpu")
    assert cpu["resource"]["target"]["averageUtilization"] == 50


def test_each_node_declares_its_data_class_and_mechanism_in_the_config(
    make_router, make_policy, make_node
) -> None:
    nodes = [
        make_node("phi-gauss", privacy={"dataClass": "PHI", "mechanism": "Gaussian"}),
        make_node("phi-pure", privacy={"dataClass": "PHI", "mechanism": "PureDP"}),
        make_node("public", privacy={"dataClass": "Public"}),
    ]
    r = _render(make_router(), make_policy(), nodes)
    raw = json.loads(_kinds(r)[("ConfigMap", r.config_map_name)]["data"][names.CONFIG_FILE])
    assert {n["id"]: n["privacy"] for n in raw["nodes"]} == {
        "phi-gauss": {"data_class": "phi", "mechanism": "gaussian"},
        "phi-pure": {"data_class": "phi", "mechanism": "pure_dp"},
        "public": {"data_class": "public", "mechanism": "none"},
    }


def test_the_policy_minimum_and_candidate_sets_reach_the_config(make_router, make_policy, make_node) -> None:
    triage = ["Admit to ICU", "Admit to ward", "Discharge with follow-up"]
    policy = make_policy(minEpsilonPerQuery=0.05, consensus={"candidateSets": {"triage": triage}})
    r = _render(make_router(), policy, [make_node("a")])
    raw = json.loads(_kinds(r)[("ConfigMap", r.config_map_name)]["data"][names.CONFIG_FILE])
    assert raw["privacy"]["min_epsilon_per_query"] == 0.05
    assert raw["privacy"]["consensus"]["candidate_sets"] == {"triage": triage}
    unset = _config(_render(make_router(), make_policy(), [make_node("a")])).privacy
    assert unset.min_epsilon_per_query is None and unset.min_epsilon == unset.default_epsilon_per_query
