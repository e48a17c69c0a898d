"""The Helm chart: lint, render, least-privilege RBAC, and the operator running with only that RBAC."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import eventually
from .test_operator import _ca_secret, _network

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "federated-dp-llm"
KUBE_VERSION = "1.36.3"


def helm(k8s_bin_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(k8s_bin_dir / "helm"), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(k8s_bin_dir: Path, namespace: str = "fdp-system", *sets: str) -> list[dict]:
    args = ["template", "fdp", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for s in sets:
        args += ["--set", s]
    return [d for d in yaml.safe_load_all(helm(k8s_bin_dir, *args).stdout) if d]


def test_helm_lint_passes(k8s_bin_dir) -> None:
    out = helm(k8s_bin_dir, "lint", str(CHART), "--strict").stdout
    assert "0 chart(s) failed" in out


def test_values_outside_the_schema_are_rejected(k8s_bin_dir) -> None:
    proc = helm(k8s_bin_dir, "lint", str(CHART), "--set", "operator.logFormat=xml", check=False)
    assert proc.returncode != 0 and "logFormat" in proc.stdout + proc.stderr
    proc = helm(k8s_bin_dir, "lint", str(CHART), "--set", "nosuchvalue=1", check=False)
    assert proc.returncode != 0


def test_the_operator_runs_one_replica_recreated_non_root(k8s_bin_dir) -> None:
    docs = render(k8s_bin_dir)
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in ctr["env"]}
    assert env["WATCH_NAMESPACE"] == "fdp-system"
    # the confused-deputy settings: the project's router image only, ingress from the namespace
    assert env["FDP_ALLOWED_IMAGE_REPOSITORIES"] == "ghcr.io/federated-dp-llm/router"
    assert json.loads(env["FDP_DEFAULT_INGRESS_FROM"]) == [{"podSelector": {}}]


def test_the_router_placement_allow_lists_are_chart_values(k8s_bin_dir) -> None:
    from fdp_operator.security import OperatorSettings

    (dep,) = [d for d in render(k8s_bin_dir) if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "FDP_ALLOWED_PRIORITY_CLASSES" not in env and "FDP_ALLOWED_TOLERATION_KEYS" not in env
    docs = render(
        k8s_bin_dir,
        "fdp-system",
        "routerScheduling.allowedPriorityClasses={fdp-high,fdp-low}",
        "routerScheduling.allowedTolerationKeys={-}",
    )
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    settings = OperatorSettings.from_env(env)
    assert settings.allowed_priority_classes == ("fdp-high", "fdp-low")
    assert settings.allowed_toleration_keys == ()
    proc = helm(
        k8s_bin_dir, "lint", str(CHART), "--set", "routerScheduling.allowedPriorityClasses={a b}", check=False
    )
    assert proc.returncode != 0 and "allowedPriorityClasses" in proc.stdout + proc.stderr


def test_the_router_image_allow_list_is_a_chart_value(k8s_bin_dir) -> None:
    docs = render(
        k8s_bin_dir,
        "fdp-system",
        "routerImages.allowedRepositories={ghcr.io/federated-dp-llm/router,registry.hospital.example/fdp/*}",
    )
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e["value"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FDP_ALLOWED_IMAGE_REPOSITORIES"] == (
        "ghcr.io/federated-dp-llm/router,registry.hospital.example/fdp/*"
    )
    from fdp_operator.security import OperatorSettings

    assert OperatorSettings.from_env(env).allowed_image_repositories[1] == "registry.hospital.example/fdp/*"
    proc = helm(
        k8s_bin_dir, "lint", str(CHART), "--set", "routerImages.allowedRepositories={a b}", check=False
    )
    assert proc.returncode != 0


def test_rbac_is_namespaced_by_default_without_wildcards_and_secrets_only_as_needed(k8s_bin_dir) -> None:
    docs = render(k8s_bin_dir, "fdp-system", "watchNamespaces={clinic-a,clinic-b}")
    kinds = sorted(d["kind"] for d in docs)
    assert "ClusterRole" not in kinds and kinds.count("Role") == 2 and kinds.count("RoleBinding") == 2
    for role in (d for d in docs if d["kind"] == "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            if "secrets" in rule["resources"] or "persistentvolumeclaims" in rule["resources"]:
                assert sorted(rule["verbs"]) == ["create", "get", "patch"]  # no list, no delete
    cluster_wide = render(k8s_bin_dir, "fdp-system", "clusterWide=true")
    assert {d["kind"] for d in cluster_wide} >= {"ClusterRole", "ClusterRoleBinding"}
    (dep,) = [d for d in cluster_wide if d["kind"] == "Deployment"]
    assert "--all-namespaces" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


def test_every_value_is_documented_and_typed() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    undocumented, parent = [], ""
    for i, line in enumerate(lines):
        m = re.match(r"^( {0,2})([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        if m.group(1) == "":
            parent = m.group(2)
            assert parent in schema["properties"], f"{parent} missing from values.schema.json"
        elif parent == "resources":
            continue
        prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
        if not prev.strip().startswith("#"):
            undocumented.append(f"{parent}.{m.group(2)}" if m.group(1) else parent)
    assert not undocumented, undocumented


def _token_kubeconfig(cluster, namespace: str, sa: str, path: Path) -> str:
    token = cluster.kubectl("create", "token", sa, "-n", namespace, "--duration", "1h").stdout.strip()
    view = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    server = view["clusters"][0]["cluster"]
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": sa, "namespace": namespace}}],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def chart_rbac(cluster, k8s_bin_dir, namespace, fdp_crds) -> str:
    """Only the chart's ServiceAccount and RBAC for `namespace`; returns the SA name."""
    text = helm(
        k8s_bin_dir,
        "template",
        "fdp",
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/rbac.yaml",
    ).stdout
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)
    return "fdp-federated-dp-llm"


def test_the_operator_works_with_only_the_charts_rbac(
    cluster, kube, namespace, chart_rbac, make_operator, demo_nodes, tmp_path
) -> None:
    kubeconfig = _token_kubeconfig(cluster, namespace, chart_rbac, tmp_path / "sa.kubeconfig")
    op = make_operator(namespace, kubeconfig=kubeconfig)
    _ca_secret(kube, namespace, demo_nodes)
    _network(kube, namespace, demo_nodes, n=1)
    kube.wait_condition(namespace, "fr", "fr", timeout=60)
    kube.wait_condition(namespace, "pp", "pol")
    eventually(lambda: kube.condition(namespace, "hn", "hosp-0", "Ready")["status"] == "True", what="node")
    assert op.alive()
    assert "Forbidden" not in op.logs()


def test_start_up_without_permission_fails_with_a_clear_message(
    cluster, namespace, chart_rbac, make_operator, tmp_path
) -> None:
    kubeconfig = _token_kubeconfig(cluster, namespace, chart_rbac, tmp_path / "sa.kubeconfig")
    op = make_operator("somewhere-else", kubeconfig=kubeconfig)
    code = eventually(lambda: op.proc.poll() is not None and op.proc.returncode, timeout=30, what="exit")
    assert code == 2
    logs = op.logs()
    assert "lacks permissions" in logs and "federatedrouters" in logs and "somewhere-else" in logs
