"""examples/hospital-network/: applied as written (endpoints pointed at local demo nodes), it
delivers what its comments promise: three probed PHI hospitals and a Public guidelines
model, a stated guarantee, and a Ready, autoscaled, owned router deployment in front of them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .conftest import eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hospital-network"


def _docs() -> list[dict]:
    docs = []
    for path in sorted(EXAMPLE.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_the_example_files_parse_with_the_operator_models() -> None:
    from fdp_operator.models import parse_node, parse_policy, parse_router

    kinds = {}
    for d in _docs():
        kinds.setdefault(d["kind"], []).append(d["metadata"]["name"])
        parse = {"HospitalNode": parse_node, "PrivacyPolicy": parse_policy, "FederatedRouter": parse_router}
        if d["kind"] in parse:
            parse[d["kind"]]({**d, "metadata": {**d["metadata"], "namespace": "x"}})
    assert sorted(kinds["HospitalNode"]) == ["cardiology", "emergency", "guidelines", "neurology"]
    assert kinds["PrivacyPolicy"] == ["regional-dp"] and kinds["FederatedRouter"] == ["regional-router"]


def test_the_example_nodes_declare_what_they_are() -> None:
    nodes = {d["metadata"]["name"]: d["spec"] for d in _docs() if d["kind"] == "HospitalNode"}
    for name in ("cardiology", "neurology", "emergency"):
        assert nodes[name]["privacy"] == {"dataClass": "PHI", "mechanism": "PureDP"}
        assert nodes[name]["model"] == "patient-stats"
    assert nodes["guidelines"]["privacy"] == {"dataClass": "Public"}
    assert nodes["guidelines"]["model"] == "medical-guidelines"
    policy = next(d["spec"] for d in _docs() if d["kind"] == "PrivacyPolicy")
    assert policy["consensus"]["candidateSets"]["triage"] == [
        "Admit to ICU",
        "Admit to ward",
        "Discharge with follow-up",
    ]


def test_the_hospital_network_example_becomes_ready(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    tls_spec = demo_nodes.tls_secrets(namespace)
    docs = _docs()
    for d in docs:
        if d["kind"] == "HospitalNode":
            node = demo_nodes.start(d["metadata"]["name"])
            d["spec"]["endpoint"] = node.endpoint  # the example's hostnames do not resolve here
            d["spec"]["tls"] = {"caSecretRef": tls_spec["caSecretRef"]}
            d["spec"]["healthCheck"].update(intervalSeconds=1, timeoutSeconds=1)
    kube.apply(namespace, docs)

    for name in ("cardiology", "neurology", "emergency", "guidelines"):
        kube.wait_condition(namespace, "hn", name)
    kube.wait_condition(namespace, "pp", "regional-dp")
    guarantee = kube.get(namespace, "pp", "regional-dp")["status"]["guarantee"]
    assert "(10, 1e-05)-DP per user" in guarantee and "24" in guarantee
    cluster.kubectl(
        "wait", "-n", namespace, "fr/regional-router", "--for=condition=Ready", "--timeout=90s", timeout=120
    )

    fr = kube.get(namespace, "fr", "regional-router")
    st = fr["status"]
    assert st["nodes"]["names"] == ["cardiology", "emergency", "guidelines", "neurology"]
    assert st["nodesSummary"] == "4/4"
    cfg = json.loads(kube.get(namespace, "configmap", st["configMapName"])["data"]["router-config.json"])
    assert cfg["privacy"]["window"] == {"kind": "period", "period_seconds": 86400}
    assert cfg["privacy"]["min_epsilon_per_query"] == 0.05
    assert list(cfg["privacy"]["consensus"]["candidate_sets"]) == ["triage"]
    assert {n["id"]: n["privacy"] for n in cfg["nodes"]} == {
        **{
            name: {"data_class": "phi", "mechanism": "pure_dp"}
            for name in ("cardiology", "emergency", "neurology")
        },
        "guidelines": {"data_class": "public", "mechanism": "none"},
    }
    assert cfg["ledger"]["backend"] == "postgres" and cfg["routing"]["strategy"] == "latency_aware"
    assert {n["hospital"] for n in cfg["nodes"]} == {
        "st-mary-heart-center",
        "university-neuro-institute",
        "county-general",
        "regional-health-network",
    }
    deployments = kube.items(namespace, "deployment", "fdp.io/router=regional-router")
    assert deployments and all(
        d["metadata"]["ownerReferences"][0]["uid"] == fr["metadata"]["uid"] for d in deployments
    )
    hpa = kube.get(namespace, "hpa", "regional-router")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    [cpu] = [m for m in hpa["spec"]["metrics"] if m["resource"]["name"] == "cpu"]
    assert cpu["resource"]["target"]["averageUtilization"] == 60  # the example's, not the default
    assert hpa["spec"]["scaleTargetRef"]["name"] in {d["metadata"]["name"] for d in deployments}
    # the HPA (not the operator) brings the serving Deployment to minReplicas
    eventually(
        lambda: (
            kube.get(namespace, "deployment", hpa["spec"]["scaleTargetRef"]["name"])["spec"]["replicas"] == 3
        ),
        timeout=60,
        what="HPA scales to minReplicas",
    )
    pod = deployments[0]["spec"]["template"]["spec"]
    secret_volumes = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert {"regional-jwt", "regional-ledger", "regional-router-tls", "hospital-ca"} <= secret_volumes
    row = cluster.kubectl("get", "fr", "regional-router", "-n", namespace, "--no-headers").stdout.split()
    assert row[1] == "True" and row[2] == "BlueGreen" and row[5] == "4/4"
