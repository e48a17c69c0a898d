"""``render(...)``: every object a FederatedRouter owns, as plain dicts.

Called by ``reconcile/router.py`` after it has observed the cluster; unit-tested with plain
dict assertions. The Deployments and Services come from the workloads seam
(``render/workloads.py``, owned by the rollout engine); everything around them is here:
the content-hashed config ConfigMap, the pod template (restricted Pod Security, probes,
Prometheus annotations, mounted config/TLS/Secrets), ServiceAccount, HPA, PDB,
NetworkPolicy, and the list of stale objects to delete. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fdp_operator.models import FederatedRouter, HospitalNode, PrivacyPolicy
from fdp_operator.render import names
from fdp_operator.render.config import (
    AUTH_MOUNT,
    DATA_MOUNT,
    LEDGER_MOUNT,
    node_tls_mount,
    rendered_config,
    selected_nodes,
)
from fdp_operator.render.workloads import ObservedState, WorkloadPlan, render_workloads

RUN_AS = 10001
PROMETHEUS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(names.CONTAINER_PORT),
    "prometheus.io/scheme": "https",
    "prometheus.io/path": "/metrics",
}


@dataclass(frozen=True)
class Rendered:
    objects: list[dict[str, Any]]
    prune: list[tuple[str, str]]
    plan: WorkloadPlan
    config_hash: str
    config_map_name: str
    node_names: list[str]
    selected_count: int


def _meta(router: FederatedRouter, name: str, component: str = "router") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": router.ref.namespace,
        "labels": names.common_labels(router.ref.name, component),
    }


def render_config_map(router: FederatedRouter, text: str, digest: str) -> dict[str, Any]:
    meta = _meta(router, names.config_map(router.ref.name, digest), "config")
    meta["annotations"] = {names.CONFIG_HASH_ANNOTATION: digest}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {names.CONFIG_FILE: text},
        "immutable": True,
    }


def render_tls_secret(router: FederatedRouter, name: str, cert: str, key: str, ca: str) -> dict[str, Any]:
    """The serving Secret, keyed like cert-manager's (tls.crt, tls.key, ca.crt)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": _meta(router, name, "tls"),
        "stringData": {"tls.crt": cert, "tls.key": key, "ca.crt": ca},
    }


def _secret_volume(name: str, secret: str, items: list[str] | None = None) -> dict[str, Any]:
    src: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if items:
        src["items"] = [{"key": k, "path": k} for k in items]
    return {"name": name, "secret": src}


def render_pod_template(
    router: FederatedRouter,
    config_map_name: str,
    digest: str,
    tls_secret: str,
    tls_serial: str,
    nodes: Sequence[HospitalNode],
) -> dict[str, Any]:
    """Pod template under the `restricted` Pod Security profile; changes roll the pods."""
    s = router.spec
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name}},
        _secret_volume("tls", tls_secret, ["tls.crt", "tls.key", "ca.crt"]),
        {"name": "data", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": names.CONFIG_MOUNT, "readOnly": True},
        {"name": "tls", "mountPath": names.TLS_MOUNT, "readOnly": True},
        {"name": "data", "mountPath": DATA_MOUNT},
        {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
    ]
    extra_secrets: list[tuple[str, str, str]] = []
    if s.auth.hs256_secret_ref:
        extra_secrets.append(("auth", s.auth.hs256_secret_ref.name, AUTH_MOUNT))
    if s.ledger.dsn_secret_ref:
        extra_secrets.append(("ledger-dsn", s.ledger.dsn_secret_ref.name, f"{LEDGER_MOUNT}/dsn"))
    if s.ledger.audit_key_secret_ref:
        extra_secrets.append(("audit-key", s.ledger.audit_key_secret_ref.name, f"{LEDGER_MOUNT}/audit"))
    node_secrets = sorted(
        {
            ref.name
            for n in nodes
            if n.healthy
            for ref in (n.spec.tls.ca_secret_ref, n.spec.tls.client_cert_secret_ref)
            if ref is not None
        }
    )
    for i, secret in enumerate(node_secrets):
        extra_secrets.append((f"node-tls-{i}", secret, node_tls_mount(secret)))
    for vol, secret, path in extra_secrets:
        volumes.append(_secret_volume(vol, secret))
        mounts.append({"name": vol, "mountPath": path, "readOnly": True})

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": "https", "scheme": "HTTPS"},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "metadata": {
            "labels": names.common_labels(router.ref.name),
            "annotations": {
                **PROMETHEUS,
                names.CONFIG_HASH_ANNOTATION: digest,
                names.TLS_SERIAL_ANNOTATION: tls_serial,
            },
        },
        "spec": {
            "serviceAccountName": names.service_account(router.ref.name),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS,
                "runAsGroup": RUN_AS,
                "fsGroup": RUN_AS,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": "router",
                    "image": s.image,
                    "imagePullPolicy": s.image_pull_policy,
                    "args": ["serve", "--config", f"{names.CONFIG_MOUNT}/{names.CONFIG_FILE}"],
                    "ports": [{"name": "https", "containerPort": names.CONTAINER_PORT, "protocol": "TCP"}],
                    "resources": s.resources,
                    "readinessProbe": probe("/readyz", 5, 3),
                    "livenessProbe": probe("/healthz", 10, 3),
                    "startupProbe": probe("/healthz", 2, 30),
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": mounts,
                }
            ],
            "volumes": volumes,
        },
    }


def render_service_account(router: FederatedRouter) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(router, names.service_account(router.ref.name)),
        "automountServiceAccountToken": False,
    }


def render_hpa(router: FederatedRouter, target: str) -> dict[str, Any]:
    a = router.spec.autoscaling
    metrics: list[dict[str, Any]] = []
    for resource, target_pct in (
        ("cpu", a.target_cpu_utilization_percentage),
        ("memory", a.target_memory_utilization_percentage),
    ):
        if target_pct is not None:
            metrics.append(
                {
                    "type": "Resource",
                    "resource": {
                        "name": resource,
                        "target": {"type": "Utilization", "averageUtilization": target_pct},
                    },
                }
            )
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
        "minReplicas": a.min_replicas,
        "maxReplicas": a.max_replicas,
        "metrics": metrics,
    }
    if a.behavior:
        spec["behavior"] = a.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(router, router.ref.name),
        "spec": spec,
    }


def render_pdb(router: FederatedRouter) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(router, router.ref.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": names.selector_labels(router.ref.name)}},
    }


def render_network_policy(router: FederatedRouter) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": names.CONTAINER_PORT}]}
    if router.spec.network_policy.ingress_from:
        rule["from"] = [dict(p) for p in router.spec.network_policy.ingress_from]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(router, router.ref.name),
        "spec": {
            "podSelector": {"matchLabels": names.selector_labels(router.ref.name)},
            "policyTypes": ["Ingress"],
            "ingress": [rule],
        },
    }


def stale_config_maps(
    current: str, owned: Sequence[str], deployments: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Owned config ConfigMaps that neither the current config nor any Deployment still uses."""
    in_use = {current}
    for dep in deployments.values():
        for vol in ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes", []) or []:
            if "configMap" in vol:
                in_use.add(vol["configMap"].get("name", ""))
    return sorted(n for n in owned if n not in in_use)


def render(
    router: FederatedRouter,
    policy: PrivacyPolicy,
    nodes: Sequence[HospitalNode],
    *,
    tls_secret: str,
    tls_serial: str,
    observed: ObservedState,
    owned_config_maps: Sequence[str] = (),
    hpa_exists: bool = False,
    network_policy_exists: bool = False,
) -> Rendered:
    """Desired children of a FederatedRouter (the TLS Secret is rendered by the TLS step)."""
    text, digest = rendered_config(router, policy, nodes)
    cm = render_config_map(router, text, digest)
    selected = selected_nodes(router, nodes)
    template = render_pod_template(router, cm["metadata"]["name"], digest, tls_secret, tls_serial, selected)
    plan = render_workloads(router, template, observed)
    objects: list[dict[str, Any]] = [cm, render_service_account(router), *plan.objects, render_pdb(router)]
    prune = list(plan.prune)
    if router.spec.autoscaling.enabled:
        objects.append(render_hpa(router, plan.hpa_target))
    elif hpa_exists:
        prune.append(("HorizontalPodAutoscaler", router.ref.name))
    if router.spec.network_policy.enabled:
        objects.append(render_network_policy(router))
    elif network_policy_exists:
        prune.append(("NetworkPolicy", router.ref.name))
    prune += [
        ("ConfigMap", n)
        for n in stale_config_maps(cm["metadata"]["name"], owned_config_maps, observed.deployments)
    ]
    return Rendered(
        objects=objects,
        prune=prune,
        plan=plan,
        config_hash=digest,
        config_map_name=cm["metadata"]["name"],
        node_names=[n.ref.name for n in selected if n.healthy],
        selected_count=len(selected),
    )
