"""Render the router's config file (``fdp_router.config.RouterConfig``) from the three CRs.

Called by ``render.router.render`` (and by tests). The output is ``dump_config``'s canonical
JSON, so its hash is stable. Two hashes matter: ``spec_hash`` covers everything but the node
list (image-independent settings: policy, auth, ledger, routing...) and names the ConfigMap
and the pod template annotation, so only those changes roll the pods; the node list (which
nodes are selected, their endpoints) changes the ConfigMap's content in place, and the router,
which polls its config file, reloads it without a restart. Every selected node is rendered,
healthy or not: the router probes each node itself with the same health check and threshold
and sends a failing node nothing, and takes it back seconds after it recovers, where a config
change would wait for the kubelet to swap the mounted file (about a minute). Secret files
point at the volumes the pod template mounts (``node_secret_mount``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from fdp_router.config import (
    AuthConfig,
    HospitalNodeConfig,
    LedgerConfig,
    ManagedBy,
    NodeAuth,
    NodeTLS,
    PrivacyConfig,
    RouterConfig,
    RoutingConfig,
    ServerConfig,
    dump_config,
)

from fdp_operator.models import FederatedRouter, HospitalNode, PrivacyPolicy
from fdp_operator.render import names

AUTH_MOUNT = "/etc/fdp/auth"
LEDGER_MOUNT = "/etc/fdp/ledger"
DATA_MOUNT = "/var/lib/fdp"  # sqlite: the ledger's PersistentVolumeClaim
SQLITE_PATH = f"{DATA_MOUNT}/ledger.sqlite"
NODE_TLS_MOUNT = "/etc/fdp/nodes"


def node_secret_mount(secret_name: str) -> str:
    """Where a Secret a HospitalNode names (mTLS, credentials) is mounted: one directory each."""
    return f"{NODE_TLS_MOUNT}/{secret_name}"


def privacy_config(policy: PrivacyPolicy) -> PrivacyConfig:
    """The policy's ``privacy`` section (built by the model, which validated it the same way)."""
    return policy.spec.config(policy.ref.name)


def node_config(node: HospitalNode) -> HospitalNodeConfig:
    s = node.spec
    tls = NodeTLS(
        ca_file=f"{node_secret_mount(s.tls.ca_secret_ref.name)}/ca.crt" if s.tls.ca_secret_ref else None,
        client_cert_file=(
            f"{node_secret_mount(s.tls.client_cert_secret_ref.name)}/tls.crt"
            if s.tls.client_cert_secret_ref
            else None
        ),
        client_key_file=(
            f"{node_secret_mount(s.tls.client_cert_secret_ref.name)}/tls.key"
            if s.tls.client_cert_secret_ref
            else None
        ),
        server_name=s.tls.server_name,
        insecure_skip_verify=s.tls.insecure_skip_verify,
    )
    auth = NodeAuth(
        api_key_file=(
            f"{node_secret_mount(s.auth.api_key_secret_ref.name)}/{s.auth.api_key_secret_ref.key}"
            if s.auth.api_key_secret_ref
            else None
        ),
        headers_file=(
            f"{node_secret_mount(s.auth.headers_secret_ref.name)}/{s.auth.headers_secret_ref.key}"
            if s.auth.headers_secret_ref
            else None
        ),
    )
    return HospitalNodeConfig(
        id=node.ref.name,
        hospital=s.hospital,
        endpoint=s.endpoint,
        model=s.model,
        departments=tuple(s.departments),
        specializations=tuple(s.specializations),
        weight=s.weight,
        max_concurrent_requests=s.capacity.max_concurrent_requests,
        security_level=s.security_level.value,
        tls=tls,
        health_check=s.health_check.config(),
        auth=auth,
        api_base_path=s.api_base_path,
        connect_timeout_seconds=s.timeouts.connect_seconds,
        read_timeout_seconds=s.timeouts.read_seconds,
        stream_timeout_seconds=s.timeouts.stream_seconds,
        privacy=s.privacy.config,
    )


def selected_nodes(router: FederatedRouter, nodes: Sequence[HospitalNode]) -> list[HospitalNode]:
    """Nodes in the router's namespace matching its nodeSelector, sorted by name."""
    return sorted(
        (
            n
            for n in nodes
            if n.ref.namespace == router.ref.namespace and router.spec.node_selector.matches(dict(n.labels))
        ),
        key=lambda n: n.ref.name,
    )


def router_config(
    router: FederatedRouter, policy: PrivacyPolicy, nodes: Sequence[HospitalNode]
) -> RouterConfig:
    """The config the router pods run: the selected nodes, the policy, auth, ledger."""
    s = router.spec
    auth = AuthConfig(
        algorithms=tuple(s.auth.algorithms),
        issuer=s.auth.issuer,
        audience=s.auth.audience,
        jwks_url=s.auth.jwks_url,
        hs256_secret_file=f"{AUTH_MOUNT}/{s.auth.hs256_secret_ref.key}" if s.auth.hs256_secret_ref else None,
        hs256_secret_env=None if s.auth.hs256_secret_ref else "FDP_JWT_SECRET",
        require_mfa=s.auth.require_mfa,
        max_token_age_seconds=s.auth.max_token_age_seconds or None,
    )
    audit_key = s.ledger.audit_key_secret_ref.key if s.ledger.audit_key_secret_ref else names.AUDIT_KEY_KEY
    ledger = LedgerConfig(
        backend=s.ledger.backend,
        sqlite_path=SQLITE_PATH,
        postgres_dsn_file=(
            f"{LEDGER_MOUNT}/dsn/{s.ledger.dsn_secret_ref.key}" if s.ledger.dsn_secret_ref else None
        ),
        # always a file from a Secret that outlives the pod (the named one, or <fr>-audit-key)
        audit_key_file=f"{LEDGER_MOUNT}/audit/{audit_key}",
        commit_mode="deferred" if s.ledger.commit_mode == "Deferred" else "durable",
        timeouts=s.ledger.timeouts.config(),
    )
    return RouterConfig(
        server=ServerConfig(
            host="0.0.0.0",
            port=names.CONTAINER_PORT,
            tls_cert_file=f"{names.TLS_MOUNT}/tls.crt",
            tls_key_file=f"{names.TLS_MOUNT}/tls.key",
        ),
        nodes=tuple(node_config(n) for n in selected_nodes(router, nodes)),
        privacy=privacy_config(policy),
        routing=RoutingConfig(
            strategy=s.routing.strategy,
            max_attempts=s.routing.max_attempts,
            connect_timeout_seconds=s.routing.connect_timeout_seconds,
            read_timeout_seconds=s.routing.read_timeout_seconds,
            stream_timeout_seconds=s.routing.stream_timeout_seconds,
        ),
        auth=auth,
        ledger=ledger,
        rate_limits=s.rate_limits.config(),
        managed_by=ManagedBy(namespace=router.ref.namespace, name=router.ref.name),
    )


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RenderedConfig:
    text: str  # the whole config file (canonical JSON)
    digest: str  # sha256 of ``text``: changes with anything, the node list included
    spec_digest: str  # sha256 of the config without its node list: what rolls the pods


def with_nodes(cfg: RouterConfig, nodes: Sequence[HospitalNodeConfig]) -> RouterConfig:
    return cfg.model_copy(update={"nodes": tuple(nodes)})


def rendered(cfg: RouterConfig) -> RenderedConfig:
    text = dump_config(cfg)
    return RenderedConfig(text, config_hash(text), config_hash(dump_config(with_nodes(cfg, ()))))


def rendered_config(
    router: FederatedRouter, policy: PrivacyPolicy, nodes: Sequence[HospitalNode]
) -> RenderedConfig:
    """The router config as text, with its two hashes."""
    return rendered(router_config(router, policy, nodes))
