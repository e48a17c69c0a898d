"""Typed, frozen models of the three custom resources' specs.

The kopf handlers parse a CR's raw ``spec`` exactly once, at the edge
(`parse_router`, `parse_policy`, `parse_node`), and pass these models inward: render,
reconcile and the rollout engine never read raw dicts. Field names follow the CRD
(camelCase in YAML, snake_case here via aliases). The CRD schema (crds.py) already
defaulted and validated the object at admission; these models re-check the same rules so
that a CR written before a schema change still fails with a message naming the field.

The router's rules are the router's: enums come from ``fdp_router.config`` and a spec that
maps onto a router config model (PrivacyPolicy -> ``PrivacyConfig``, a node's privacy and
health check) is validated by building that model, so the operator accepts nothing the
router would refuse. ``tests/unit/operator/test_crd_matches_models.py`` walks every CRD
field against these models (alias, default, enum, required).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from fdp_router.config import Budgets as BudgetsConfig
from fdp_router.config import BudgetWindow as WindowConfig
from fdp_router.config import (
    ConsensusConfig,
    DataClass,
    HealthCheck,
    LedgerTimeouts,
    Mechanism,
    NodeMechanism,
    NodePrivacy,
    PrivacyConfig,
    RateBucket,
    RateLimitConfig,
    SecurityLevel,
    Strategy,
    check_options,
)
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "fdp.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_ROUTER_IMAGE = "ghcr.io/federated-dp-llm/router:0.1.0"
#: The label a Secret must carry before the operator mounts it into a router pod (or uses it
#: to probe a node): see security.py. Secrets the operator creates carry it.
ALLOW_MOUNT_LABEL = "fdp.io/allow-router-mount"

_DURATION_RE = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Go-style duration ("2160h", "1h30m", "90s") to seconds, as cert-manager reads them."""
    if not _DURATION_RE.match(text):
        raise ValueError(f"{text!r} is not a duration like '2160h', '30m' or '90s'")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART_RE.findall(text))


Duration = Annotated[str, Field(pattern=_DURATION_RE.pattern)]


class SpecModel(BaseModel):
    """Base: frozen, camelCase aliases, unknown fields refused.

    The API server prunes fields the CRD does not declare, so an unknown field here means
    the CRD and this model spell a field differently: an error naming it, never a field
    silently dropped (``targetCPUUtilizationPercentage`` once was, and the HPA got 70)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True, alias_generator=to_camel)


_ROUTER_FIELD_NAMES = {
    "period_seconds": "period",  # the router counts seconds; the CRD takes a duration
}


def in_crd_words(text: str) -> str:
    """A router config message with the CRD's field names (``budgets.per_user`` ->
    ``budgets.perUser``): only names of the router's privacy config fields are renamed."""
    names: dict[str, str] = {}
    for model in (
        PrivacyConfig,
        BudgetsConfig,
        WindowConfig,
        ConsensusConfig,
        HealthCheck,
        NodePrivacy,
        LedgerTimeouts,
        RateBucket,
    ):
        names.update({n: _ROUTER_FIELD_NAMES.get(n, to_camel(n)) for n in model.model_fields if "_" in n})
    return re.sub(r"\b[a-z0-9]+(?:_[a-z0-9]+)+\b", lambda m: names.get(m.group(0), m.group(0)), text)


def router_rules(exc: ValidationError) -> ValueError:
    """The router config model's refusal, as a ValueError in the CRD's words."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(in_crd_words(f"{loc}: {msg}" if loc else msg))
    return ValueError("; ".join(parts))


class SecretRef(SpecModel):
    name: str = Field(..., min_length=1)


class SecretKeyRef(SecretRef):
    """A key of a Secret; each use has its own default key (the CRD spells the same)."""

    key: str = Field(..., min_length=1)


class Hs256SecretRef(SecretKeyRef):
    key: str = Field("secret", min_length=1)


class DsnSecretRef(SecretKeyRef):
    key: str = Field("dsn", min_length=1)


class AuditKeySecretRef(SecretKeyRef):
    key: str = Field("key", min_length=1)


class ApiKeySecretRef(SecretKeyRef):
    key: str = Field("api-key", min_length=1)


class HeadersSecretRef(SecretKeyRef):
    key: str = Field("headers.json", min_length=1)


# ---------------------------------------------------------------- HospitalNode


class Capacity(SpecModel):
    gpus: int = Field(0, ge=0)
    gpu_type: str = ""
    max_concurrent_requests: int = Field(32, ge=1)


class NodeTLSSpec(SpecModel):
    """mTLS towards the node: a CA Secret (key ``ca.crt``) and a client cert Secret (tls.crt/tls.key)."""

    ca_secret_ref: SecretRef | None = None
    client_cert_secret_ref: SecretRef | None = None
    server_name: str | None = None
    insecure_skip_verify: bool = False


class HealthCheckSpec(SpecModel):
    path: str = "/health"
    method: Literal["GET", "HEAD"] = "GET"
    interval_seconds: float = Field(10.0, gt=0)
    timeout_seconds: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _timeout_le_interval(self) -> HealthCheckSpec:
        if self.timeout_seconds > self.interval_seconds:
            raise ValueError("healthCheck.timeoutSeconds must not exceed healthCheck.intervalSeconds")
        try:
            self.config()
        except ValidationError as exc:
            raise router_rules(exc) from None
        return self

    def config(self) -> HealthCheck:
        """The router's health check settings for this node."""
        return HealthCheck(
            path=self.path,
            method=self.method,
            interval_seconds=self.interval_seconds,
            timeout_seconds=self.timeout_seconds,
            failure_threshold=self.failure_threshold,
        )


class DataClassName(StrEnum):
    """``spec.privacy.dataClass`` as the CRD spells it; ``.config`` is the router's value
    (members are named as ``fdp_router.config.DataClass``'s, a test keeps them equal)."""

    PHI = "PHI"
    PUBLIC = "Public"

    @property
    def config(self) -> DataClass:
        return DataClass[self.name]


class MechanismName(StrEnum):
    """``spec.privacy.mechanism`` as the CRD spells it; ``.config`` is the router's
    ``NodeMechanism`` (same member names)."""

    NONE = "None"
    PURE_DP = "PureDP"
    GAUSSIAN = "Gaussian"

    @property
    def config(self) -> NodeMechanism:
        return NodeMechanism[self.name]


PHI_NEEDS_A_MECHANISM = (
    "a PHI node must declare the DP mechanism its endpoint runs (PureDP or Gaussian); "
    "None is only for dataClass Public"
)


class NodePrivacySpec(SpecModel):
    """What the node's endpoint is: its data class and the DP mechanism it runs."""

    data_class: DataClassName
    mechanism: MechanismName = MechanismName.NONE

    @model_validator(mode="after")
    def _phi_runs_a_mechanism(self) -> NodePrivacySpec:
        if not self.config.releasable:
            raise ValueError(PHI_NEEDS_A_MECHANISM)
        return self

    @property
    def config(self) -> NodePrivacy:
        """The router's view: ``nodes[].privacy`` in the rendered config."""
        return NodePrivacy(data_class=self.data_class.config, mechanism=self.mechanism.config)


class NodeAuthSpec(SpecModel):
    """Credentials the node's server requires, from Secrets (mounted read-only into the router
    pods, and used by the operator's own probe): a bearer API key and/or extra headers."""

    api_key_secret_ref: ApiKeySecretRef | None = None
    headers_secret_ref: HeadersSecretRef | None = None


class NodeTimeoutsSpec(SpecModel):
    """Per-node timeouts; unset: the router's ``spec.routing`` values."""

    connect_seconds: float | None = Field(None, gt=0)
    read_seconds: float | None = Field(None, gt=0)
    stream_seconds: float | None = Field(None, gt=0)


API_BASE_PATH = r"^(/[A-Za-z0-9._~-]+)*$"


class HospitalNodeSpec(SpecModel):
    endpoint: str
    hospital: str = Field(..., min_length=1)
    model: str = "default"
    capacity: Capacity = Capacity()
    specializations: tuple[str, ...] = ()
    departments: tuple[str, ...] = ()
    security_level: SecurityLevel = SecurityLevel.STANDARD
    weight: float = Field(1.0, gt=0, le=1000)
    tls: NodeTLSSpec = NodeTLSSpec()
    health_check: HealthCheckSpec = HealthCheckSpec()
    privacy: NodePrivacySpec
    auth: NodeAuthSpec = NodeAuthSpec()
    api_base_path: str = Field("/v1", pattern=API_BASE_PATH)
    timeouts: NodeTimeoutsSpec = NodeTimeoutsSpec()

    @model_validator(mode="after")
    def _https(self) -> HospitalNodeSpec:
        if not self.endpoint.startswith("https://"):
            raise ValueError("endpoint must be an https:// URL")
        return self


# ---------------------------------------------------------------- PrivacyPolicy


class BudgetsSpec(SpecModel):
    per_user: float = Field(10.0, gt=0)
    per_department: float = Field(100.0, gt=0)
    per_hospital: float = Field(1000.0, gt=0)


class WindowSpec(SpecModel):
    kind: Literal["lifetime", "period"] = "lifetime"
    period: str | None = None

    @model_validator(mode="after")
    def _period(self) -> WindowSpec:
        if self.kind == "period":
            if self.period is None:
                raise ValueError("window.period is required when window.kind is 'period'")
            if parse_duration(self.period) < 60:
                raise ValueError("window.period must be at least 1m")
        elif self.period is not None:
            raise ValueError("window.period must be unset when window.kind is 'lifetime'")
        return self

    @property
    def period_seconds(self) -> int | None:
        return None if self.period is None else int(parse_duration(self.period))


class ConsensusSpec(SpecModel):
    nodes: int = Field(3, ge=2, le=32)
    min_answers: int = Field(2, ge=1)
    sigma: float = Field(2.0, gt=0)
    candidate_sets: dict[str, tuple[str, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _candidate_sets(self) -> ConsensusSpec:
        """Each set as a request's ``options`` are checked (duplicates after normalisation)."""
        for name, options in self.candidate_sets.items():
            check_options(options, f"consensus.candidateSets.{name}")
        return self


class PrivacyPolicySpec(SpecModel):
    delta: float = Field(1e-5, gt=0, le=1e-3)
    default_epsilon_per_query: float = Field(0.1, gt=0)
    max_epsilon_per_query: float = Field(1.0, gt=0)
    min_epsilon_per_query: float | None = Field(None, gt=0)
    mechanism: Mechanism = Mechanism.GAUSSIAN  # deprecated: nodes declare theirs
    budgets: BudgetsSpec = BudgetsSpec()
    window: WindowSpec = WindowSpec()
    consensus: ConsensusSpec = ConsensusSpec()

    @model_validator(mode="after")
    def _router_accepts(self) -> PrivacyPolicySpec:
        """The router's config model decides (min <= default <= max <= perUser, minAnswers
        <= nodes, ...); its budget check (``check_policy``) runs in reconcile, see guarantee.py."""
        try:
            self.config()
        except ValidationError as exc:
            raise router_rules(exc) from None
        return self

    def config(self, policy_name: str = "default") -> PrivacyConfig:
        """The router's ``privacy`` section for this policy."""
        window = (
            WindowConfig(kind="period", period_seconds=self.window.period_seconds)
            if self.window.kind == "period"
            else WindowConfig()
        )
        return PrivacyConfig(
            policy_name=policy_name,
            delta=self.delta,
            default_epsilon_per_query=self.default_epsilon_per_query,
            max_epsilon_per_query=self.max_epsilon_per_query,
            min_epsilon_per_query=self.min_epsilon_per_query,
            mechanism=self.mechanism,
            budgets=BudgetsConfig(
                per_user=self.budgets.per_user,
                per_department=self.budgets.per_department,
                per_hospital=self.budgets.per_hospital,
            ),
            window=window,
            consensus=ConsensusConfig(
                nodes=self.consensus.nodes,
                min_answers=self.consensus.min_answers,
                sigma=self.consensus.sigma,
                candidate_sets=self.consensus.candidate_sets,
            ),
        )


# ---------------------------------------------------------------- FederatedRouter


class LabelSelectorRequirement(SpecModel):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()


class LabelSelector(SpecModel):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    def to_query(self) -> str:
        """The same selector as a ``labelSelector`` query string (server-side filtering)."""
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            values = ",".join(req.values)
            parts.append(
                {
                    "In": f"{req.key} in ({values})",
                    "NotIn": f"{req.key} notin ({values})",
                    "Exists": req.key,
                    "DoesNotExist": f"!{req.key}",
                }[req.operator]
            )
        return ",".join(parts)

    def matches(self, labels: dict[str, str]) -> bool:
        """metav1.LabelSelector semantics; an empty selector matches everything."""
        if any(labels.get(k) != v for k, v in self.match_labels.items()):
            return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and not (present and labels[req.key] in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


class PolicyRef(SpecModel):
    name: str = Field(..., min_length=1)


class RoutingSpec(SpecModel):
    strategy: Strategy = (
        Strategy.QUANTUM_INSPIRED
    )  # the balancer benchmark winner (docs/benchmarks/router.md)
    max_attempts: int = Field(2, ge=1, le=10)
    connect_timeout_seconds: float = Field(2.0, gt=0)
    read_timeout_seconds: float = Field(60.0, gt=0)
    stream_timeout_seconds: float = Field(600.0, gt=0)


MAX_TOKEN_AGE_SECONDS = 30 * 86400


class AuthSpec(SpecModel):
    issuer: str = "fdp-dev"
    audience: str = "federated-dp-llm"
    algorithms: tuple[Literal["HS256", "RS256", "ES256"], ...] = ("HS256",)
    jwks_url: str | None = None
    hs256_secret_ref: Hs256SecretRef | None = None
    require_mfa: bool = False
    # the router's max_token_age_seconds; 0 here is its None (no limit beyond exp), since a
    # CRD default cannot be unset
    max_token_age_seconds: int = Field(28800, ge=0, le=MAX_TOKEN_AGE_SECONDS)

    @model_validator(mode="after")
    def _token_age(self) -> AuthSpec:
        if 0 < self.max_token_age_seconds < 60:
            raise ValueError("auth.maxTokenAgeSeconds must be 0 (no limit) or at least 60")
        return self


class RateBucketSpec(SpecModel):
    """A token bucket (the router's ``RateBucket``); both 0: no limit."""

    rate_per_second: float = Field(..., ge=0, le=1_000_000)
    burst: int = Field(..., ge=0, le=1_000_000)

    @model_validator(mode="after")
    def _router_accepts(self) -> RateBucketSpec:
        try:
            self.config()
        except ValidationError as exc:
            raise router_rules(exc) from None
        return self

    def config(self) -> RateBucket:
        return RateBucket(rate_per_second=self.rate_per_second, burst=self.burst)


def _bucket(name: str) -> Any:
    """The router's default for one bucket of ``RateLimitConfig``, as a spec."""
    b = getattr(RateLimitConfig(), name)
    return Field(default_factory=lambda: RateBucketSpec(rate_per_second=b.rate_per_second, burst=b.burst))


class RateLimitsSpec(SpecModel):
    """The router's ``rate_limits``: per-principal request limits and the brute-force lockout."""

    per_user: RateBucketSpec = _bucket("per_user")
    per_department: RateBucketSpec = _bucket("per_department")
    failed_auth_per_client: RateBucketSpec = _bucket("failed_auth_per_client")
    failed_auth_per_subject: RateBucketSpec = _bucket("failed_auth_per_subject")
    client_address_header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")

    def config(self) -> RateLimitConfig:
        return RateLimitConfig(
            per_user=self.per_user.config(),
            per_department=self.per_department.config(),
            failed_auth_per_client=self.failed_auth_per_client.config(),
            failed_auth_per_subject=self.failed_auth_per_subject.config(),
            client_address_header=self.client_address_header,
        )


QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"


class SqliteVolumeSpec(SpecModel):
    """sqlite: the PersistentVolumeClaim ``<fr>-ledger`` the operator creates once (and then
    never changes: a claim's class is immutable and growing it is the storage class's call)."""

    size: str = Field("1Gi", pattern=QUANTITY)
    storage_class_name: str | None = None
    when_deleted: Literal["Retain", "Delete"] = "Retain"


class LedgerTimeoutsSpec(SpecModel):
    """The router's ``ledger.timeouts`` (``fdp_router.config.LedgerTimeouts``), field for field."""

    connect_seconds: int = Field(2, ge=2, le=60)
    lock_seconds: float = Field(2.0, gt=0, le=60)
    statement_seconds: float = Field(3.0, gt=0, le=120)
    operation_seconds: float = Field(5.0, gt=0, le=300)

    @model_validator(mode="after")
    def _router_accepts(self) -> LedgerTimeoutsSpec:
        try:
            self.config()
        except ValidationError as exc:
            raise router_rules(exc) from None
        return self

    def config(self) -> LedgerTimeouts:
        return LedgerTimeouts(
            connect_seconds=self.connect_seconds,
            lock_seconds=self.lock_seconds,
            statement_seconds=self.statement_seconds,
            operation_seconds=self.operation_seconds,
        )


class LedgerSpec(SpecModel):
    backend: Literal["sqlite", "postgres"] = "sqlite"
    dsn_secret_ref: DsnSecretRef | None = None
    audit_key_secret_ref: AuditKeySecretRef | None = None
    commit_mode: Literal["Durable", "Deferred"] = "Deferred"  # see the CRD description (crds.py)
    sqlite: SqliteVolumeSpec = SqliteVolumeSpec()
    timeouts: LedgerTimeoutsSpec = LedgerTimeoutsSpec()

    @model_validator(mode="after")
    def _dsn(self) -> LedgerSpec:
        if self.backend == "postgres" and self.dsn_secret_ref is None:
            raise ValueError("ledger.dsnSecretRef is required when ledger.backend is 'postgres'")
        return self


class RolloutStrategy(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    BLUE_GREEN = "BlueGreen"
    CANARY = "Canary"


class PauseSpec(SpecModel):
    duration: str | None = Field(None, description="absent: pause until promoted")


class CanaryStep(SpecModel):
    set_weight: int | None = Field(None, ge=0, le=100)
    pause: PauseSpec | None = None

    @model_validator(mode="after")
    def _one_of(self) -> CanaryStep:
        if (self.set_weight is None) == (self.pause is None):
            raise ValueError("each rollout step sets exactly one of setWeight or pause")
        return self


class AnalysisSpec(SpecModel):
    prometheus_url: str | None = None
    max_error_rate: float = Field(0.05, ge=0, le=1)


class RolloutSpec(SpecModel):
    """Progressive delivery settings; the rollout engine (rollout/) interprets them."""

    strategy: RolloutStrategy = RolloutStrategy.ROLLING_UPDATE
    preview_replicas: int | None = Field(None, ge=1)
    auto_promotion_enabled: bool = True
    auto_promotion_seconds: int | None = Field(None, ge=0)
    scale_down_delay_seconds: int = Field(30, ge=0)
    progress_deadline_seconds: int = Field(600, ge=1)
    paused: bool = False
    steps: tuple[CanaryStep, ...] = ()
    analysis: AnalysisSpec | None = None

    @model_validator(mode="after")
    def _weights_increase(self) -> RolloutSpec:
        weights = [s.set_weight for s in self.steps if s.set_weight is not None]
        if weights != sorted(weights):
            raise ValueError("rollout.steps setWeight values must not decrease")
        return self


class AutoscalingSpec(SpecModel):
    enabled: bool = False
    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(3, ge=1)
    # "CPU", as the CRD and autoscaling/v1 spell it (to_camel would give "Cpu")
    target_cpu_utilization_percentage: int | None = Field(
        70, ge=1, le=100, alias="targetCPUUtilizationPercentage"
    )
    target_memory_utilization_percentage: int | None = Field(None, ge=1, le=100)
    behavior: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoscalingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("autoscaling.maxReplicas must be >= autoscaling.minReplicas")
        return self


class RouterTLSSpec(SpecModel):
    """Operator-managed CA (default) or an existing Secret (e.g. from cert-manager)."""

    secret_name: str | None = None
    duration: str = "2160h"
    renew_before: str = "360h"

    @model_validator(mode="after")
    def _durations(self) -> RouterTLSSpec:
        if parse_duration(self.renew_before) >= parse_duration(self.duration):
            raise ValueError("tls.renewBefore must be shorter than tls.duration")
        return self

    @property
    def duration_seconds(self) -> float:
        return parse_duration(self.duration)

    @property
    def renew_before_seconds(self) -> float:
        return parse_duration(self.renew_before)


class ServiceSpec(SpecModel):
    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(443, ge=1, le=65535)
    annotations: dict[str, str] = Field(default_factory=dict)


class NetworkPolicySpec(SpecModel):
    enabled: bool = True
    ingress_from: tuple[dict[str, Any], ...] = Field(
        (),
        description="NetworkPolicyPeer objects allowed to reach the router; empty: the operator's "
        "default (chart value routerNetworkPolicy.defaultIngressFrom: the router's own namespace)",
    )
    extra_egress: tuple[dict[str, Any], ...] = Field(
        (), description="NetworkPolicyEgressRule objects allowed besides nodes, DNS, JWKS and the ledger"
    )


# Patterns in RE2 without backslashes, so that the CRD's CEL rules can quote them as written.
#: a DNS subdomain (RFC 1123), as Kubernetes spells object names such as a PriorityClass's
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: a label key: an optional DNS-subdomain prefix and '/', then a name of 1-63 characters
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
#: a label value: empty, or 1-63 alphanumerics with '-', '_' or '.' inside
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
MAX_NODE_SELECTOR_LABELS = 64
MAX_TOLERATIONS = 64
MAX_SPREAD_CONSTRAINTS = 16
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
#: a label key's DNS prefix is at most 253 characters (317 bounds only the whole key)
LABEL_PREFIX_MAX = 253


def _label_key_prefix(key: str) -> str:
    prefix, slash, _ = key.rpartition("/")
    if slash and len(prefix) > LABEL_PREFIX_MAX:
        raise ValueError(
            f"{key[:40]!r}…: a label key's prefix (before '/') is at most {LABEL_PREFIX_MAX} characters"
        )
    return key


#: a label key, checked as the API server checks one (apimachinery IsQualifiedName)
LabelKey = Annotated[
    str, Field(min_length=1, max_length=317, pattern=LABEL_KEY), AfterValidator(_label_key_prefix)
]
TOLERATION_EXISTS_NO_VALUE = "must be empty when operator is Exists (Exists matches any value)"
TOLERATION_NO_KEY_NEEDS_EXISTS = (
    "a toleration without a key must have operator Exists (it then tolerates every taint)"
)
TOLERATION_SECONDS_NEED_NO_EXECUTE = "is only allowed with effect NoExecute"
MIN_DOMAINS_NEED_DO_NOT_SCHEDULE = "is only allowed with whenUnsatisfiable DoNotSchedule"


class Toleration(SpecModel):
    """core/v1 Toleration, checked as the API server checks a pod's."""

    key: Annotated[str, AfterValidator(_label_key_prefix)] | None = Field(
        None, max_length=317, pattern=r"^$|" + LABEL_KEY
    )
    # declared before value: value's check reads it
    operator: Literal["Exists", "Equal"] | None = None
    value: LabelValue | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] | None = None
    toleration_seconds: int | None = None

    @field_validator("value")
    @classmethod
    def _exists_has_no_value(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and info.data.get("operator") == "Exists":
            raise ValueError(TOLERATION_EXISTS_NO_VALUE)
        return value

    @field_validator("toleration_seconds")
    @classmethod
    def _seconds_need_no_execute(cls, seconds: int | None, info: ValidationInfo) -> int | None:
        if seconds is not None and info.data.get("effect") != "NoExecute":
            raise ValueError(TOLERATION_SECONDS_NEED_NO_EXECUTE)
        return seconds

    @model_validator(mode="after")
    def _no_key_means_exists(self) -> Toleration:
        if not self.key and self.operator != "Exists":
            raise ValueError(TOLERATION_NO_KEY_NEEDS_EXISTS)
        return self


class PodLabelSelectorRequirement(LabelSelectorRequirement):
    key: LabelKey
    values: tuple[LabelValue, ...] = ()


class PodLabelSelector(LabelSelector):
    """A metav1.LabelSelector over pods; keys and values as the API server wants them."""

    match_labels: dict[LabelKey, LabelValue] = Field(default_factory=dict)
    match_expressions: tuple[PodLabelSelectorRequirement, ...] = ()

    @model_validator(mode="after")
    def _values(self) -> PodLabelSelector:
        for i, req in enumerate(self.match_expressions):
            if req.operator in ("In", "NotIn") and not req.values:
                raise ValueError(
                    f"matchExpressions.{i}.values must be non-empty with operator {req.operator}"
                )
            if req.operator in ("Exists", "DoesNotExist") and req.values:
                raise ValueError(f"matchExpressions.{i}.values must be empty with operator {req.operator}")
        return self


class TopologySpreadConstraint(SpecModel):
    """core/v1 TopologySpreadConstraint; an absent labelSelector selects this router's pods."""

    max_skew: int = Field(..., ge=1)
    topology_key: LabelKey
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    label_selector: PodLabelSelector | None = None
    min_domains: int | None = Field(None, ge=1)
    match_label_keys: tuple[LabelKey, ...] = ()
    node_affinity_policy: Literal["Honor", "Ignore"] | None = None
    node_taints_policy: Literal["Honor", "Ignore"] | None = None

    @model_validator(mode="after")
    def _min_domains(self) -> TopologySpreadConstraint:
        if self.min_domains is not None and self.when_unsatisfiable != "DoNotSchedule":
            raise ValueError(f"minDomains {MIN_DOMAINS_NEED_DO_NOT_SCHEDULE}")
        return self


class AffinitySpec(SpecModel):
    """core/v1 Affinity: the three kinds are named here (a misspelt one is refused); what is
    inside each is passed through as written and validated by the API server."""

    node_affinity: dict[str, Any] | None = None
    pod_affinity: dict[str, Any] | None = None
    pod_anti_affinity: dict[str, Any] | None = None


class SchedulingSpec(SpecModel):
    """Where the router pods run; copied onto every router pod template (each color/track)."""

    node_selector: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, max_length=MAX_NODE_SELECTOR_LABELS
    )
    tolerations: tuple[Toleration, ...] = Field((), max_length=MAX_TOLERATIONS)
    affinity: AffinitySpec | None = None
    priority_class_name: str | None = Field(None, min_length=1, max_length=253)
    topology_spread_constraints: tuple[TopologySpreadConstraint, ...] = Field(
        (), max_length=MAX_SPREAD_CONSTRAINTS
    )

    @field_validator("priority_class_name")
    @classmethod
    def _dns_subdomain(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(DNS_SUBDOMAIN, name):
            raise ValueError(
                f"{name!r} is not a PriorityClass name: a DNS subdomain (lowercase letters, digits, "
                "'-' and '.', starting and ending with a letter or digit)"
            )
        return name

    @field_validator("topology_spread_constraints")
    @classmethod
    def _one_per_key_and_action(
        cls, constraints: tuple[TopologySpreadConstraint, ...]
    ) -> tuple[TopologySpreadConstraint, ...]:
        seen: set[tuple[str, str]] = set()
        for i, c in enumerate(constraints):
            pair = (c.topology_key, c.when_unsatisfiable)
            if pair in seen:
                raise ValueError(
                    f"[{i}] repeats topologyKey {c.topology_key!r} with whenUnsatisfiable "
                    f"{c.when_unsatisfiable} (one constraint per pair)"
                )
            seen.add(pair)
        return constraints


class FederatedRouterSpec(SpecModel):
    image: str = DEFAULT_ROUTER_IMAGE
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    replicas: int = Field(1, ge=0)
    resources: dict[str, Any] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"memory": "512Mi"},
        }
    )
    policy_ref: PolicyRef
    node_selector: LabelSelector = LabelSelector()
    routing: RoutingSpec = RoutingSpec()
    auth: AuthSpec = AuthSpec()
    rate_limits: RateLimitsSpec = RateLimitsSpec()
    ledger: LedgerSpec = LedgerSpec()
    rollout: RolloutSpec = RolloutSpec()
    autoscaling: AutoscalingSpec = AutoscalingSpec()
    tls: RouterTLSSpec = RouterTLSSpec()
    service: ServiceSpec = ServiceSpec()
    network_policy: NetworkPolicySpec = NetworkPolicySpec()
    scheduling: SchedulingSpec = SchedulingSpec()

    @model_validator(mode="after")
    def _sqlite_single_pod(self) -> FederatedRouterSpec:
        """One SQLite file on one claim: never two pods on it (the same words as the CRD's rules)."""
        if self.ledger.backend != "sqlite":
            return self
        if self.replicas > 1:
            raise ValueError(SQLITE_ONE_REPLICA)
        if self.autoscaling.enabled:
            raise ValueError(SQLITE_NO_AUTOSCALING)
        if self.rollout.strategy != RolloutStrategy.ROLLING_UPDATE:
            raise ValueError(SQLITE_NO_PROGRESSIVE)
        return self


SQLITE_ONE_REPLICA = (
    "ledger.backend 'sqlite' allows one router replica: the ledger is one file on one "
    "PersistentVolumeClaim, and a second pod would need the same file (use 'postgres' for "
    "replicas > 1)"
)
SQLITE_NO_AUTOSCALING = (
    "ledger.backend 'sqlite' cannot autoscale: a second pod would need the same ledger file "
    "(use 'postgres' with autoscaling)"
)
SQLITE_NO_PROGRESSIVE = (
    "ledger.backend 'sqlite' needs rollout.strategy RollingUpdate (run as Recreate: the old pod "
    "stops before the new one starts); BlueGreen and Canary run two versions side by side, which "
    "would both need the one ledger file (use 'postgres')"
)


# ---------------------------------------------------------------- parsed CRs


@dataclass(frozen=True)
class Ref:
    namespace: str
    name: str
    uid: str = ""
    generation: int = 0


@dataclass(frozen=True)
class FederatedRouter:
    ref: Ref
    spec: FederatedRouterSpec
    annotations: tuple[tuple[str, str], ...] = ()

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True)
class PrivacyPolicy:
    ref: Ref
    spec: PrivacyPolicySpec


@dataclass(frozen=True)
class HospitalNode:
    ref: Ref
    spec: HospitalNodeSpec
    labels: tuple[tuple[str, str], ...] = ()
    healthy: bool = True


class SpecError(ValueError):
    """A spec the models reject; the message names the field(s) and why."""


def describe(exc: ValidationError) -> str:
    """One line per error: ``spec.field.path: reason``."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"spec.{loc}: {msg}" if loc else f"spec: {msg}")
    return "; ".join(parts)


def _ref(meta: dict[str, Any]) -> Ref:
    return Ref(
        namespace=str(meta.get("namespace", "")),
        name=str(meta["name"]),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation", 0) or 0),
    )


def parse_router(body: dict[str, Any]) -> FederatedRouter:
    try:
        spec = FederatedRouterSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise SpecError(describe(exc)) from None
    meta = body.get("metadata") or {}
    ann = tuple(sorted((meta.get("annotations") or {}).items()))
    return FederatedRouter(ref=_ref(meta), spec=spec, annotations=ann)


def parse_policy(body: dict[str, Any]) -> PrivacyPolicy:
    try:
        spec = PrivacyPolicySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise SpecError(describe(exc)) from None
    return PrivacyPolicy(ref=_ref(body.get("metadata") or {}), spec=spec)


def parse_node(body: dict[str, Any], *, healthy: bool = True) -> HospitalNode:
    try:
        spec = HospitalNodeSpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise SpecError(describe(exc)) from None
    meta = body.get("metadata") or {}
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    return HospitalNode(ref=_ref(meta), spec=spec, labels=labels, healthy=healthy)
