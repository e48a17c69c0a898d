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
    assert r.config_map_name == f"fr1-config-{r.spec_hash[:10]}"


def test_the_config_is_the_router_model_with_managed_by_and_every_selected_node(
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
    # a down node stays: the router probes it itself and takes it back seconds after it recovers
    assert [n.id for n in cfg.nodes] == ["in-down", "in-ok"]
    assert cfg.managed_by is not None and (cfg.managed_by.namespace, cfg.managed_by.name) == ("ns", "fr1")
    assert cfg.server.tls_cert_file == "/etc/fdp/tls/tls.crt" and cfg.server.host == "0.0.0.0"
    assert r.selected_count == 2 and r.node_names == ["in-ok"]


def test_the_config_hash_is_stable_and_a_policy_change_rolls_the_pods(
    make_router, make_policy, make_node
) -> None:
    nodes = [make_node("a")]
    a = _render(make_router(), make_policy(), nodes)
    b = _render(make_router(), make_policy(), nodes)
    c = _render(make_router(), make_policy(budgets={"perUser": 5}), nodes)
    assert (a.config_hash, a.spec_hash) == (b.config_hash, b.spec_hash)
    assert c.config_hash != a.config_hash and c.config_map_name != a.config_map_name
    assert _config(c).privacy.budgets.per_user == 5
    dep = _kinds(c)[("Deployment", "fr1")]
    assert dep["spec"]["template"]["metadata"]["annotations"][names.CONFIG_HASH_ANNOTATION] == c.spec_hash
    assert _template(c) != _template(a)


def _template(r):
    return _kinds(r)[("Deployment", "fr1")]["spec"]["template"]


def test_a_node_going_down_changes_nothing_the_operator_renders(make_router, make_policy, make_node) -> None:
    """Health used to be in the config: a flap rewrote the ConfigMap, and a node that came
    back stayed unused until the kubelet swapped the mounted file (about a minute; a model
    served only by it answered 404 meanwhile). Now the routers' own probes decide."""
    ca = {"caSecretRef": {"name": "b-ca"}}
    up = _render(make_router(), make_policy(), [make_node("a"), make_node("b", tls=ca)])
    down = _render(make_router(), make_policy(), [make_node("a"), make_node("b", tls=ca, healthy=False)])
    assert _kinds(up) == _kinds(down) and up.config_hash == down.config_hash
    assert [n.id for n in _config(down).nodes] == ["a", "b"]
    assert (up.node_names, down.node_names) == (["a", "b"], ["a"])  # status: what the operator sees Ready


def test_a_node_leaving_the_selection_changes_the_config_in_place_and_never_the_pod_template(
    make_router, make_policy, make_node
) -> None:
    """A change of the node list used to rename the ConfigMap and roll the pods (and a SQLite
    ledger on an emptyDir with them): now the same ConfigMap gets the new node list, the pods
    reload it. (A node whose Secrets are mounted takes them along: that does roll the pods.)"""
    up = _render(make_router(), make_policy(), [make_node("a"), make_node("b")])
    gone = _render(make_router(), make_policy(), [make_node("a")])
    assert up.config_hash != gone.config_hash
    assert [n.id for n in _config(gone).nodes] == ["a"]
    assert up.config_map_name == gone.config_map_name and up.spec_hash == gone.spec_hash
    assert _template(up) == _template(gone)
    cm = _kinds(up)[("ConfigMap", up.config_map_name)]
    assert "immutable" not in cm
    assert cm["metadata"]["annotations"][names.SELECTED_NODES_ANNOTATION] == "a,b"
    config_volume = next(v for v in _template(up)["spec"]["volumes"] if v["name"] == "config")
    assert config_volume == {"name": "config", "configMap": {"name": up.config_map_name}}
    mount = next(m for m in _template(up)["spec"]["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount  # a subPath mount is never updated by the kubelet


def test_an_older_revision_still_mounted_gets_the_node_change_too(
    make_router, make_policy, make_node
) -> None:
    """During a blue/green or canary rollout the stable pods mount the previous revision's
    ConfigMap: a node deleted leaves that config as well, nothing else in it changes; a node
    going down changes neither."""
    router = make_router(ledger=PG)
    old = _render(router, make_policy(), [make_node("a"), make_node("b")])
    old_cm = _kinds(old)[("ConfigMap", old.config_map_name)]
    dep = {"spec": {"template": _template(old)}}
    new = _render(
        router,
        make_policy(budgets={"perUser": 5}),
        [make_node("a")],
        observed=ObservedState(now=NOW, deployments={"fr1-blue": dep}),
        owned_config_maps={old.config_map_name: old_cm},
    )
    refreshed = _kinds(new)[("ConfigMap", old.config_map_name)]
    cfg = RouterConfig.model_validate_json(refreshed["data"][names.CONFIG_FILE])
    assert [n.id for n in cfg.nodes] == ["a"] and cfg.privacy.budgets.per_user == 10
    assert ("ConfigMap", old.config_map_name) not in new.prune
    unchanged = _render(
        router,
        make_policy(budgets={"perUser": 5}),
        [make_node("a"), make_node("b", healthy=False)],
        observed=ObservedState(now=NOW, deployments={"fr1-blue": dep}),
        owned_config_maps={old.config_map_name: old_cm},
    )
    assert [o for o in unchanged.objects if o["metadata"]["name"] == old.config_map_name] == []


def test_the_sqlite_ledger_lives_on_its_claim_and_the_pods_are_recreated_not_surged(
    make_router, make_policy, make_node
) -> None:
    r = _render(make_router(), make_policy(), [make_node("a")])
    dep = _kinds(r)[("Deployment", "fr1")]
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert not any("emptyDir" in v for v in pod["volumes"] if v["name"] == "data")
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "fr1-ledger"}}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    cfg = _config(r)
    assert cfg.ledger.sqlite_path.startswith(mounts["data"] + "/")
    pg = _kinds(_render(make_router(ledger=PG), make_policy(), [make_node("a")]))[("Deployment", "fr1")]
    assert pg["spec"]["strategy"]["type"] == "RollingUpdate"


def test_the_ledger_claim_keeps_its_size_and_class_and_has_no_owner_to_outlive_the_router(
    make_router,
) -> None:
    from fdp_operator.render.router import render_ledger_claim

    claim = render_ledger_claim(make_router(ledger={"sqlite": {"size": "5Gi", "storageClassName": "ssd"}}))
    assert claim["metadata"]["name"] == "fr1-ledger" and "ownerReferences" not in claim["metadata"]
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "5Gi"}},
        "storageClassName": "ssd",
    }
    assert names.ROUTER_LABEL not in claim["metadata"]["labels"]  # that label means "deleted with it"


def test_without_an_audit_key_ref_the_router_reads_the_operators_keyring(
    make_router, make_policy, make_node
) -> None:
    from fdp_operator.render.router import render_audit_key_secret
    from fdp_router.privacy.audit import parse_keyring

    r = _render(make_router(), make_policy(), [make_node("a")])
    pod = _template(r)["spec"]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert secrets["audit-key"] == "fr1-audit-key"
    assert _config(r).ledger.audit_key_file == f"{mounts['audit-key']}/key"
    secret = render_audit_key_secret(make_router(), "k1", "ab" * 32)
    ring = parse_keyring(secret["stringData"]["key"], "test")
    assert ring.active_id == "k1" and ring.active_key == bytes.fromhex("ab" * 32)
    assert secret["metadata"]["labels"]["fdp.io/allow-router-mount"] == "true"
    assert "ownerReferences" not in secret["metadata"]


def test_node_credentials_base_path_and_timeouts_reach_the_node_config(
    make_router, make_policy, make_node
) -> None:
    node = make_node(
        "gw",
        auth={"apiKeySecretRef": {"name": "gw-key"}, "headersSecretRef": {"name": "gw-hdr", "key": "h.json"}},
        apiBasePath="/openai/v1",
        timeouts={"connectSeconds": 1.5, "readSeconds": 120},
        healthCheck={"path": "/v1/models", "method": "HEAD"},
    )
    r = _render(make_router(), make_policy(), [node])
    (cfg,) = _config(r).nodes
    assert cfg.auth.api_key_file == "/etc/fdp/nodes/gw-key/api-key"
    assert cfg.auth.headers_file == "/etc/fdp/nodes/gw-hdr/h.json"
    assert (cfg.api_base_path, cfg.connect_timeout_seconds, cfg.read_timeout_seconds) == (
        "/openai/v1",
        1.5,
        120,
    )
    assert (cfg.health_check.path, cfg.health_check.method) == ("/v1/models", "HEAD")
    pod = _template(r)["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    for path, secret in ((cfg.auth.api_key_file, "gw-key"), (cfg.auth.headers_file, "gw-hdr")):
        mount = mounts[path.rsplit("/", 1)[0]]
        assert secrets[mount["name"]] == secret and mount["readOnly"] is True


def test_the_stream_limits_reach_the_router_config_and_a_node_overrides_the_routers(
    make_router, make_policy, make_node
) -> None:
    """FederatedRouter routing.streamTimeoutSeconds is every node's limit; a HospitalNode's
    timeouts.streamSeconds is its own (the router takes a node's value over routing's)."""
    router = make_router(routing={"streamTimeoutSeconds": 900})
    own, inherits = make_node("a", timeouts={"streamSeconds": 45}), make_node("b")
    cfg = _config(_render(router, make_policy(), [own, inherits]))
    assert cfg.routing.stream_timeout_seconds == 900
    assert {n.id: n.stream_timeout_seconds for n in cfg.nodes} == {"a": 45, "b": None}
    assert _config(_render(make_router(), make_policy(), [inherits])).routing.stream_timeout_seconds == 600


def test_the_ledger_timeouts_reach_the_router_config(make_router, make_policy, make_node) -> None:
    router = make_router(
        ledger={"timeouts": {"lockSeconds": 1, "statementSeconds": 2, "operationSeconds": 4}}
    )
    t = _config(_render(router, make_policy(), [make_node("a")])).ledger.timeouts
    assert (t.connect_seconds, t.lock_seconds, t.statement_seconds, t.operation_seconds) == (2, 1, 2, 4)


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
    assert ctr["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}  # leave the endpoints first
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


def test_without_named_peers_ingress_comes_from_the_operators_default_never_from_anywhere(
    make_router, make_policy, make_node
) -> None:
    """An empty ingressFrom used to admit any source; now the operator's setting decides."""
    r = _render(make_router(), make_policy(), [make_node("a")])
    (rule,) = _kinds(r)[("NetworkPolicy", "fr1")]["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {}}]  # the router's own namespace
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    r = _render(make_router(), make_policy(), [make_node("a")], default_ingress_from=[monitoring])
    (rule,) = _kinds(r)[("NetworkPolicy", "fr1")]["spec"]["ingress"]
    assert rule["from"] == [monitoring]


def test_egress_goes_only_to_dns_the_nodes_the_jwks_url_and_the_ledger(
    make_router, make_policy, make_node
) -> None:
    router = make_router(
        ledger={"backend": "postgres", "dsnSecretRef": {"name": "dsn"}},
        auth={"algorithms": ["RS256"], "jwksUrl": "https://sso.example:8444/jwks"},
        networkPolicy={"extraEgress": [{"ports": [{"protocol": "TCP", "port": 4317}]}]},
    )
    nodes = [
        make_node("a", endpoint="https://a.example:8443"),
        make_node("b", endpoint="https://10.1.2.3:9443", healthy=False),  # down: still allowed
    ]
    r = _render(router, make_policy(), nodes, ledger_targets=[("10.9.9.9", 5433)])
    np = _kinds(r)[("NetworkPolicy", "fr1")]["spec"]
    assert np["policyTypes"] == ["Ingress", "Egress"]
    assert np["egress"] == [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
        {"ports": [{"protocol": "TCP", "port": 5433}], "to": [{"ipBlock": {"cidr": "10.9.9.9/32"}}]},
        {"ports": [{"protocol": "TCP", "port": 8443}]},  # a host name: the port, to any address
        {"ports": [{"protocol": "TCP", "port": 8444}]},
        {"ports": [{"protocol": "TCP", "port": 9443}], "to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}]},
        {"ports": [{"protocol": "TCP", "port": 4317}]},
    ]


def test_the_postgres_dsn_names_the_ledger_hosts_and_ports() -> None:
    from fdp_operator.render.router import dsn_targets

    assert dsn_targets("postgresql://fdp:pw@ledger-postgres:5432/fdp") == [("ledger-postgres", 5432)]
    assert dsn_targets("postgresql://u@10.0.0.5,10.0.0.6:5433/db") == [("10.0.0.5", 5432), ("10.0.0.6", 5433)]
    assert dsn_targets("host=db1,db2 port=6432 dbname=x") == [("db1", 6432), ("db2", 6432)]
    assert dsn_targets("postgresql://db/x?port=7777") == [("db", 7777)]
    assert dsn_targets("host=/var/run/postgresql dbname=x") == []  # a Unix socket
    assert dsn_targets("postgresql://h:notaport/x") == [("", 5432)]  # unparsable: the port to anywhere


def test_render_is_deterministic(make_router, make_policy, make_node) -> None:
    args = (make_router(), make_policy(), [make_node("b"), make_node("a")])
    assert json.dumps(_render(*args).objects, sort_keys=True) == json.dumps(
        _render(*args).objects, sort_keys=True
    )


def test_the_ledger_commit_mode_reaches_the_router_config(make_router, make_policy, make_node) -> None:
    default = _config(_render(make_router(), make_policy(), [make_node("a")]))
    durable = _config(_render(make_router(ledger={"commitMode": "Durable"}), make_policy(), [make_node("a")]))
    assert (default.ledger.commit_mode, durable.ledger.commit_mode) == ("deferred", "durable")


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


def test_mfa_token_age_and_rate_limits_reach_the_router_config(make_router, make_policy, make_node) -> None:
    from fdp_router.config import AuthConfig, RateLimitConfig

    default = _config(_render(make_router(), make_policy(), [make_node("a")]))
    assert default.rate_limits == RateLimitConfig()  # the router's own defaults, spelled once
    assert (default.auth.require_mfa, default.auth.max_token_age_seconds) == (
        AuthConfig().require_mfa,
        AuthConfig().max_token_age_seconds,
    )
    router = make_router(
        auth={"requireMfa": True, "maxTokenAgeSeconds": 0},
        rateLimits={
            "perUser": {"ratePerSecond": 1, "burst": 5},
            "perDepartment": {"ratePerSecond": 0, "burst": 0},
            "clientAddressHeader": "X-Forwarded-For",
        },
    )
    cfg = _config(_render(router, make_policy(), [make_node("a")]))
    assert cfg.auth.require_mfa is True and cfg.auth.max_token_age_seconds is None  # 0: no limit
    assert (cfg.rate_limits.per_user.rate_per_second, cfg.rate_limits.per_user.burst) == (1, 5)
    assert not cfg.rate_limits.per_department.enabled
    assert cfg.rate_limits.client_address_header == "X-Forwarded-For"


# ---------------------------------------------------------------- spec.scheduling

SCHEDULING = {
    "nodeSelector": {"node.kubernetes.io/pool": "fdp", "kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "fdp-router", "effect": "NoSchedule"},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    ],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "gpu", "operator": "DoesNotExist"}]},
                ]
            }
        },
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "fr1"}},
                    },
                }
            ]
        },
    },
    "priorityClassName": "fdp-critical",
    "topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"},
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["edge"]}]},
            "matchLabelKeys": ["pod-template-hash"],
            "nodeTaintsPolicy": "Honor",
        },
    ],
}
#: the selector of the router's own pods, every color and track (names.selector_labels)
OWN_PODS = {"matchLabels": {"app.kubernetes.io/name": "fdp-router", "app.kubernetes.io/instance": "fr1"}}


def _assert_scheduled(pod: dict, name: str) -> None:
    """Every spec.scheduling field of SCHEDULING, as the pod spec of Deployment `name` carries it."""
    assert pod["nodeSelector"] == SCHEDULING["nodeSelector"], name
    assert pod["tolerations"] == SCHEDULING["tolerations"], name
    assert pod["affinity"] == SCHEDULING["affinity"], name
    assert pod["priorityClassName"] == "fdp-critical", name
    zone, host = pod["topologySpreadConstraints"]
    assert zone == {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
        "labelSelector": OWN_PODS,  # no labelSelector given: this router's own pods
    }, name
    assert host == SCHEDULING["topologySpreadConstraints"][1], name  # given: kept as written


def _deployments(r) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in r.objects if o["kind"] == "Deployment"}


def _settled(r) -> ObservedState:
    """What the next reconcile observes once every Deployment of `r` is fully available."""
    counts = {o["metadata"]["name"]: o["spec"]["replicas"] for o in r.plan.scale}
    cluster = {}
    for name, dep in _deployments(r).items():
        d = json.loads(json.dumps(dep))
        n = counts.get(name, d["spec"].get("replicas", 1))
        d["spec"]["replicas"] = n
        d["metadata"]["generation"] = 1
        d["status"] = {
            "observedGeneration": 1,
            **dict.fromkeys(("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"), n),
        }
        cluster[name] = d
    services = {o["metadata"]["name"]: o for o in r.objects if o["kind"] == "Service"}
    return ObservedState(
        now=NOW, deployments=cluster, services=services, previous_rollout_status=r.plan.rollout_status
    )


def test_scheduling_reaches_the_pod_spec_of_the_plain_deployment(make_router, make_policy, make_node) -> None:
    r = _render(make_router(scheduling=SCHEDULING), make_policy(), [make_node("a")])
    pod = _template(r)["spec"]
    _assert_scheduled(pod, "fr1")
    # the operator's own pod settings stay as they were
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False


def test_without_scheduling_the_pod_template_and_its_revision_do_not_change(
    make_router, make_policy, make_node
) -> None:
    """An operator upgrade must not roll every router: no scheduling, no new keys."""
    plain = _render(make_router(), make_policy(), [make_node("a")])
    empty = _render(make_router(scheduling={}), make_policy(), [make_node("a")])
    pod = _template(plain)["spec"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "topologySpreadConstraints"):
        assert key not in pod
    assert _template(empty) == _template(plain)
    scheduled = _render(make_router(scheduling={"priorityClassName": "p"}), make_policy(), [make_node("a")])
    assert scheduled.plan.rollout_status["currentRevision"] != plain.plan.rollout_status["currentRevision"]


def test_scheduling_reaches_both_colors_of_a_blue_green_rollout(make_router, make_policy, make_node) -> None:
    nodes, policy = [make_node("a")], make_policy()
    router = make_router(replicas=2, ledger=PG, rollout={"strategy": "BlueGreen"}, scheduling=SCHEDULING)
    first = _render(router, policy, nodes)
    assert set(_deployments(first)) == {"fr1-blue"}
    update = make_router(
        image="router:2", replicas=2, ledger=PG, rollout={"strategy": "BlueGreen"}, scheduling=SCHEDULING
    )
    r = _render(update, policy, nodes, observed=_settled(first))
    deps = _deployments(r)
    assert set(deps) == {"fr1-blue", "fr1-green"}
    assert deps["fr1-green"]["spec"]["template"]["spec"]["containers"][0]["image"] == "router:2"
    for name, dep in deps.items():
        _assert_scheduled(dep["spec"]["template"]["spec"], name)
        # the default spread selector (no color in it) counts the pods of both colors
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert labels["fdp.io/color"] and OWN_PODS["matchLabels"].items() <= labels.items()


def test_adding_scheduling_rolls_out_through_the_preview_color(make_router, make_policy, make_node) -> None:
    """A scheduling change is a pod template change: green previews it, blue runs on untouched."""
    nodes, policy = [make_node("a")], make_policy()
    bg = {"replicas": 2, "ledger": PG, "rollout": {"strategy": "BlueGreen", "autoPromotionEnabled": False}}
    first = _render(make_router(**bg), policy, nodes)
    r = _render(make_router(scheduling=SCHEDULING, **bg), policy, nodes, observed=_settled(first))
    deps = _deployments(r)
    _assert_scheduled(deps["fr1-green"]["spec"]["template"]["spec"], "fr1-green")
    assert "tolerations" not in deps["fr1-blue"]["spec"]["template"]["spec"]
    assert r.plan.rollout_status["currentRevision"] != first.plan.rollout_status["currentRevision"]


def test_scheduling_reaches_the_stable_and_the_canary_track(make_router, make_policy, make_node) -> None:
    nodes, policy = [make_node("a")], make_policy()
    canary = {
        "replicas": 4,
        "ledger": PG,
        "rollout": {"strategy": "Canary", "steps": [{"setWeight": 25}, {"pause": {}}]},
        "scheduling": SCHEDULING,
    }
    first = _render(make_router(**canary), policy, nodes)
    r = _render(make_router(image="router:2", **canary), policy, nodes, observed=_settled(first))
    deps = _deployments(r)
    assert set(deps) == {"fr1-stable", "fr1-canary"}
    for name, dep in deps.items():
        _assert_scheduled(dep["spec"]["template"]["spec"], name)


def test_a_spread_constraint_without_a_selector_counts_this_routers_pods_only(
    make_router, make_policy, make_node
) -> None:
    tsc = {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule"}
    a = _render(make_router("fr1", scheduling={"topologySpreadConstraints": [tsc]}), make_policy(), [])
    b = _render(make_router("fr2", scheduling={"topologySpreadConstraints": [tsc]}), make_policy(), [])
    sel_a = _kinds(a)[("Deployment", "fr1")]["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    sel_b = _kinds(b)[("Deployment", "fr2")]["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert sel_a["labelSelector"] == {"matchLabels": names.selector_labels("fr1")}
    assert sel_b["labelSelector"] == {"matchLabels": names.selector_labels("fr2")}
    # the Deployment's own selector: the spread counts exactly the pods this router runs
    dep = _kinds(a)[("Deployment", "fr1")]
    assert (
        sel_a["labelSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    explicit = {**tsc, "labelSelector": {"matchLabels": {"team": "x"}}}
    c = _render(make_router(scheduling={"topologySpreadConstraints": [explicit]}), make_policy(), [])
    assert _template(c)["spec"]["topologySpreadConstraints"][0]["labelSelector"] == {
        "matchLabels": {"team": "x"}
    }
