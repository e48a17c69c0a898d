"""``render(...)``: every object a FederatedRouter owns, as plain dicts.

Called by ``reconcile/router.py`` after it has observed the cluster; unit-tested with plain
dict assertions. The Deployments and Services come from the workloads seam
(``render/workloads.py``, owned by the rollout engine); everything around them is here:
the config ConfigMap (named by the hash of the config without its node list, content
updated in place when nodes come and go), the pod template (restricted Pod Security,
probes, Prometheus annotations, mounted config/TLS/Secrets, the SQLite ledger's claim),
ServiceAccount, HPA, PDB, NetworkPolicy (ingress from what the CR or the operator's
settings name; egress to the nodes, DNS, the JWKS URL and the ledger database), the
ledger's PersistentVolumeClaim and audit key Secret (applied by the ledger step, without an
owner unless asked), and the list of stale objects to delete. Pure: no I/O, no clock.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fdp_operator.models import (
    ALLOW_MOUNT_LABEL,
    FederatedRouter,
    HospitalNode,
    LabelSelectorRequirement,
    PrivacyPolicy,
)
from fdp_operator.render import names
from fdp_operator.render.config import (
    AUTH_MOUNT,
    DATA_MOUNT,
    LEDGER_MOUNT,
    config_hash,
    node_config,
    node_secret_mount,
    rendered_config,
    selected_nodes,
)
from fdp_operator.render.workloads import ObservedState, WorkloadPlan, render_workloads
from fdp_operator.security import DEFAULT_INGRESS_FROM, node_secret_uses

RUN_AS = 10001
#: seconds a terminating router pod keeps serving while it leaves the Service's endpoints
PRESTOP_SLEEP_SECONDS = 5
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
    config_hash: str  # of the whole config file the pods read (node list included)
    config_map_name: str
    node_names: list[str]
    selected_count: int
    spec_hash: str = ""  # of the config without its node list (the pod template carries it)


def _meta(router: FederatedRouter, name: str, component: str = "router") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": router.ref.namespace,
        "labels": names.common_labels(router.ref.name, component),
    }


def render_config_map(
    router: FederatedRouter, name: str, text: str, digest: str, selected: Sequence[str]
) -> dict[str, Any]:
    """The config ConfigMap. Not immutable: its name stays while only the node list changes,
    and the kubelet updates the mounted file in place (a directory mount, never subPath)."""
    meta = _meta(router, name, "config")
    meta["annotations"] = {
        names.CONFIG_HASH_ANNOTATION: digest,
        names.SELECTED_NODES_ANNOTATION: ",".join(selected),
    }
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {names.CONFIG_FILE: text}}


def render_tls_secret(router: FederatedRouter, name: str, cert: str, key: str, ca: str) -> dict[str, Any]:
    """The serving Secret, keyed like cert-manager's (tls.crt, tls.key, ca.crt)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        # no opt-in label: only this router mounts it, so no other spec may name it
        "metadata": _meta(router, name, "tls"),
        "stringData": {"tls.crt": cert, "tls.key": key, "ca.crt": ca},
    }


def render_audit_key_secret(router: FederatedRouter, key_id: str, key_hex: str) -> dict[str, Any]:
    """``<fr>-audit-key``: a keyring as ``fdp_router.privacy.audit.parse_keyring`` reads it
    (``<key-id> <64 hex>``, the last line active). Created once, never owned, never rewritten."""
    labels = names.retained_labels(router.ref.name, "audit-key")
    labels[ALLOW_MOUNT_LABEL] = "true"
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": names.audit_key_secret(router.ref.name),
            "namespace": router.ref.namespace,
            "labels": labels,
        },
        "stringData": {names.AUDIT_KEY_KEY: f"{key_id} {key_hex}\n"},
    }


def render_ledger_claim(router: FederatedRouter) -> dict[str, Any]:
    """``<fr>-ledger``: the SQLite ledger's volume, ReadWriteOnce (one pod writes it)."""
    vol = router.spec.ledger.sqlite
    spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": vol.size}},
    }
    if vol.storage_class_name is not None:
        spec["storageClassName"] = vol.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": names.ledger_claim(router.ref.name),
            "namespace": router.ref.namespace,
            "labels": names.retained_labels(router.ref.name, "ledger"),
        },
        "spec": spec,
    }


def audit_key_secret_name(router: FederatedRouter) -> str:
    ref = router.spec.ledger.audit_key_secret_ref
    return ref.name if ref is not None else names.audit_key_secret(router.ref.name)


def node_secret_names(nodes: Sequence[HospitalNode]) -> list[str]:
    """Secrets of the selected nodes, healthy or not: a node's health never changes the pod
    template, so it never rolls the pods."""
    return sorted({use.name for n in nodes for use in node_secret_uses(n)})


def _secret_volume(name: str, secret: str, items: list[str] | None = None) -> dict[str, Any]:
    src: dict[str, Any] = {"secretName": secret, "defaultMode": 0o440}
    if items:
        src["items"] = [{"key": k, "path": k} for k in items]
    return {"name": name, "secret": src}


def render_scheduling(router: FederatedRouter) -> dict[str, Any]:
    """The pod spec fields of ``spec.scheduling``; only those set (an unset field adds no key,
    so a router without scheduling keeps its pod template and revision). A topology spread
    constraint without labelSelector counts this router's pods: every color and track."""
    sched = router.spec.scheduling
    out: dict[str, Any] = {}
    if sched.node_selector:
        out["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in sched.tolerations]
    affinity = sched.affinity.model_dump(by_alias=True, exclude_none=True) if sched.affinity else {}
    if affinity:
        out["affinity"] = affinity
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    constraints = []
    for c in sched.topology_spread_constraints:
        tsc = c.model_dump(by_alias=True, exclude_none=True, exclude={"label_selector", "match_label_keys"})
        selector = c.label_selector
        tsc["labelSelector"] = (
            {"matchLabels": names.selector_labels(router.ref.name)}
            if selector is None
            else _label_selector(selector.match_labels, selector.match_expressions)
        )
        if c.match_label_keys:
            tsc["matchLabelKeys"] = list(c.match_label_keys)
        constraints.append(tsc)
    if constraints:
        out["topologySpreadConstraints"] = constraints
    return out


def _label_selector(
    labels: Mapping[str, str], expressions: Sequence[LabelSelectorRequirement]
) -> dict[str, Any]:
    """A metav1.LabelSelector as the API server spells it (empty parts left out)."""
    out: dict[str, Any] = {}
    if labels:
        out["matchLabels"] = dict(labels)
    if expressions:
        out["matchExpressions"] = [
            {"key": e.key, "operator": e.operator, **({"values": list(e.values)} if e.values else {})}
            for e in expressions
        ]
    return out


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
    data: dict[str, Any] = (
        {"name": "data", "persistentVolumeClaim": {"claimName": names.ledger_claim(router.ref.name)}}
        if s.ledger.backend == "sqlite"
        else {"name": "data", "emptyDir": {}}  # postgres: nothing durable lives in the pod
    )
    volumes: list[dict[str, Any]] = [
        # a directory mount (no subPath): the kubelet swaps the file when the ConfigMap changes
        {"name": "config", "configMap": {"name": config_map_name}},
        _secret_volume("tls", tls_secret, ["tls.crt", "tls.key", "ca.crt"]),
        data,
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
    if s.ledger.dsn_secret_ref and s.ledger.backend == "postgres":
        extra_secrets.append(("ledger-dsn", s.ledger.dsn_secret_ref.name, f"{LEDGER_MOUNT}/dsn"))
    extra_secrets.append(("audit-key", audit_key_secret_name(router), f"{LEDGER_MOUNT}/audit"))
    for i, secret in enumerate(node_secret_names(nodes)):
        extra_secrets.append((f"node-tls-{i}", secret, node_secret_mount(secret)))
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
                "fsGroup": RUN_AS,  # the ledger claim is writable by the router
                "fsGroupChangePolicy": "OnRootMismatch",
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
                    # On SIGTERM the router stops accepting at once; kube-proxy drops a
                    # terminating pod from the Service a moment later. Without this wait,
                    # connections in that moment were refused (a canary scaled to 0 under load
                    # lost 9 of 6293 requests in real pods: tests/e2e/realpods).
                    "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
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
            **render_scheduling(router),
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


_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^@/?#]*@)?(\[[^\]]*\]|[^:/?#]*)(?::(\d*))?(?:[/?#]|$)")


def _host_port(url: str, default_port: int) -> tuple[str, int] | None:
    """(host, port) of an http(s) URL (no urllib here: render does no I/O and imports none)."""
    m = _URL.match(url)
    if m is None:
        return None
    return m.group(1).strip("[]").lower(), int(m.group(2)) if m.group(2) else default_port


def _peers_for(hosts: Sequence[str]) -> list[dict[str, Any]] | None:
    """NetworkPolicy peers for these hosts: IP literals become /32 (/128) blocks; a host name
    cannot be named in a NetworkPolicy, so any name leaves the port open to any destination."""
    blocks = []
    for host in hosts:
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        blocks.append({"ipBlock": {"cidr": f"{ip}/{ip.max_prefixlen}"}})
    return sorted(blocks, key=lambda b: b["ipBlock"]["cidr"])


def _unquote(text: str) -> str:
    return re.sub(r"%([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), text)


def _query(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split("#", 1)[0].split("&"):
        key, _, value = part.partition("=")
        out.setdefault(_unquote(key), _unquote(value))
    return out


_KV = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def dsn_targets(dsn: str) -> list[tuple[str, int]]:
    """(host, port) pairs a libpq DSN connects to (URI or key=value, several hosts allowed);
    Unix-socket hosts are left out, an unparsable DSN gives ``[("", 5432)]`` (any host)."""
    try:
        text = dsn.strip()
        if text.startswith(("postgresql://", "postgres://")):
            rest = text.split("://", 1)[1]
            netloc = rest.split("/", 1)[0].split("?", 1)[0].rsplit("@", 1)[-1]
            hosts, ports = [], []
            for part in netloc.split(","):
                if part.startswith("["):
                    host, _, port = part[1:].partition("]")
                    port = port.lstrip(":")
                else:
                    host, _, port = part.partition(":")
                hosts.append(_unquote(host))
                ports.append(port)
            query = _query(text.split("?", 1)[1]) if "?" in text else {}
            if "host" in query:
                hosts = query["host"].split(",")
            if "port" in query:
                ports = query["port"].split(",")
        else:
            kv = {k: v.strip("'") for k, v in _KV.findall(text)}
            hosts = (kv.get("host") or kv.get("hostaddr") or "").split(",")
            ports = (kv.get("port") or "").split(",")
        if len(ports) == 1:
            ports = ports * len(hosts)
        out = []
        for host, port in zip(hosts, ports, strict=True):
            if host.startswith("/"):
                continue  # a Unix socket: no network traffic
            out.append((host, int(port) if port else 5432))
        return out
    except ValueError:
        return [("", 5432)]


def egress_rules(
    router: FederatedRouter, nodes: Sequence[HospitalNode], ledger_targets: Sequence[tuple[str, int]]
) -> list[dict[str, Any]]:
    """DNS, every selected node's endpoint port (healthy or not: health never edits the
    policy), the JWKS URL's port, the PostgreSQL ledger's ports, and the CR's extra rules."""
    targets: dict[int, list[str]] = {}
    for n in nodes:
        hp = _host_port(n.spec.endpoint, 443)
        if hp is not None:
            targets.setdefault(hp[1], []).append(hp[0])
    if router.spec.auth.jwks_url:
        hp = _host_port(router.spec.auth.jwks_url, 443)
        if hp is not None:
            targets.setdefault(hp[1], []).append(hp[0])
    if router.spec.ledger.backend == "postgres":
        for host, port in ledger_targets or (("", 5432),):
            targets.setdefault(port, []).append(host)
    rules: list[dict[str, Any]] = [
        {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
    ]
    for port in sorted(targets):
        rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port}]}
        peers = _peers_for(sorted(set(targets[port])))
        if peers:
            rule["to"] = peers
        rules.append(rule)
    rules += [dict(r) for r in router.spec.network_policy.extra_egress]
    return rules


def render_network_policy(
    router: FederatedRouter,
    nodes: Sequence[HospitalNode] = (),
    *,
    default_ingress_from: Sequence[Mapping[str, Any]] = DEFAULT_INGRESS_FROM,
    ledger_targets: Sequence[tuple[str, int]] = (),
) -> dict[str, Any]:
    """Ingress on the HTTPS port only from the peers the CR names (else the operator's
    default); egress only where the router must go (``egress_rules``)."""
    peers = router.spec.network_policy.ingress_from or tuple(dict(p) for p in default_ingress_from)
    rule: dict[str, Any] = {
        "ports": [{"protocol": "TCP", "port": names.CONTAINER_PORT}],
        "from": [dict(p) for p in peers],
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(router, router.ref.name),
        "spec": {
            "podSelector": {"matchLabels": names.selector_labels(router.ref.name)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [rule],
            "egress": egress_rules(router, nodes, ledger_targets),
        },
    }


def config_maps_in_use(deployments: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """ConfigMaps the pod templates of these Deployments mount."""
    in_use: set[str] = set()
    for dep in deployments.values():
        for vol in ((dep.get("spec") or {}).get("template") or {}).get("spec", {}).get("volumes", []) or []:
            if "configMap" in vol:
                in_use.add(vol["configMap"].get("name", ""))
    return in_use


def stale_config_maps(
    current: str, owned: Sequence[str], deployments: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Owned config ConfigMaps that neither the current config nor any Deployment still uses."""
    in_use = config_maps_in_use(deployments) | {current}
    return sorted(n for n in owned if n not in in_use)


def refreshed_config_map(
    router: FederatedRouter, cm: Mapping[str, Any], nodes: Sequence[HospitalNode]
) -> dict[str, Any] | None:
    """An older revision's ConfigMap (still mounted during a blue/green or canary rollout)
    with today's specs of the nodes it was rendered for (a node deleted leaves it, an edited
    endpoint or credential applies to it); None if nothing changes or it cannot be changed
    (immutable, or not a config this operator wrote)."""
    meta = cm.get("metadata") or {}
    text = (cm.get("data") or {}).get(names.CONFIG_FILE)
    if cm.get("immutable") or text is None:
        return None
    ann = meta.get("annotations") or {}
    if names.SELECTED_NODES_ANNOTATION not in ann:
        return None
    selected = [n for n in str(ann[names.SELECTED_NODES_ANNOTATION]).split(",") if n]
    try:
        data = json.loads(text)
    except ValueError:
        return None
    keep = sorted((n for n in nodes if n.ref.name in selected), key=lambda n: n.ref.name)
    data["nodes"] = [node_config(n).model_dump(mode="json") for n in keep]
    new_text = json.dumps(data, sort_keys=True, indent=2)
    if new_text == text:
        return None
    return render_config_map(router, str(meta["name"]), new_text, config_hash(new_text), selected)


def render(
    router: FederatedRouter,
    policy: PrivacyPolicy,
    nodes: Sequence[HospitalNode],
    *,
    tls_secret: str,
    tls_serial: str,
    observed: ObservedState,
    owned_config_maps: Mapping[str, Mapping[str, Any]] | Sequence[str] = (),
    hpa_exists: bool = False,
    network_policy_exists: bool = False,
    default_ingress_from: Sequence[Mapping[str, Any]] = DEFAULT_INGRESS_FROM,
    ledger_targets: Sequence[tuple[str, int]] = (),
) -> Rendered:
    """Desired children of a FederatedRouter (the TLS Secret is rendered by the TLS step, the
    ledger claim and audit key by the ledger step). ``nodes`` are the nodes the router may
    use (the reconcile step has removed those whose Secrets it refused)."""
    cfg = rendered_config(router, policy, nodes)
    selected = selected_nodes(router, nodes)
    cm_name = names.config_map(router.ref.name, cfg.spec_digest)
    cm = render_config_map(router, cm_name, cfg.text, cfg.digest, [n.ref.name for n in selected])
    template = render_pod_template(router, cm_name, cfg.spec_digest, tls_secret, tls_serial, selected)
    plan = render_workloads(router, template, observed)
    objects: list[dict[str, Any]] = [cm, render_service_account(router), *plan.objects, render_pdb(router)]
    prune = list(plan.prune)
    if router.spec.autoscaling.enabled:
        objects.append(render_hpa(router, plan.hpa_target))
    elif hpa_exists:
        prune.append(("HorizontalPodAutoscaler", router.ref.name))
    if router.spec.network_policy.enabled:
        objects.append(
            render_network_policy(
                router, selected, default_ingress_from=default_ingress_from, ledger_targets=ledger_targets
            )
        )
    elif network_policy_exists:
        prune.append(("NetworkPolicy", router.ref.name))
    owned = (
        dict(owned_config_maps)
        if isinstance(owned_config_maps, Mapping)
        else {n: {} for n in owned_config_maps}
    )
    in_use = config_maps_in_use(observed.deployments)
    for name in sorted(in_use & owned.keys() - {cm_name}):
        refreshed = refreshed_config_map(router, owned[name], nodes)
        if refreshed is not None:
            objects.append(refreshed)
    prune += [("ConfigMap", n) for n in stale_config_maps(cm_name, list(owned), observed.deployments)]
    return Rendered(
        objects=objects,
        prune=prune,
        plan=plan,
        config_hash=cfg.digest,
        config_map_name=cm_name,
        node_names=[n.ref.name for n in selected if n.healthy],  # status: those the operator sees Ready
        selected_count=len(selected),
        spec_hash=cfg.spec_digest,
    )
