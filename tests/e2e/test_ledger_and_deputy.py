"""Issue 11 items 2 and 5 against a real API server: ledgers that outlive pods, no confused deputy.

Item 2: a SQLite ledger sits on a PersistentVolumeClaim the router does not own, its audit key
in a Secret the router does not own; both survive the router and are reused; a node's health
changes the config in place and never the pod template (no restart, no new pod). Item 5: the
operator deploys only allowed images and mounts only Secrets their owner opted in; each rule
with the attempt that tries to get around it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from typing import Any

from fdp_router.privacy.audit import parse_keyring

from .conftest import OPT_IN, eventually, federated_router, free_port, hospital_node, privacy_policy

LABEL = "fdp.io/allow-router-mount"


def _nodes(kube, namespace, demo_nodes, n: int = 2) -> list[Any]:
    demo_nodes.tls_secrets(namespace)
    nodes = [demo_nodes.start(f"hosp-{i}") for i in range(n)]
    kube.apply(
        namespace,
        [
            hospital_node(node.name, node.endpoint, tls={"caSecretRef": {"name": "hospital-ca"}})
            for node in nodes
        ]
        + [privacy_policy()],
    )
    return nodes


def _config(kube, namespace, cm: str) -> dict[str, Any]:
    return json.loads(kube.get(namespace, "configmap", cm)["data"]["router-config.json"])


def _secret(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": labels or {}},
        "stringData": data,
    }


# ---------------------------------------------------------------- item 2: ledgers outlive pods


def test_a_node_going_down_changes_nothing_and_a_new_node_joins_the_config_map_in_place(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    nodes = _nodes(kube, namespace, demo_nodes)
    kube.apply(namespace, federated_router())
    kube.wait_condition(namespace, "fr", "fr")
    status = kube.get(namespace, "fr", "fr")["status"]
    cm = status["configMapName"]
    dep = kube.get(namespace, "deployment", "fr")
    template, generation = dep["spec"]["template"], dep["metadata"]["generation"]
    text = kube.get(namespace, "configmap", cm)["data"]["router-config.json"]
    assert [n["id"] for n in json.loads(text)["nodes"]] == ["hosp-0", "hosp-1"]

    # Down and back: the routers' own probes act on it; the config and the pods stay.
    nodes[1].stop()
    kube.wait_condition(namespace, "hn", "hosp-1", status="False", timeout=30)
    eventually(
        lambda: kube.get(namespace, "fr", "fr")["status"]["nodes"]["names"] == ["hosp-0"],
        what="the router's status sees hosp-1 down",
    )
    assert kube.get(namespace, "configmap", cm)["data"]["router-config.json"] == text
    demo_nodes.start("hosp-1", port=nodes[1].port)
    kube.wait_condition(namespace, "hn", "hosp-1", timeout=30)
    assert kube.get(namespace, "configmap", cm)["data"]["router-config.json"] == text
    dep = kube.get(namespace, "deployment", "fr")
    assert dep["spec"]["template"] == template and dep["metadata"]["generation"] == generation
    assert kube.get(namespace, "fr", "fr")["status"]["configHash"] == status["configHash"]

    # A new node (its CA Secret already mounted) joins the same ConfigMap, in place.
    third = demo_nodes.start("hosp-2")
    kube.apply(
        namespace, [hospital_node("hosp-2", third.endpoint, tls={"caSecretRef": {"name": "hospital-ca"}})]
    )
    eventually(
        lambda: [n["id"] for n in _config(kube, namespace, cm)["nodes"]] == ["hosp-0", "hosp-1", "hosp-2"],
        what="hosp-2 in the same ConfigMap",
    )
    dep = kube.get(namespace, "deployment", "fr")
    assert dep["spec"]["template"] == template and dep["metadata"]["generation"] == generation
    mount = next(m for m in template["spec"]["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount  # the kubelet updates a directory mount in place
    # a spec change (the policy) still rolls the pods: a new ConfigMap and template
    kube.apply(namespace, privacy_policy(budgets={"perUser": 4}))
    eventually(
        lambda: kube.get(namespace, "deployment", "fr")["spec"]["template"] != template, what="policy rolls"
    )
    assert kube.get(namespace, "fr", "fr")["status"]["configMapName"] != cm


def test_the_sqlite_ledger_claim_and_audit_key_outlive_the_router_and_are_reused(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    _nodes(kube, namespace, demo_nodes, n=1)
    kube.apply(namespace, federated_router(ledger={"sqlite": {"size": "2Gi"}}))
    kube.wait_condition(namespace, "fr", "fr", timeout=90)
    fr = kube.get(namespace, "fr", "fr")
    pvc = kube.get(namespace, "pvc", "fr-ledger")
    assert pvc is not None and not pvc["metadata"].get("ownerReferences")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
    key = kube.get(namespace, "secret", "fr-audit-key")
    assert key is not None and not key["metadata"].get("ownerReferences")
    assert key["metadata"]["labels"][LABEL] == "true"
    ring = parse_keyring(base64.b64decode(key["data"]["key"]).decode(), "fr-audit-key")
    assert len(ring.active_key) == 32
    ledger = eventually(
        lambda: (
            (st := kube.get(namespace, "fr", "fr")["status"]["ledger"]).get("claimPhase") == "Bound" and st
        ),
        what="status.ledger shows the bound claim",
    )
    assert ledger == {
        "backend": "sqlite",
        "claimName": "fr-ledger",
        "claimPhase": "Bound",
        "auditKeySecret": "fr-audit-key",
    }
    dep = kube.get(namespace, "deployment", "fr")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}  # never two pods on the one ledger file
    pod = dep["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "fr-ledger"}} in pod["volumes"]
    assert not [v for v in pod["volumes"] if v["name"] == "data" and "emptyDir" in v]
    cfg = _config(kube, namespace, fr["status"]["configMapName"])
    assert cfg["ledger"]["sqlite_path"] == "/var/lib/fdp/ledger.sqlite"
    assert cfg["ledger"]["audit_key_file"] == "/etc/fdp/ledger/audit/key"

    cluster.kubectl("delete", "fr", "fr", "-n", namespace, "--wait=true", timeout=60)
    eventually(lambda: not kube.items(namespace, "deployment", "fdp.io/router=fr"), what="children collected")
    time.sleep(3)  # garbage collection had its chance
    kept = kube.get(namespace, "pvc", "fr-ledger")
    assert kept is not None and kept["metadata"]["uid"] == pvc["metadata"]["uid"]
    assert kept["metadata"].get("deletionTimestamp") is None
    assert kube.get(namespace, "secret", "fr-audit-key")["data"] == key["data"]

    kube.apply(namespace, federated_router(ledger={"sqlite": {"size": "2Gi"}}))
    kube.wait_condition(namespace, "fr", "fr", timeout=90)
    assert kube.get(namespace, "pvc", "fr-ledger")["metadata"]["uid"] == pvc["metadata"]["uid"]
    again = kube.get(namespace, "secret", "fr-audit-key")
    assert again["data"] == key["data"] and again["metadata"]["uid"] == key["metadata"]["uid"]


def test_when_deleted_delete_gives_the_claim_to_the_router(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    _nodes(kube, namespace, demo_nodes, n=1)
    kube.apply(namespace, federated_router(ledger={"sqlite": {"whenDeleted": "Delete"}}))
    kube.wait_condition(namespace, "fr", "fr", timeout=90)
    uid = kube.get(namespace, "fr", "fr")["metadata"]["uid"]
    refs = kube.get(namespace, "pvc", "fr-ledger")["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == [uid]
    # back to Retain: the operator takes its owner reference away again
    kube.apply(namespace, federated_router(ledger={"sqlite": {"whenDeleted": "Retain"}}))
    eventually(
        lambda: not kube.get(namespace, "pvc", "fr-ledger")["metadata"].get("ownerReferences"),
        what="released",
    )
    kube.apply(namespace, federated_router(ledger={"sqlite": {"whenDeleted": "Delete"}}))
    eventually(
        lambda: kube.get(namespace, "pvc", "fr-ledger")["metadata"].get("ownerReferences"), what="owned again"
    )
    cluster.kubectl("delete", "fr", "fr", "-n", namespace, "--wait=true", timeout=60)
    eventually(
        lambda: (
            (p := kube.get(namespace, "pvc", "fr-ledger")) is None or p["metadata"].get("deletionTimestamp")
        ),
        timeout=60,
        what="claim deleted with its router",
    )
    assert kube.get(namespace, "secret", "fr-audit-key") is not None  # the key is always kept


# ---------------------------------------------------------------- item 5: no confused deputy


def test_an_image_from_another_repository_deploys_nothing(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    _nodes(kube, namespace, demo_nodes, n=1)
    for image in (
        "ghcr.io/federated-dp-llm/router-evil:0.1.0",
        "evil.example/ghcr.io/federated-dp-llm/router:0.1.0",
    ):
        kube.apply(namespace, federated_router(image=image))
        ready = eventually(
            lambda i=image: (c := kube.condition(namespace, "fr", "fr", "Ready")) and i in c["message"] and c,
            what=f"{image} refused",
        )
        assert ready["status"] == "False" and ready["reason"] == "ImageNotAllowed"
        assert kube.condition(namespace, "fr", "fr", "Stalled")["status"] == "True"
        for kind, name in (
            ("deployment", "fr"),
            ("configmap", None),
            ("pvc", "fr-ledger"),
            ("secret", "fr-audit-key"),
            ("networkpolicy", "fr"),
        ):
            if name is None:
                assert not kube.items(namespace, kind, "fdp.io/router=fr")
            else:
                assert kube.get(namespace, kind, name) is None, f"{kind}/{name} was created"
    kube.apply(namespace, federated_router(image="ghcr.io/federated-dp-llm/router:0.1.0"))
    kube.wait_condition(namespace, "fr", "fr", timeout=90)


def test_a_placement_outside_the_allow_lists_deploys_nothing(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    """A FederatedRouter author asks for Kubernetes' own critical PriorityClass (to preempt the
    cluster's system pods) or a key-less toleration (every taint): refused by the operator's
    default placement rule, through the real API server, with nothing created."""
    _nodes(kube, namespace, demo_nodes, n=1)
    for scheduling, needle in (
        ({"priorityClassName": "system-node-critical"}, "'system-node-critical'"),
        ({"tolerations": [{"operator": "Exists"}]}, "tolerations[0]: a toleration without a key"),
    ):
        kube.apply(namespace, federated_router(scheduling=scheduling))
        ready = eventually(
            lambda n=needle: (
                (c := kube.condition(namespace, "fr", "fr", "Ready")) and n in c["message"] and c
            ),
            what=f"{scheduling} refused",
        )
        assert ready["status"] == "False" and ready["reason"] == "SchedulingNotAllowed"
        assert kube.condition(namespace, "fr", "fr", "Stalled")["status"] == "True"
        assert kube.get(namespace, "deployment", "fr") is None
        assert kube.get(namespace, "secret", "fr-audit-key") is None
    kube.apply(
        namespace, federated_router(scheduling={"tolerations": [{"key": "dedicated", "operator": "Exists"}]})
    )
    kube.wait_condition(namespace, "fr", "fr", timeout=90)


def test_the_allow_list_is_the_operator_administrators_setting(
    kube, namespace, make_operator, demo_nodes
) -> None:
    make_operator(namespace, extra_args=("--allowed-image-repository", "registry.hospital.example/fdp/*"))
    _nodes(kube, namespace, demo_nodes, n=1)
    kube.apply(namespace, federated_router())  # the default image is not on this list
    ready = kube.wait_condition(namespace, "fr", "fr", status="False")
    assert ready["reason"] == "ImageNotAllowed" and "registry.hospital.example/fdp/*" in ready["message"]
    kube.apply(namespace, federated_router(image="registry.hospital.example/fdp-evil/router:1"))
    eventually(
        lambda: "fdp-evil" in kube.condition(namespace, "fr", "fr", "Ready")["message"], what="refused"
    )
    kube.apply(namespace, federated_router(image="registry.hospital.example/fdp/router:1"))
    kube.wait_condition(namespace, "fr", "fr", timeout=90)
    assert kube.get(namespace, "deployment", "fr")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "registry.hospital.example/fdp/router:1"
    )


def test_a_secret_without_the_opt_in_label_is_refused_by_name_until_its_owner_opts_in(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    _nodes(kube, namespace, demo_nodes, n=1)
    # the name only looks like the label; an annotation is not a label
    lookalike = _secret(
        "payroll-jwt", {f"{LABEL}-please": "true", "allow-router-mount": "true"}, secret="s" * 64
    )
    lookalike["metadata"]["annotations"] = {LABEL: "true"}
    kube.apply(namespace, [lookalike])
    kube.apply(namespace, federated_router(auth={"hs256SecretRef": {"name": "payroll-jwt", "key": "secret"}}))
    ready = kube.wait_condition(namespace, "fr", "fr", status="False")
    assert ready["reason"] == "SecretNotAllowed"
    assert "Secret 'payroll-jwt' (spec.auth.hs256SecretRef)" in ready["message"] and LABEL in ready["message"]
    assert kube.get(namespace, "deployment", "fr") is None
    cluster.kubectl("label", "secret", "payroll-jwt", "-n", namespace, f"{LABEL}=yes")  # not "true"
    time.sleep(3)
    assert kube.condition(namespace, "fr", "fr", "Ready")["reason"] == "SecretNotAllowed"
    cluster.kubectl("label", "secret", "payroll-jwt", "-n", namespace, f"{LABEL}=true", "--overwrite")
    kube.wait_condition(namespace, "fr", "fr", timeout=90)
    pod = kube.get(namespace, "deployment", "fr")["spec"]["template"]["spec"]
    assert "payroll-jwt" in {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


def test_a_node_naming_an_unlabelled_secret_is_neither_probed_nor_mounted(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    nodes = _nodes(kube, namespace, demo_nodes, n=1)
    # a perfectly good CA, but its owner never said the router may have it
    kube.apply(namespace, [_secret("other-teams-ca", **{"ca.crt": demo_nodes.ca.cert_pem})])
    kube.apply(
        namespace,
        [hospital_node("sneaky", nodes[0].endpoint, tls={"caSecretRef": {"name": "other-teams-ca"}})],
    )
    kube.apply(namespace, federated_router())
    ready = eventually(
        lambda: (
            (c := kube.condition(namespace, "hn", "sneaky", "Ready"))
            and c["reason"] == "SecretNotAllowed"
            and c
        ),
        what="the node refused",
    )
    assert ready["status"] == "False" and "other-teams-ca" in ready["message"]
    assert kube.get(namespace, "hn", "sneaky")["status"].get("latencyMs") is None  # never probed
    kube.wait_condition(namespace, "fr", "fr", timeout=90)  # hosp-0 serves
    nodes_ready = eventually(
        lambda: (
            (c := kube.condition(namespace, "fr", "fr", "NodesReady"))
            and c["reason"] == "SecretNotAllowed"
            and c
        ),
        what="NodesReady names the refused node",
    )
    assert "sneaky: Secret 'other-teams-ca' (spec.tls.caSecretRef)" in nodes_ready["message"]
    status = kube.get(namespace, "fr", "fr")["status"]
    assert "sneaky" not in status["nodes"]["names"] and status["nodesSummary"] == "1/2"
    pod = kube.get(namespace, "deployment", "fr")["spec"]["template"]["spec"]
    assert "other-teams-ca" not in {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert "sneaky" not in {n["id"] for n in _config(kube, namespace, status["configMapName"])["nodes"]}


GATEWAY = """
import ssl, sys
from aiohttp import web
key, tenant, port, cert, tls_key = sys.argv[1:]

async def models(request):
    ok = request.headers.get("Authorization") == f"Bearer {key}" and request.headers.get("X-Tenant") == tenant
    return web.Response(status=200 if ok else 401)

app = web.Application()
app.router.add_route("HEAD", "/v1/models", models)  # GET answers 405: proves the probe's method
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, tls_key)
web.run_app(app, host="127.0.0.1", port=int(port), ssl_context=ctx, print=None)
"""


def test_the_operator_probes_a_gateway_with_the_nodes_api_key_headers_and_method(
    kube, namespace, operator_runner, demo_nodes, tmp_path
) -> None:
    demo_nodes.tls_secrets(namespace)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            GATEWAY,
            "sk-e2e",
            "cardiology",
            str(port),
            str(demo_nodes.workdir / "tls.crt"),
            str(demo_nodes.workdir / "tls.key"),
        ]
    )
    try:
        kube.apply(
            namespace,
            [
                _secret("gw-key", OPT_IN, **{"api-key": "sk-e2e"}),
                _secret("gw-wrong-key", OPT_IN, **{"api-key": "sk-guess"}),
                _secret("gw-headers", OPT_IN, **{"headers.json": json.dumps({"X-Tenant": "cardiology"})}),
            ],
        )
        common = {
            "tls": {"caSecretRef": {"name": "hospital-ca"}},
            "healthCheck": {
                "path": "/v1/models",
                "method": "HEAD",
                "intervalSeconds": 1,
                "timeoutSeconds": 1,
                "failureThreshold": 2,
            },
            "apiBasePath": "/v1",
            "timeouts": {"readSeconds": 90},
        }
        endpoint = f"https://localhost:{port}"
        kube.apply(
            namespace,
            [
                hospital_node(
                    "gw",
                    endpoint,
                    auth={"apiKeySecretRef": {"name": "gw-key"}, "headersSecretRef": {"name": "gw-headers"}},
                    **common,
                ),
                hospital_node(
                    "gw-wrong",
                    endpoint,
                    auth={
                        "apiKeySecretRef": {"name": "gw-wrong-key"},
                        "headersSecretRef": {"name": "gw-headers"},
                    },
                    **common,
                ),
                privacy_policy(),
                federated_router(),
            ],
        )
        kube.wait_condition(namespace, "hn", "gw", timeout=30)
        wrong = kube.wait_condition(namespace, "hn", "gw-wrong", status="False", timeout=30)
        assert "HTTP 401" in kube.get(namespace, "hn", "gw-wrong")["status"]["lastError"], wrong
        kube.wait_condition(namespace, "fr", "fr", timeout=90)
        status = kube.get(namespace, "fr", "fr")["status"]
        # gw-wrong fails its probes but stays in the config (the router probes it itself,
        # with its own key: refused as well)
        nodes = {n["id"]: n for n in _config(kube, namespace, status["configMapName"])["nodes"]}
        assert sorted(nodes) == ["gw", "gw-wrong"]
        gw = nodes["gw"]
        assert nodes["gw-wrong"]["auth"]["api_key_file"] == "/etc/fdp/nodes/gw-wrong-key/api-key"
        assert gw["auth"] == {
            "api_key_file": "/etc/fdp/nodes/gw-key/api-key",
            "headers_file": "/etc/fdp/nodes/gw-headers/headers.json",
        }
        assert gw["health_check"]["method"] == "HEAD" and gw["read_timeout_seconds"] == 90
        pod = kube.get(namespace, "deployment", "fr")["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/etc/fdp/nodes/gw-key"]["readOnly"] is True
        assert mounts["/etc/fdp/nodes/gw-headers"]["readOnly"] is True
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_network_policy_admits_the_namespace_and_reaches_only_dns_and_the_nodes(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    nodes = _nodes(kube, namespace, demo_nodes, n=2)
    kube.apply(namespace, federated_router())
    kube.wait_condition(namespace, "fr", "fr", timeout=90)
    spec = kube.get(namespace, "networkpolicy", "fr")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8443}], "from": [{"podSelector": {}}]}]
    ports = sorted(p["port"] for rule in spec["egress"] for p in rule["ports"] if p["protocol"] == "TCP")
    assert ports == sorted({53, *(n.port for n in nodes)})
