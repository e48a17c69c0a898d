"""The operator against a real API server: Ready with owned children, health, TLS, policy, GC, restarts."""

from __future__ import annotations

import base64
import json
import subprocess
import time

import yaml

from .conftest import eventually, federated_router, hospital_node, privacy_policy

OWNED_KINDS = ("deployment", "service", "configmap", "secret", "serviceaccount", "pdb", "networkpolicy")


def _network(kube, namespace, demo_nodes, n=2, **router_spec):
    nodes = [demo_nodes.start(f"hosp-{i}") for i in range(n)]
    kube.apply(
        namespace,
        [
            hospital_node(
                node.name, node.endpoint, tls_spec=None, **{"tls": {"caSecretRef": {"name": "hospital-ca"}}}
            )
            for node in nodes
        ],
    )
    kube.apply(namespace, [privacy_policy(), federated_router(**router_spec)])
    return nodes


def _ca_secret(kube, namespace, demo_nodes):
    demo_nodes.tls_secrets(namespace)


def _config(kube, namespace, fr="fr"):
    status = kube.get(namespace, "fr", fr)["status"]
    cm = kube.get(namespace, "configmap", status["configMapName"])
    return json.loads(cm["data"]["router-config.json"])


def test_a_router_becomes_ready_with_every_child_owned(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes)
    cluster.kubectl("wait", "-n", namespace, "fr/fr", "--for=condition=Ready", "--timeout=60s", timeout=90)
    fr = kube.get(namespace, "fr", "fr")
    status = fr["status"]
    assert (
        isinstance(status["observedGeneration"], int)
        and status["observedGeneration"] == fr["metadata"]["generation"]
    )
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Ready"] == "True" and conds["Reconciling"] == "False" and conds["Stalled"] == "False"
    assert status["nodes"] == {"selected": 2, "ready": 2, "names": ["hosp-0", "hosp-1"]}
    assert status["endpoint"] == f"https://fr.{namespace}.svc:443"
    assert status["tls"]["notAfter"] and status["tls"]["renewalTime"]
    uid = fr["metadata"]["uid"]
    for kind in OWNED_KINDS:
        items = kube.items(namespace, kind, "fdp.io/router=fr")
        assert items, f"no {kind} owned by the router"
        for item in items:
            refs = item["metadata"].get("ownerReferences") or []
            assert [r["uid"] for r in refs] == [uid], f"{kind}/{item['metadata']['name']} not owned"
    cfg = _config(kube, namespace)
    assert [n["id"] for n in cfg["nodes"]] == ["hosp-0", "hosp-1"]
    assert cfg["managed_by"] == {"kind": "FederatedRouter", "namespace": namespace, "name": "fr"}
    assert cfg["nodes"][0]["tls"]["ca_file"] == "/etc/fdp/nodes/hospital-ca/ca.crt"
    # the policy knows who uses it, the nodes too
    kube.wait_condition(namespace, "pp", "pol")
    eventually(lambda: kube.get(namespace, "pp", "pol")["status"].get("usedBy") == ["fr"], what="pp usedBy")
    eventually(
        lambda: kube.get(namespace, "hn", "hosp-0")["status"].get("usedBy") == ["fr"], what="hn usedBy"
    )
    # the columns an SRE reads first
    table = cluster.kubectl("get", "fr", "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STRATEGY", "ACTIVE/WEIGHT", "REPLICAS", "NODES", "AGE"]
    row = table[1].split()
    assert row[:2] == ["fr", "True"] and row[2] == "RollingUpdate" and row[4] == "1" and row[5] == "2/2"


def test_the_first_status_written_says_in_progress_not_current(
    cluster, kube, namespace, make_operator, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    node = demo_nodes.start("only")
    kube.apply(
        namespace,
        [
            hospital_node("only", node.endpoint, tls={"caSecretRef": {"name": "hospital-ca"}}),
            privacy_policy(),
        ],
    )
    watch = subprocess.Popen(
        [str(cluster.bin_dir / "kubectl"), "get", "fr", "-n", namespace, "--watch", "-o", "json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=cluster.env,
    )
    try:
        make_operator(namespace)
        time.sleep(1)
        kube.apply(namespace, federated_router())
        cluster.kubectl(
            "wait", "-n", namespace, "fr/fr", "--for=condition=Ready", "--timeout=60s", timeout=90
        )
    finally:
        time.sleep(0.5)
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
    decoder, idx, versions = json.JSONDecoder(), 0, []
    while idx < len(out):
        while idx < len(out) and out[idx].isspace():
            idx += 1
        if idx >= len(out):
            break
        obj, idx = decoder.raw_decode(out, idx)
        versions.append(obj)
    with_status = [v for v in versions if (v.get("status") or {}).get("conditions")]
    first = {c["type"]: c["status"] for c in with_status[0]["status"]["conditions"]}
    assert first["Ready"] == "False" and first["Reconciling"] == "True", first
    assert isinstance(with_status[0]["status"]["observedGeneration"], int)


def test_an_unreachable_node_flips_and_returns_without_touching_the_router_config(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    nodes = _network(kube, namespace, demo_nodes)
    kube.wait_condition(namespace, "fr", "fr")
    before = kube.get(namespace, "fr", "fr")["status"]["configHash"]
    nodes[1].stop()
    ready = kube.wait_condition(namespace, "hn", "hosp-1", status="False", timeout=30)
    assert ready["reason"] == "ProbeFailed" and "routers send it nothing" in ready["message"]
    hn = kube.get(namespace, "hn", "hosp-1")["status"]
    assert hn["consecutiveFailures"] >= 2 and hn["lastError"]
    status = eventually(
        lambda: (st := kube.get(namespace, "fr", "fr")["status"])["nodes"]["names"] == ["hosp-0"] and st,
        what="the router's status names only hosp-0 ready",
    )
    nodes_ready = next(c for c in status["conditions"] if c["type"] == "NodesReady")
    assert nodes_ready["status"] == "False" and "hosp-1" in nodes_ready["message"]
    # the router probes hosp-1 itself: the config, and with it every router pod, stays as it was
    assert status["configHash"] == before
    assert [n["id"] for n in _config(kube, namespace)["nodes"]] == ["hosp-0", "hosp-1"]
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=hosp-1", "-o", "json"
    ).stdout
    assert "NodeUnreachable" in events
    # it comes back when healthy again
    demo_nodes.start("hosp-1", port=nodes[1].port)
    kube.wait_condition(namespace, "hn", "hosp-1", timeout=30)
    eventually(
        lambda: kube.get(namespace, "fr", "fr")["status"]["nodes"]["names"] == ["hosp-0", "hosp-1"],
        what="node ready again in the router's status",
    )
    assert kube.get(namespace, "fr", "fr")["status"]["configHash"] == before


def test_mtls_probes_use_the_secrets_the_node_references(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    tls_spec = demo_nodes.tls_secrets(namespace, "mtls")
    node = demo_nodes.start("strict", mtls=True)
    kube.apply(
        namespace,
        [
            hospital_node("with-client-cert", node.endpoint, tls=tls_spec),
            hospital_node("without-client-cert", node.endpoint, tls={"caSecretRef": tls_spec["caSecretRef"]}),
        ],
    )
    kube.wait_condition(namespace, "hn", "with-client-cert")
    assert kube.get(namespace, "hn", "with-client-cert")["status"]["latencyMs"] > 0
    kube.wait_condition(namespace, "hn", "without-client-cert", status="False")


def test_a_short_lived_certificate_is_renewed_and_rolls_the_pods(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes, n=1, tls={"duration": "1m", "renewBefore": "50s"})
    kube.wait_condition(namespace, "fr", "fr")
    first = kube.get(namespace, "fr", "fr")["status"]["tls"]
    assert first["renewalTime"] < first["notAfter"]
    second = eventually(
        lambda: (t := kube.get(namespace, "fr", "fr")["status"]["tls"])["serial"] != first["serial"] and t,
        timeout=40,
        what="certificate renewal",
    )
    assert second["notAfter"] > first["notAfter"]
    secret = kube.get(namespace, "secret", "fr-tls")
    assert set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    assert b"BEGIN CERTIFICATE" in base64.b64decode(secret["data"]["ca.crt"])
    dep = kube.get(namespace, "deployment", "fr")
    serial = dep["spec"]["template"]["metadata"]["annotations"]["fdp.io/tls-serial"]
    assert serial != first["serial"]


def test_changing_the_policy_updates_the_config_hash_and_prunes_the_old_config(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes, n=1)
    kube.wait_condition(namespace, "fr", "fr")
    old = kube.get(namespace, "fr", "fr")["status"]
    kube.apply(namespace, privacy_policy(budgets={"perUser": 4}))
    new = eventually(
        lambda: (s := kube.get(namespace, "fr", "fr")["status"])["configHash"] != old["configHash"] and s,
        what="new config hash",
    )
    assert _config(kube, namespace)["privacy"]["budgets"]["per_user"] == 4
    kube.wait_condition(namespace, "fr", "fr")
    eventually(
        lambda: kube.get(namespace, "configmap", old["configMapName"]) is None, what="old config pruned"
    )
    assert kube.get(namespace, "configmap", new["configMapName"]) is not None
    eventually(
        lambda: kube.get(namespace, "pp", "pol")["status"]["guarantee"].startswith("(4, "),
        what="new guarantee",
    )


def test_a_policy_the_router_would_refuse_is_not_ready_and_the_running_config_is_kept(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    """perUser = max = 1 passes the CRD, but no query at ε = 1 fits a budget of 1 under the
    router's Rényi filter: every router pod would refuse the config. It showed Ready."""
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes, n=1)
    kube.wait_condition(namespace, "fr", "fr")
    good = kube.get(namespace, "fr", "fr")["status"]
    kube.apply(
        namespace,
        privacy_policy(defaultEpsilonPerQuery=1, maxEpsilonPerQuery=1, budgets={"perUser": 1}),
    )
    ready = kube.wait_condition(namespace, "pp", "pol", status="False")
    assert ready["reason"] == "PolicyInvalid"
    assert "the router refuses this policy: spec.budgets.perUser" in ready["message"]
    router = kube.wait_condition(namespace, "fr", "fr", status="False")
    assert router["reason"] == "PolicyInvalid" and "budgets.perUser" in router["message"]
    assert kube.get(namespace, "fr", "fr")["status"]["configHash"] == good["configHash"]
    kube.apply(namespace, privacy_policy(budgets={"perUser": 4}))
    kube.wait_condition(namespace, "pp", "pol")
    kube.wait_condition(namespace, "fr", "fr")


def test_a_missing_policy_is_named_and_the_running_config_is_kept(
    kube, namespace, operator_runner, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes, n=1)
    kube.wait_condition(namespace, "fr", "fr")
    good = kube.get(namespace, "fr", "fr")["status"]
    dep_before = kube.get(namespace, "deployment", "fr")["metadata"]["resourceVersion"]
    kube.apply(namespace, federated_router(policyRef={"name": "does-not-exist"}))
    ready = kube.wait_condition(namespace, "fr", "fr", status="False")
    assert ready["reason"] == "PolicyNotFound" and "'does-not-exist'" in ready["message"]
    stalled = kube.condition(namespace, "fr", "fr", "Stalled")
    assert stalled["status"] == "True"
    time.sleep(2)
    assert kube.get(namespace, "deployment", "fr")["metadata"]["resourceVersion"] == dep_before
    assert kube.get(namespace, "configmap", good["configMapName"]) is not None
    kube.apply(namespace, federated_router())
    kube.wait_condition(namespace, "fr", "fr")


def test_deleting_the_router_removes_its_children(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes, n=1)
    kube.wait_condition(namespace, "fr", "fr")
    # The delete waits for the operator to drop its finalizer: on a loaded 2-core CI machine
    # that once took over 60 s (one run in three on 2026-11-30), so it gets the GC's 60 s twice.
    cluster.kubectl("delete", "fr", "fr", "-n", namespace, "--wait=true", timeout=120)
    for kind in OWNED_KINDS:
        eventually(
            lambda k=kind: not kube.items(namespace, k, "fdp.io/router=fr"),
            timeout=60,
            what=f"{kind} garbage-collected",
        )


def test_restarting_the_operator_changes_nothing(kube, namespace, operator_runner, demo_nodes) -> None:
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes)
    kube.wait_condition(namespace, "fr", "fr")
    time.sleep(2)  # let the first resync settle

    def snapshot():
        out = {}
        for kind in OWNED_KINDS:
            for item in kube.items(namespace, kind, "fdp.io/router=fr"):
                out[(kind, item["metadata"]["name"])] = item["metadata"]["resourceVersion"]
        fr = kube.get(namespace, "fr", "fr")
        out[("fr", "fr")] = fr["metadata"]["resourceVersion"]
        return out, fr["status"]

    before, status_before = snapshot()
    operator_runner.restart()
    time.sleep(6)  # a few resync periods and probe rounds
    assert operator_runner.alive(), operator_runner.logs()[-3000:]
    after, status_after = snapshot()
    assert after == before, {
        k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)
    }
    assert status_after == status_before


def test_the_liveness_endpoint_answers(operator_runner) -> None:
    import urllib.error
    import urllib.request

    def probe() -> bytes | None:
        try:
            url = f"http://127.0.0.1:{operator_runner.liveness_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return resp.read() if resp.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    assert eventually(probe, timeout=30, what="liveness endpoint") is not None


_TSC = {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}
#: spec.scheduling changes the CRD refuses, and what the API server says (the field named)
REFUSED_SCHEDULING = [
    (
        {"tolerations": [{"key": "dedicated", "operator": "Exists", "value": "fdp-router"}]},
        "spec.scheduling.tolerations[0].value: Invalid value",
    ),
    (
        {"tolerations": [{"key": "dedicated", "effect": "NoEvict"}]},
        'spec.scheduling.tolerations[0].effect: Unsupported value: "NoEvict"',
    ),
    (
        {"tolerations": [{"key": "dedicated", "operator": "In"}]},
        'spec.scheduling.tolerations[0].operator: Unsupported value: "In"',
    ),
    ({"tolerations": [{"value": "fdp-router"}]}, "a toleration without a key must have operator Exists"),
    (
        {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]},
        "spec.scheduling.tolerations[0].tolerationSeconds: Invalid value",
    ),
    ({"priorityClassName": "High_Priority"}, "spec.scheduling.priorityClassName: Invalid value"),
    ({"nodeSelector": {"no spaces": "x"}}, "scheduling.nodeSelector keys must be label keys"),
    (
        {"topologySpreadConstraints": [{**_TSC, "maxSkew": 0}]},
        "spec.scheduling.topologySpreadConstraints[0].maxSkew: Invalid value: 0",
    ),
    (
        {"topologySpreadConstraints": [{"maxSkew": 1, "whenUnsatisfiable": "DoNotSchedule"}]},
        "spec.scheduling.topologySpreadConstraints[0].topologyKey: Required value",
    ),
    (
        {"topologySpreadConstraints": [{**_TSC, "whenUnsatisfiable": "Sometimes"}]},
        'spec.scheduling.topologySpreadConstraints[0].whenUnsatisfiable: Unsupported value: "Sometimes"',
    ),
    (
        {"topologySpreadConstraints": [_TSC, {**_TSC, "maxSkew": 2}]},
        "spec.scheduling.topologySpreadConstraints[1]: Duplicate value",
    ),
    (
        {"topologySpreadConstraints": [{**_TSC, "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2}]},
        "spec.scheduling.topologySpreadConstraints[0].minDomains: Invalid value",
    ),
    (
        {"affinity": {"nodeAfinity": {}}},
        'unknown field "spec.scheduling.affinity.nodeAfinity"',
    ),
    (
        {"topologySpreadConstraints": [{**_TSC, "labelSelector": {"matchLabels": {"not a key!": "v"}}}]},
        "labelSelector.matchLabels keys must be label keys",
    ),
    (
        {
            "topologySpreadConstraints": [
                {**_TSC, "labelSelector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}}
            ]
        },
        "spec.scheduling.topologySpreadConstraints[0].labelSelector.matchExpressions[0].key: Invalid value",
    ),
    (
        {"topologySpreadConstraints": [{**_TSC, "matchLabelKeys": ["bad key!"]}]},
        "spec.scheduling.topologySpreadConstraints[0].matchLabelKeys[0]: Invalid value",
    ),
]


def test_scheduling_places_the_router_pods_and_a_refused_one_changes_nothing(
    cluster, kube, namespace, operator_runner, demo_nodes
) -> None:
    """spec.scheduling on the pods the API server admits and the scheduler places (pinned to one
    node, with a PriorityClass's priority); a toleration the CRD refuses is rejected at apply
    time naming the field; an affinity only the API server can judge is named in Ready and the
    running Deployment keeps its template."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    target = sorted(n["metadata"]["labels"]["kubernetes.io/hostname"] for n in nodes)[-1]
    priority_class = f"fdp-e2e-{namespace}"
    cluster.kubectl("create", "priorityclass", priority_class, "--value=1000")
    try:
        scheduling = {
            "nodeSelector": {"kubernetes.io/hostname": target},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "fdp-router", "effect": "NoSchedule"}
            ],
            "affinity": {
                "podAntiAffinity": {
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "weight": 100,
                            "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "fr"}},
                            },
                        }
                    ]
                }
            },
            "priorityClassName": priority_class,
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
            ],
        }
        _ca_secret(kube, namespace, demo_nodes)
        _network(kube, namespace, demo_nodes, n=1, scheduling=scheduling)
        kube.wait_condition(namespace, "fr", "fr", timeout=90)  # Ready: the pod was placed and runs
        dep = kube.get(namespace, "deployment", "fr")
        pod_spec = dep["spec"]["template"]["spec"]
        assert pod_spec["nodeSelector"] == scheduling["nodeSelector"]
        assert pod_spec["tolerations"] == scheduling["tolerations"]
        assert pod_spec["affinity"] == scheduling["affinity"]
        assert pod_spec["priorityClassName"] == priority_class
        [spread] = pod_spec["topologySpreadConstraints"]
        assert spread["labelSelector"] == {
            "matchLabels": {"app.kubernetes.io/name": "fdp-router", "app.kubernetes.io/instance": "fr"}
        }, "no labelSelector given: the router's own pods"

        def running_pods():
            pods = kube.items(namespace, "pod", "app.kubernetes.io/instance=fr")
            return [p for p in pods if not p["metadata"].get("deletionTimestamp")] or None

        [pod] = eventually(running_pods, what="the router pod")
        assert pod["spec"]["nodeName"] == target and pod["spec"]["priority"] == 1000

        # refused by the CRD at apply time, the field named
        failures = []
        for change, message in REFUSED_SCHEDULING:
            body = federated_router(scheduling={**scheduling, **change})
            proc = cluster.kubectl(
                "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False
            )
            if proc.returncode == 0 or message not in proc.stderr:
                failures.append(f"{change}: rc={proc.returncode} {proc.stderr.strip()[:400]}")
        assert not failures, "\n".join(failures)
        assert kube.get(namespace, "fr", "fr")["spec"]["scheduling"] == scheduling

        # an affinity the CRD passes through and the API server refuses on the Deployment
        generation = dep["metadata"]["generation"]
        empty_terms = {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}
        }
        kube.apply(namespace, federated_router(scheduling={**scheduling, "affinity": empty_terms}))
        ready = kube.wait_condition(namespace, "fr", "fr", status="False")
        assert ready["reason"] == "ApplyFailed" and "nodeSelectorTerms" in ready["message"], ready
        after = kube.get(namespace, "deployment", "fr")
        assert after["metadata"]["generation"] == generation
        assert after["spec"]["template"]["spec"]["affinity"] == scheduling["affinity"]
        kube.apply(namespace, federated_router(scheduling=scheduling))
        kube.wait_condition(namespace, "fr", "fr")
    finally:
        cluster.kubectl("delete", "priorityclass", priority_class, "--wait=false", check=False)
