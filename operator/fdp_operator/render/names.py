"""Names and labels of the objects a FederatedRouter owns: one place, so every module agrees."""

from __future__ import annotations

MANAGED_BY = "fdp-operator"
ROUTER_LABEL = "fdp.io/router"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
#: on the pod template: hash of the config *without* its node list (what rolls the pods)
CONFIG_HASH_ANNOTATION = "fdp.io/config-hash"
#: on a config ConfigMap: the HospitalNodes the config was rendered for (comma separated)
SELECTED_NODES_ANNOTATION = "fdp.io/selected-nodes"
#: on objects kept when their router is deleted (ledger claim, audit key): whose they are
RETAINED_FOR_LABEL = "fdp.io/retained-for-router"
AUDIT_KEY_KEY = "key"
TLS_SERIAL_ANNOTATION = "fdp.io/tls-serial"
CONFIG_FILE = "router-config.json"
CONFIG_MOUNT = "/etc/fdp/config"
TLS_MOUNT = "/etc/fdp/tls"
CONTAINER_PORT = 8443


def selector_labels(router: str) -> dict[str, str]:
    """Labels that select every pod of one router (all colors / stable and canary)."""
    return {NAME_LABEL: "fdp-router", INSTANCE_LABEL: router}


def common_labels(router: str, component: str = "router") -> dict[str, str]:
    return {
        **selector_labels(router),
        ROUTER_LABEL: router,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def deployment(router: str) -> str:
    return router


def service(router: str) -> str:
    return router


def config_map(router: str, config_hash: str) -> str:
    return f"{router}-config-{config_hash[:10]}"


def tls_secret(router: str) -> str:
    return f"{router}-tls"


def ca_secret(router: str) -> str:
    return f"{router}-ca"


def audit_key_secret(router: str) -> str:
    """The audit key the operator creates once when ``spec.ledger.auditKeySecretRef`` is unset."""
    return f"{router}-audit-key"


def ledger_claim(router: str) -> str:
    """The PersistentVolumeClaim of a SQLite ledger."""
    return f"{router}-ledger"


def retained_labels(router: str, component: str) -> dict[str, str]:
    """Labels of objects that outlive the router: no ``fdp.io/router`` (that label means
    "owned, deleted with it"), but who they were made for."""
    return {
        NAME_LABEL: "fdp-router",
        INSTANCE_LABEL: router,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        RETAINED_FOR_LABEL: router,
    }


def service_account(router: str) -> str:
    return f"{router}-router"


def service_dns_names(router: str, namespace: str, services: list[str] | None = None) -> list[str]:
    """DNS SANs for the serving certificate: every Service, short and fully qualified."""
    out: list[str] = []
    for svc in services or [service(router), f"{router}-preview"]:
        out += [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"]
    return out
