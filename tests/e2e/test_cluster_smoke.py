"""The local control plane is a real Kubernetes: workloads roll out, CEL rules run, versions match."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _pinned_version() -> str:
    text = (REPO / "hack" / "cluster" / "versions.env").read_text()
    match = re.search(r"^K8S_VERSION=(\S+)", text, re.M)
    assert match
    return match.group(1)


def test_kubectl_and_apiserver_report_the_pinned_release(cluster) -> None:
    if cluster.name == "external":
        pytest.skip("an external cluster runs its own version")
    out = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert out["clientVersion"]["gitVersion"] == _pinned_version()
    assert out["serverVersion"]["gitVersion"] == _pinned_version()


def test_simulated_nodes_are_ready(cluster) -> None:
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = [
        n
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    ]
    assert len(ready) >= 2


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: smoke}
spec:
  replicas: 2
  selector: {matchLabels: {app: smoke}}
  template:
    metadata: {labels: {app: smoke}}
    spec:
      containers: [{name: c, image: registry.invalid/smoke:1}]
"""


def test_a_deployment_of_two_replicas_becomes_available(cluster, namespace) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=DEPLOYMENT)
    cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "deployment/smoke",
        "--for=condition=Available",
        "--timeout=90s",
        timeout=120,
    )
    dep = json.loads(cluster.kubectl("get", "-n", namespace, "deployment/smoke", "-o", "json").stdout)
    assert dep["status"]["availableReplicas"] == 2
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)["items"]
    assert len({p["spec"]["nodeName"] for p in pods}) >= 1
    assert all(p["status"]["phase"] == "Running" for p in pods)


CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.fdp.io}
spec:
  group: smoke.fdp.io
  scope: Namespaced
  names: {kind: Widget, plural: widgets, singular: widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              endpoint: {type: string}
            x-kubernetes-validations:
            - rule: "self.endpoint.startsWith('https://')"
              message: "spec.endpoint must be an https:// URL"
"""


def test_a_crd_cel_rule_rejects_a_bad_object_with_its_message(cluster, namespace) -> None:
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.fdp.io", "--timeout=30s")
    good = "apiVersion: smoke.fdp.io/v1\nkind: Widget\nmetadata: {name: ok}\nspec: {endpoint: https://x}\n"
    bad = "apiVersion: smoke.fdp.io/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {endpoint: http://x}\n"
    # Discovery of a just-established CRD can lag a moment.
    for _ in range(20):
        proc = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=good, check=False)
        if proc.returncode == 0:
            break
        time.sleep(0.5)
    assert proc.returncode == 0, proc.stderr
    rejected = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=bad, check=False)
    assert rejected.returncode != 0
    assert "spec.endpoint must be an https:// URL" in rejected.stderr
    assert cluster.kubectl("get", "widget", "bad", "-n", namespace, check=False).returncode != 0
