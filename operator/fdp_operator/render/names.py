"""Names and labels of the objects a FederatedRouter owns: one place, so every module agrees."""

from __future__ import annotations

MANAGED_BY = "fdp-operator"
ROUTER_LABEL = "fdp.io/router"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
CONFIG_HASH_ANNOTATION = "fdp.io/config-hash"
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


def service_account(router: str) -> str:
    return f"{router}-router"


def service_dns_names(router: str, namespace: str, services: list[str] | None = None) -> list[str]:
    """DNS SANs for the serving certificate: every Service, short and fully qualified."""
    out: list[str] = []
    for svc in services or [service(router), f"{router}-preview"]:
        out += [svc, f"{svc}.{namespace}", f"{svc}.{namespace}.svc", f"{svc}.{namespace}.svc.cluster.local"]
    return out
