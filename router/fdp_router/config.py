"""The router's configuration file, as one typed, frozen model.

This file is the contract between the operator and the router: the operator renders a
`RouterConfig` into the router ConfigMap (``router-config.json``), the router parses it
once at start-up (and on hot reload) and passes the model inward. Standalone users write
the same file by hand (see ``examples/standalone/``).

`fdp-router config-schema` prints the JSON schema of this model.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONFIG_VERSION: Literal[1] = 1


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class NodeTLS(_Frozen):
    """mTLS towards one hospital node: files mounted from Secrets by the operator."""

    ca_file: str | None = Field(None, description="CA bundle that signs the node's serving certificate")
    client_cert_file: str | None = Field(None, description="client certificate presented to the node")
    client_key_file: str | None = Field(None, description="key of the client certificate")
    server_name: str | None = Field(None, description="override the TLS server name (SNI / verification)")
    insecure_skip_verify: bool = Field(False, description="demo only: do not verify the node certificate")


class HealthCheck(_Frozen):
    path: str = "/health"
    interval_seconds: PositiveFloat = 10.0
    timeout_seconds: PositiveFloat = 2.0
    failure_threshold: int = Field(3, ge=1)


class HospitalNodeConfig(_Frozen):
    """One hospital's OpenAI-compatible LLM endpoint (a HospitalNode CR, rendered)."""

    id: str = Field(..., min_length=1, max_length=253, description="node id, unique in the config")
    hospital: str = Field(..., min_length=1, description="hospital (data source) the node belongs to")
    endpoint: str = Field(..., description="base URL of the OpenAI-compatible API, e.g. https://h1:8443")
    model: str = Field("default", description="model name sent to the node")
    departments: tuple[str, ...] = Field((), description="departments allowed to use the node; empty: all")
    specializations: tuple[str, ...] = ()
    weight: float = Field(1.0, gt=0, le=1000)
    max_concurrent_requests: int = Field(32, ge=1)
    security_level: str = "standard"
    tls: NodeTLS = NodeTLS()
    health_check: HealthCheck = HealthCheck()

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_url(cls, v: str) -> str:
        if not (v.startswith("https://") or v.startswith("http://")):
            raise ValueError("endpoint must be an http(s) URL")
        return v.rstrip("/")


class BudgetWindow(_Frozen):
    """`lifetime`, or a fixed period after which spent budget refreshes."""

    kind: Literal["lifetime", "period"] = "lifetime"
    period_seconds: int | None = Field(None, ge=60, description="length of a window when kind=period")

    @model_validator(mode="after")
    def _period_needs_length(self) -> BudgetWindow:
        if self.kind == "period" and self.period_seconds is None:
            raise ValueError("window.period_seconds is required when window.kind is 'period'")
        if self.kind == "lifetime" and self.period_seconds is not None:
            raise ValueError("window.period_seconds must be unset when window.kind is 'lifetime'")
        return self


class Budgets(_Frozen):
    """Total epsilon per privacy unit; a request must fit all three."""

    per_user: PositiveFloat = 10.0
    per_department: PositiveFloat = 100.0
    per_hospital: PositiveFloat = 1000.0


class Mechanism(StrEnum):
    GAUSSIAN = "gaussian"
    LAPLACE = "laplace"


class ConsensusConfig(_Frozen):
    """DP consensus over several hospitals' answers (PATE's GNMax)."""

    nodes: int = Field(3, ge=2, le=32, description="how many nodes to fan out to")
    min_answers: int = Field(2, ge=1, description="fewer answers than this: error, nothing charged")
    sigma: PositiveFloat = Field(2.0, description="std-dev of Gaussian noise added to each vote count")
    candidate_mapping: Literal["normalized_exact"] = "normalized_exact"

    @model_validator(mode="after")
    def _min_le_nodes(self) -> ConsensusConfig:
        if self.min_answers > self.nodes:
            raise ValueError("consensus.min_answers must be <= consensus.nodes")
        return self


class PrivacyConfig(_Frozen):
    """The DP contract (a PrivacyPolicy CR, rendered)."""

    policy_name: str = "default"
    delta: float = Field(1e-5, gt=0, le=1e-3, allow_inf_nan=False)
    default_epsilon_per_query: PositiveFloat = 0.1
    max_epsilon_per_query: PositiveFloat = 1.0
    mechanism: Mechanism = Mechanism.GAUSSIAN
    budgets: Budgets = Budgets()
    window: BudgetWindow = BudgetWindow()
    consensus: ConsensusConfig = ConsensusConfig()

    @model_validator(mode="after")
    def _default_le_max(self) -> PrivacyConfig:
        if self.default_epsilon_per_query > self.max_epsilon_per_query:
            raise ValueError("default_epsilon_per_query must be <= max_epsilon_per_query")
        if self.max_epsilon_per_query > self.budgets.per_user:
            raise ValueError("max_epsilon_per_query must be <= budgets.per_user")
        return self


class Strategy(StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_REQUEST = "least_request"
    LATENCY_AWARE = "latency_aware"
    PRIVACY_AWARE = "privacy_aware"
    QUANTUM_INSPIRED = "quantum_inspired"


class RoutingConfig(_Frozen):
    # Default: the winner of benchmarks/balancer_sim.py (see docs/benchmarks/router.md).
    strategy: Strategy = Strategy.QUANTUM_INSPIRED
    connect_timeout_seconds: PositiveFloat = 2.0
    read_timeout_seconds: PositiveFloat = 60.0
    max_attempts: int = Field(2, ge=1, le=10, description="failover attempts before an answer is released")
    per_host_connections: int = Field(64, ge=1)
    outlier_consecutive_failures: int = Field(5, ge=1)
    outlier_ejection_seconds: PositiveFloat = 30.0
    seed: int | None = Field(None, description="seed for randomised balancers (tests, simulations)")


class AuthConfig(_Frozen):
    """JWT verification. Exactly the listed algorithms are accepted."""

    algorithms: tuple[Literal["HS256", "RS256", "ES256"], ...] = ("HS256",)
    issuer: str = "fdp-dev"
    audience: str = "federated-dp-llm"
    hs256_secret_file: str | None = None
    hs256_secret_env: str | None = "FDP_JWT_SECRET"  # noqa: S105 (an env var name)
    jwks_file: str | None = None
    jwks_url: str | None = None
    leeway_seconds: int = Field(30, ge=0, le=300)


class LedgerConfig(_Frozen):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = "fdp-ledger.sqlite"
    postgres_dsn_file: str | None = None
    postgres_dsn_env: str | None = "FDP_LEDGER_DSN"
    audit_key_file: str | None = Field(None, description="AES-256 audit key file (hex or raw 32 bytes)")
    audit_key_env: str | None = "FDP_AUDIT_KEY"
    commit_mode: Literal["durable", "deferred"] = Field(
        "durable",
        description="durable: the commit record (which node answered) is durable before the answer "
        "leaves. deferred: it rides with the next group commit (at most 50 ms later); the spend "
        "itself is durable before any node is called in both modes, and a crash before the commit "
        "record leaves the reservation counted as spent. Saves one durable write of latency per request.",
    )


class CacheConfig(_Frozen):
    enabled: bool = True
    policy: Literal["lru", "lfu", "ttl", "adaptive"] = "lru"
    max_entries: int = Field(1024, ge=1)
    ttl_seconds: PositiveFloat = 3600.0


class OverloadConfig(_Frozen):
    max_concurrency: int = Field(64, ge=1)
    max_queue: int = Field(256, ge=0)
    queue_timeout_seconds: PositiveFloat = 5.0
    aging_seconds: PositiveFloat = Field(1.0, description="each second waited raises priority by one")


class ServerConfig(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None


class ManagedBy(_Frozen):
    """Set by the operator: admin endpoints answer 409 and name this CR."""

    kind: str = "FederatedRouter"
    namespace: str
    name: str


class RouterConfig(_Frozen):
    version: Literal[1] = CONFIG_VERSION
    server: ServerConfig = ServerConfig()
    nodes: tuple[HospitalNodeConfig, ...] = ()
    privacy: PrivacyConfig = PrivacyConfig()
    routing: RoutingConfig = RoutingConfig()
    auth: AuthConfig = AuthConfig()
    ledger: LedgerConfig = LedgerConfig()
    cache: CacheConfig = CacheConfig()
    overload: OverloadConfig = OverloadConfig()
    managed_by: ManagedBy | None = None

    @model_validator(mode="after")
    def _unique_node_ids(self) -> RouterConfig:
        ids = [n.id for n in self.nodes]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"nodes: duplicate node id(s) {dupes}")
        return self


def load_config(path: str | Path) -> RouterConfig:
    """Parse a YAML or JSON config file; raises pydantic.ValidationError naming the field."""
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    return RouterConfig.model_validate(data or {})


def dump_config(cfg: RouterConfig) -> str:
    """Canonical JSON (sorted keys) so that a content hash is stable."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, indent=2)


def config_schema() -> dict[str, object]:
    return RouterConfig.model_json_schema()
