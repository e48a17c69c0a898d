"""The three CustomResourceDefinitions, built from this one Python source of truth.

``python -m fdp_operator.crds --write`` regenerates ``crds/*.yaml`` and the Helm chart's
copy (``charts/federated-dp-llm/crds/``); a unit test fails when either drifts from
``all_crds()``. Schemas are structural with defaults (so kubectl explain and server-side
apply see every field), and CEL ``x-kubernetes-validations`` reject bad specs at apply time
with a message a person understands. Pure: only builds dicts and text; ``crds_write.py``
writes the files.
"""

from __future__ import annotations

from typing import Any

import yaml
from fdp_router.config import MAX_OPTION_LENGTH, MAX_OPTIONS, Mechanism, RateLimitConfig, Strategy

from fdp_operator.models import (
    ALLOW_MOUNT_LABEL,
    API_BASE_PATH,
    DEFAULT_ROUTER_IMAGE,
    DNS_SUBDOMAIN,
    GROUP,
    LABEL_KEY,
    LABEL_VALUE,
    MAX_NODE_SELECTOR_LABELS,
    MAX_SPREAD_CONSTRAINTS,
    MAX_TOKEN_AGE_SECONDS,
    MAX_TOLERATIONS,
    MIN_DOMAINS_NEED_DO_NOT_SCHEDULE,
    PHI_NEEDS_A_MECHANISM,
    QUANTITY,
    SQLITE_NO_AUTOSCALING,
    SQLITE_NO_PROGRESSIVE,
    SQLITE_ONE_REPLICA,
    TOLERATION_EXISTS_NO_VALUE,
    TOLERATION_NO_KEY_NEEDS_EXISTS,
    TOLERATION_SECONDS_NEED_NO_EXECUTE,
    VERSION,
    DataClassName,
    MechanismName,
)

Schema = dict[str, Any]

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"
CATEGORIES = ["fdp"]


def _s(desc: str, **kw: Any) -> Schema:
    return {"type": "string", "description": desc, **kw}


def _i(desc: str, **kw: Any) -> Schema:
    return {"type": "integer", "description": desc, **kw}


def _n(desc: str, **kw: Any) -> Schema:
    return {"type": "number", "description": desc, **kw}


def _b(desc: str, default: bool) -> Schema:
    return {"type": "boolean", "description": desc, "default": default}


def _filled_default(props: dict[str, Schema]) -> dict[str, Any]:
    """The object default spelled out (CEL rules are checked against defaults, unfilled)."""
    return {k: v["default"] for k, v in props.items() if "default" in v}


def _obj(desc: str, props: dict[str, Schema], **kw: Any) -> Schema:
    required = kw.pop("required", None)
    if kw.get("default") == {}:
        kw["default"] = _filled_default(props)
    out: Schema = {"type": "object", "description": desc, "properties": props, **kw}
    if required:
        out["required"] = required
    return out


def _rule(rule: str, message: str, **kw: Any) -> dict[str, str]:
    return {"rule": rule, "message": message, **kw}


def _strings(desc: str) -> Schema:
    return {
        "type": "array",
        "description": desc,
        "items": {"type": "string"},
        "x-kubernetes-list-type": "set",
    }


OPT_IN = f'; the Secret must carry the label {ALLOW_MOUNT_LABEL}: "true" (its owner opts in)'


def _secret_ref(desc: str, *, key: str | None = None) -> Schema:
    props: dict[str, Schema] = {"name": _s("Secret name (same namespace)", minLength=1)}
    required = ["name"]
    if key is not None:
        props["key"] = _s("key inside the Secret", default=key, minLength=1)
    return _obj(desc, props, required=required)


_CONDITIONS: Schema = {
    "type": "array",
    "description": "metav1.Condition list keyed by type (Ready, Reconciling, Stalled, ...)",
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
    "items": {
        "type": "object",
        "required": ["type", "status", "lastTransitionTime", "reason", "message"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
        },
    },
}


def _status(props: dict[str, Schema]) -> Schema:
    return _obj(
        "observed state, written by the operator only",
        {
            "observedGeneration": _i("metadata.generation the status describes", format="int64"),
            "conditions": _CONDITIONS,
            **props,
        },
    )


# ---------------------------------------------------------------- HospitalNode

HOSPITAL_NODE_SPEC = _obj(
    "one hospital's OpenAI-compatible LLM endpoint",
    {
        "endpoint": _s("base URL of the node's OpenAI-compatible API; must be https", maxLength=2048),
        "hospital": _s(
            "hospital (data source) the node belongs to; budgets per hospital use it", minLength=1
        ),
        "model": _s("model name sent to the node", default="default"),
        "capacity": _obj(
            "hardware and concurrency limits",
            {
                "gpus": _i("number of GPUs", minimum=0, default=0),
                "gpuType": _s("GPU model, informational", default=""),
                "maxConcurrentRequests": _i("requests the router sends at once", minimum=1, default=32),
            },
            default={},
        ),
        "specializations": _strings("clinical specializations served (e.g. cardiology)"),
        "departments": _strings("departments allowed to use the node; empty: all"),
        "securityLevel": _s(
            "data classification the node is cleared for",
            enum=["standard", "high", "critical"],
            default="standard",
        ),
        "weight": _n("relative weight for balancing", default=1.0),
        "tls": _obj(
            "mTLS towards the node",
            {
                "caSecretRef": _secret_ref("Secret whose ca.crt verifies the node's certificate" + OPT_IN),
                "clientCertSecretRef": _secret_ref(
                    "Secret (tls.crt, tls.key) presented as client certificate" + OPT_IN
                ),
                "serverName": _s("TLS server name to verify instead of the endpoint's host"),
                "insecureSkipVerify": _b("demo only: do not verify the node certificate", False),
            },
            default={},
        ),
        "healthCheck": _obj(
            "how the operator probes the node",
            {
                "path": _s(
                    "health path under the endpoint (not under apiBasePath); 2xx means healthy. Servers "
                    "that protect /health or make it expensive: /v1/models with auth",
                    default="/health",
                    pattern="^/",
                ),
                "method": _s(
                    "GET, or HEAD for servers that answer it cheaply", enum=["GET", "HEAD"], default="GET"
                ),
                "intervalSeconds": _n("seconds between probes", default=10, minimum=0.2),
                "timeoutSeconds": _n("probe timeout in seconds", default=2, minimum=0.1),
                "failureThreshold": _i(
                    "consecutive failures before the node is not Ready (each router, probing it "
                    "itself, then sends it nothing)",
                    default=3,
                    minimum=1,
                ),
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.timeoutSeconds <= self.intervalSeconds",
                        "healthCheck.timeoutSeconds must not exceed healthCheck.intervalSeconds",
                    )
                ]
            },
        ),
        "auth": _obj(
            "credentials the node's server requires (an OpenAI-compatible gateway's API key, extra "
            "headers): mounted read-only into the router pods, sent only to this node, and used by the "
            "operator's health probe",
            {
                "apiKeySecretRef": _secret_ref(
                    "Secret key holding an API key, sent as 'Authorization: Bearer <key>'" + OPT_IN,
                    key="api-key",
                ),
                "headersSecretRef": _secret_ref(
                    "Secret key holding a JSON object of extra request headers, e.g. "
                    '{"api-key": "..."} for Azure-style gateways' + OPT_IN,
                    key="headers.json",
                ),
            },
            default={},
        ),
        "apiBasePath": _s(
            "path of the OpenAI-compatible API under the endpoint (/v1 for vLLM, TGI, Ollama, "
            "llama.cpp, LiteLLM; empty: the endpoint itself)",
            default="/v1",
            pattern=API_BASE_PATH,
            maxLength=256,
        ),
        "timeouts": _obj(
            "timeouts of requests to this node; unset: the router's spec.routing values",
            {
                "connectSeconds": _n("TCP+TLS connect timeout in seconds", exclusiveMinimum=True, minimum=0),
                "readSeconds": _n(
                    "longest wait for the node's next bytes in seconds: a whole answer's time to "
                    "answer (a slow model needs more), a stream's gap between chunks",
                    exclusiveMinimum=True,
                    minimum=0,
                ),
                "streamSeconds": _n(
                    "longest time a streamed answer is relayed from this node, counted from the "
                    "router's first read of its body (right after the spend is committed); a node that "
                    "keeps sending, or a client that stops reading, is cut here (stream_broken)",
                    exclusiveMinimum=True,
                    minimum=0,
                ),
            },
            default={},
        ),
        "privacy": _obj(
            "what the endpoint is: the data its answers come from and the DP mechanism it runs "
            "(docs/privacy.md, the contract a hospital implements)",
            {
                "dataClass": _s(
                    "PHI: answers from patient data, released only through the node's DP mechanism "
                    "at the ε the router reserved; Public: no patient data (e.g. a general medical "
                    "model), answers cost no ε",
                    enum=[d.value for d in DataClassName],
                ),
                "mechanism": _s(
                    "the DP mechanism the endpoint runs, calibrated to the (ε, δ) the router sends: "
                    "PureDP (any ε-DP mechanism, δ = 0), Gaussian (Gaussian noise on an "
                    "L2-sensitivity-1 query at the analytic sigma for (ε, δ)), None (no mechanism: only "
                    "for dataClass Public)",
                    enum=[m.value for m in MechanismName],
                    default=MechanismName.NONE.value,
                ),
            },
            required=["dataClass"],
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.dataClass != 'PHI' || (has(self.mechanism) && self.mechanism != 'None')",
                        PHI_NEEDS_A_MECHANISM,
                        fieldPath=".mechanism",
                    )
                ]
            },
        ),
    },
    required=["endpoint", "hospital", "privacy"],
    **{
        "x-kubernetes-validations": [
            _rule(
                "self.endpoint.startsWith('https://') && isURL(self.endpoint)"
                " && url(self.endpoint).getHostname() != ''",
                "spec.endpoint must be an https:// URL (hospital traffic is always encrypted)",
                fieldPath=".endpoint",
            ),
            _rule("self.weight > 0.0 && self.weight <= 1000.0", "spec.weight must be in (0, 1000]"),
        ]
    },
)

HOSPITAL_NODE_STATUS = _status(
    {
        "lastProbeTime": _s("when the operator last probed the node", format="date-time"),
        "latencyMs": _n("latency of the last successful probe in milliseconds"),
        "consecutiveFailures": _i("failed probes in a row", minimum=0),
        "lastError": _s("error of the last failed probe"),
        "usedBy": _strings("FederatedRouters whose config includes this node"),
    }
)

# ---------------------------------------------------------------- PrivacyPolicy

POSITIVE = "self > 0.0"
MAX_CANDIDATE_SETS = 64
CANDIDATE_SET_NAME = r"^[a-z0-9]([-_a-z0-9]{0,61}[a-z0-9])?$"

CANDIDATE_SETS: Schema = {
    "type": "object",
    "description": "named public candidate answers (e.g. triage: [Admit to ICU, Admit to ward, "
    "Discharge with follow-up]); a consensus request names a set instead of sending its options. "
    f"Each set has 2 to {MAX_OPTIONS} options of 1 to {MAX_OPTION_LENGTH} characters; options equal "
    "after normalisation (Unicode NFKC, case, spaces, trailing punctuation) are refused by the "
    "operator (Ready=False)",
    "maxProperties": MAX_CANDIDATE_SETS,
    "additionalProperties": {
        "type": "array",
        "items": {"type": "string", "minLength": 1, "maxLength": MAX_OPTION_LENGTH},
        "minItems": 2,
        "maxItems": MAX_OPTIONS,
        "x-kubernetes-list-type": "set",
    },
    "x-kubernetes-validations": [
        _rule(
            f"self.all(name, name.matches('{CANDIDATE_SET_NAME}'))",
            "consensus.candidateSets names are 1-63 lowercase letters, digits, '-' or '_' "
            "(a request names the set)",
        ),
        _rule(
            "self.all(name, self[name].all(option, option.trim() != ''))",
            "consensus.candidateSets options must not be blank",
        ),
    ],
}

PRIVACY_POLICY_SPEC = _obj(
    "the differential-privacy contract a router enforces",
    {
        "delta": _n("δ of the (ε, δ)-DP guarantee, in (0, 1e-3]", default=1e-5),
        "defaultEpsilonPerQuery": _n("ε charged when a request does not say", default=0.1),
        "maxEpsilonPerQuery": _n("largest ε one request may spend", default=1.0),
        "minEpsilonPerQuery": _n(
            "smallest ε a request may ask for (below: 400); unset: defaultEpsilonPerQuery"
        ),
        "mechanism": _s(
            "deprecated: each HospitalNode declares the mechanism its endpoint runs "
            "(spec.privacy.mechanism); kept so that existing policies still apply",
            enum=[m.value for m in Mechanism],
            default=Mechanism.GAUSSIAN.value,
        ),
        "budgets": _obj(
            "total ε per privacy unit; a request must fit all three",
            {
                "perUser": _n("ε per user per window", default=10.0),
                "perDepartment": _n("ε per department per window", default=100.0),
                "perHospital": _n("ε per hospital (data source) per window", default=1000.0),
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.perUser > 0.0 && self.perDepartment > 0.0 && self.perHospital > 0.0",
                        "every budget (perUser, perDepartment, perHospital) must be > 0",
                    )
                ]
            },
        ),
        "window": _obj(
            "when spent budget refreshes: never (lifetime) or every period",
            {
                "kind": _s("lifetime or period", enum=["lifetime", "period"], default="lifetime"),
                "period": _s("window length as a duration, e.g. 24h (kind=period)", pattern=DURATION_PATTERN),
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.kind == 'period' ? has(self.period) && duration(self.period) >= duration('1m')"
                        " : !has(self.period)",
                        "window.period (at least 1m) is required when window.kind is 'period'"
                        " and must be unset when it is 'lifetime'",
                    )
                ]
            },
        ),
        "consensus": _obj(
            "DP consensus over public candidate answers (PATE GNMax, one vote per hospital)",
            {
                "nodes": _i("hospitals to ask (one node each)", minimum=2, maximum=32, default=3),
                "minAnswers": _i("fewer hospitals answering: error, nothing charged", minimum=1, default=2),
                "sigma": _n(
                    "std-dev of the discrete Gaussian noise on each option's vote count", default=2.0
                ),
                "candidateSets": CANDIDATE_SETS,
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule("self.minAnswers <= self.nodes", "consensus.minAnswers must be <= consensus.nodes"),
                    _rule("self.sigma > 0.0", "consensus.sigma must be > 0"),
                ]
            },
        ),
    },
    **{
        "x-kubernetes-validations": [
            _rule("self.delta > 0.0 && self.delta <= 0.001", "spec.delta must be in (0, 1e-3]"),
            _rule(
                "self.defaultEpsilonPerQuery > 0.0 && self.maxEpsilonPerQuery > 0.0",
                "epsilon must be > 0 (defaultEpsilonPerQuery and maxEpsilonPerQuery)",
            ),
            _rule(
                "self.defaultEpsilonPerQuery <= self.maxEpsilonPerQuery",
                "spec.defaultEpsilonPerQuery must be <= spec.maxEpsilonPerQuery",
            ),
            _rule(
                "!has(self.minEpsilonPerQuery) || (self.minEpsilonPerQuery > 0.0"
                " && self.minEpsilonPerQuery <= self.defaultEpsilonPerQuery)",
                "spec.minEpsilonPerQuery must be > 0 and <= spec.defaultEpsilonPerQuery",
                fieldPath=".minEpsilonPerQuery",
            ),
            _rule(
                "self.maxEpsilonPerQuery <= self.budgets.perUser",
                "spec.maxEpsilonPerQuery must be <= spec.budgets.perUser (one query could not fit otherwise)",
            ),
        ]
    },
)

PRIVACY_POLICY_STATUS = _status(
    {
        "guarantee": _s("the guarantee this policy gives, in words"),
        "protects": _s("what one unit of the guarantee is (a patient record, a hospital's data)"),
        "epsilonPerUser": _n("ε per user per window"),
        "delta": _n("δ"),
        "usedBy": _strings("FederatedRouters that reference this policy"),
    }
)

# ---------------------------------------------------------------- FederatedRouter


def _bucket(desc: str, field: str) -> Schema:
    """A token bucket with the router's default for ``RateLimitConfig.<field>``."""
    default = getattr(RateLimitConfig(), field)
    return _obj(
        f"{desc} (default {default.rate_per_second:g}/s, burst {default.burst}); "
        "ratePerSecond and burst both 0: no limit",
        {
            "ratePerSecond": _n("average requests per second", minimum=0, maximum=1_000_000),
            "burst": _i("requests at once", minimum=0, maximum=1_000_000),
        },
        required=["ratePerSecond", "burst"],
        default={"ratePerSecond": default.rate_per_second, "burst": default.burst},
        **{
            "x-kubernetes-validations": [
                _rule(
                    "(self.ratePerSecond > 0.0) == (self.burst > 0)",
                    "ratePerSecond and burst are both 0 (no limit) or both > 0",
                )
            ]
        },
    )


_LABEL_SELECTOR = _obj(
    "label selector over HospitalNodes in the namespace; empty selects all",
    {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": _obj(
                "a label requirement",
                {
                    "key": _s("label key"),
                    "operator": _s(
                        "In, NotIn, Exists, DoesNotExist", enum=["In", "NotIn", "Exists", "DoesNotExist"]
                    ),
                    "values": {"type": "array", "items": {"type": "string"}},
                },
                required=["key", "operator"],
            ),
        },
    },
    default={},
    **{"x-kubernetes-map-type": "atomic"},
)

_STEP = _obj(
    "a canary step: exactly one of setWeight or pause",
    {
        "setWeight": _i("percentage of replicas on the canary", minimum=0, maximum=100),
        "pause": _obj(
            "wait before the next step",
            {"duration": _s("how long; absent: until promoted", pattern=DURATION_PATTERN)},
        ),
    },
    **{
        "x-kubernetes-validations": [
            _rule(
                "has(self.setWeight) != has(self.pause)",
                "each rollout step sets exactly one of setWeight or pause",
            )
        ]
    },
)

ROLLOUT = _obj(
    "how a change to the pod template reaches traffic (interpreted by the rollout engine)",
    {
        "strategy": _s(
            "RollingUpdate (one Deployment), BlueGreen or Canary",
            enum=["RollingUpdate", "BlueGreen", "Canary"],
            default="RollingUpdate",
        ),
        "previewReplicas": _i("BlueGreen: replicas of the preview color (default: spec.replicas)", minimum=1),
        "autoPromotionEnabled": _b("BlueGreen: promote as soon as the preview is Available", True),
        "autoPromotionSeconds": _i("BlueGreen: wait this long after Available before promoting", minimum=0),
        "scaleDownDelaySeconds": _i("seconds before the old color scales down", minimum=0, default=30),
        "progressDeadlineSeconds": _i(
            "seconds a new revision may take to become Available before automatic rollback",
            minimum=1,
            default=600,
        ),
        "paused": _b("pause the rollout where it is (a user intent)", False),
        "steps": {"type": "array", "description": "Canary steps, in order", "items": _STEP, "maxItems": 50},
        "analysis": _obj(
            "Canary: checks between steps",
            {
                "prometheusUrl": _s("Prometheus base URL; when set the router's error rate is checked"),
                "maxErrorRate": _n("highest tolerated error rate of the canary, 0-1", default=0.05),
            },
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.maxErrorRate >= 0.0 && self.maxErrorRate <= 1.0",
                        "rollout.analysis.maxErrorRate must be in [0, 1]",
                    ),
                    _rule(
                        "!has(self.prometheusUrl) || isURL(self.prometheusUrl)",
                        "rollout.analysis.prometheusUrl must be a URL",
                    ),
                ]
            },
        ),
    },
    default={},
    **{
        "x-kubernetes-validations": [
            _rule(
                "!has(self.steps) || self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()",
                "canary setWeight values must be 0-100 and must not decrease from step to step",
            ),
            _rule(
                "!has(self.steps) || size(self.steps) == 0 || self.strategy == 'Canary'",
                "rollout.steps are only allowed with strategy Canary",
            ),
        ]
    },
)

LABEL_KEY_MAX = 317  # a 253-character prefix, '/', a 63-character name
_MAX_EXPRESSIONS = 32
_MAX_VALUES = 64


def _preserved(desc: str) -> Schema:
    return {"type": "object", "description": desc, "x-kubernetes-preserve-unknown-fields": True}


_POD_LABEL_SELECTOR = _obj(
    "the pods this constraint counts (metav1.LabelSelector); absent: this router's own pods, every "
    "color and track together (app.kubernetes.io/name: fdp-router, app.kubernetes.io/instance: "
    "<router>, the labels the operator puts on them)",
    {
        "matchLabels": {
            "type": "object",
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
            "maxProperties": MAX_NODE_SELECTOR_LABELS,
            "x-kubernetes-validations": [
                _rule(
                    f"self.all(k, size(k) <= {LABEL_KEY_MAX} && k.matches('{LABEL_KEY}'))",
                    "labelSelector.matchLabels keys must be label keys ([prefix/]name, the name 1-63 "
                    "characters)",
                )
            ],
        },
        "matchExpressions": {
            "type": "array",
            "maxItems": _MAX_EXPRESSIONS,
            "items": _obj(
                "a label requirement",
                {
                    "key": _s("label key", minLength=1, maxLength=LABEL_KEY_MAX, pattern=LABEL_KEY),
                    "operator": _s(
                        "In, NotIn, Exists, DoesNotExist", enum=["In", "NotIn", "Exists", "DoesNotExist"]
                    ),
                    "values": {
                        "type": "array",
                        "items": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
                        "maxItems": _MAX_VALUES,
                    },
                },
                required=["key", "operator"],
                **{
                    "x-kubernetes-validations": [
                        _rule(
                            "self.operator in ['In', 'NotIn'] ? has(self.values) && size(self.values) > 0"
                            " : !has(self.values) || size(self.values) == 0",
                            "values must be non-empty with operator In or NotIn and empty with Exists "
                            "or DoesNotExist",
                            fieldPath=".values",
                        )
                    ]
                },
            ),
        },
    },
    **{"x-kubernetes-map-type": "atomic"},
)

_TOLERATION = _obj(
    "a core/v1 Toleration",
    {
        "key": _s(
            "the taint key; empty (with operator Exists): every taint",
            maxLength=LABEL_KEY_MAX,
            pattern=f"^$|{LABEL_KEY}",
        ),
        "operator": _s("Equal (the default when absent) or Exists", enum=["Exists", "Equal"]),
        "value": _s("the taint value (operator Equal)", maxLength=63, pattern=LABEL_VALUE),
        "effect": _s(
            "the taint effect to match; empty: every effect",
            enum=["NoSchedule", "PreferNoSchedule", "NoExecute", ""],
        ),
        "tolerationSeconds": _i(
            "NoExecute: how long the pod stays bound after the taint appears; absent: forever",
            format="int64",
        ),
    },
    **{
        "x-kubernetes-validations": [
            _rule(
                "!has(self.value) || self.value == '' || !has(self.operator) || self.operator != 'Exists'",
                f"scheduling.tolerations[].value {TOLERATION_EXISTS_NO_VALUE}",
                fieldPath=".value",
            ),
            _rule(
                "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
                f"scheduling.tolerations[]: {TOLERATION_NO_KEY_NEEDS_EXISTS}",
            ),
            _rule(
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                f"scheduling.tolerations[].tolerationSeconds {TOLERATION_SECONDS_NEED_NO_EXECUTE}",
                fieldPath=".tolerationSeconds",
            ),
        ]
    },
)

_SPREAD_CONSTRAINT = _obj(
    "a core/v1 TopologySpreadConstraint",
    {
        "maxSkew": _i("largest allowed difference of matching pods between two domains", minimum=1),
        "topologyKey": _s(
            "node label whose values are the domains (e.g. topology.kubernetes.io/zone, "
            "kubernetes.io/hostname)",
            minLength=1,
            maxLength=LABEL_KEY_MAX,
            pattern=LABEL_KEY,
        ),
        "whenUnsatisfiable": _s(
            "DoNotSchedule (a hard rule: pods stay Pending) or ScheduleAnyway (a preference)",
            enum=["DoNotSchedule", "ScheduleAnyway"],
        ),
        "labelSelector": _POD_LABEL_SELECTOR,
        "minDomains": _i("DoNotSchedule: fewer eligible domains count as this many", minimum=1),
        "matchLabelKeys": {
            "type": "array",
            "description": "pod label keys whose values (taken from the incoming pod) narrow labelSelector, "
            "e.g. pod-template-hash to spread each revision on its own",
            "items": {"type": "string", "minLength": 1, "maxLength": LABEL_KEY_MAX, "pattern": LABEL_KEY},
            "maxItems": _MAX_EXPRESSIONS,
            "x-kubernetes-list-type": "atomic",
        },
        "nodeAffinityPolicy": _s(
            "Honor (default): count only nodes the pod's nodeSelector/affinity admit; Ignore: all",
            enum=["Honor", "Ignore"],
        ),
        "nodeTaintsPolicy": _s(
            "Honor: count only nodes whose taints the pod tolerates; Ignore (default): all",
            enum=["Honor", "Ignore"],
        ),
    },
    required=["maxSkew", "topologyKey", "whenUnsatisfiable"],
    **{
        "x-kubernetes-validations": [
            _rule(
                "!has(self.minDomains) || self.whenUnsatisfiable == 'DoNotSchedule'",
                f"scheduling.topologySpreadConstraints[].minDomains {MIN_DOMAINS_NEED_DO_NOT_SCHEDULE}",
                fieldPath=".minDomains",
            )
        ]
    },
)

SCHEDULING = _obj(
    "where the router pods run: copied onto every router pod template (the Deployment, both colors "
    "of a blue/green rollout, stable and canary), so a change rolls out like an image change. "
    "Not to be confused with spec.nodeSelector, which selects HospitalNodes",
    {
        "nodeSelector": {
            "type": "object",
            "description": "node labels a node must carry to run a router pod (the pod's nodeSelector)",
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
            "maxProperties": MAX_NODE_SELECTOR_LABELS,
            "x-kubernetes-validations": [
                _rule(
                    f"self.all(k, size(k) <= {LABEL_KEY_MAX} && k.matches('{LABEL_KEY}'))",
                    "scheduling.nodeSelector keys must be label keys ([prefix/]name, the name 1-63 "
                    "characters)",
                )
            ],
        },
        "tolerations": {
            "type": "array",
            "description": "taints the router pods tolerate (core/v1 Toleration)",
            "items": _TOLERATION,
            "maxItems": MAX_TOLERATIONS,
            "x-kubernetes-list-type": "atomic",
        },
        "affinity": _obj(
            "node affinity and pod (anti-)affinity (core/v1 Affinity); the content of each is passed "
            "through as written and validated by the API server when the operator applies the "
            "Deployment (an error then shows in the router's Ready condition)",
            {
                "nodeAffinity": _preserved("core/v1 NodeAffinity"),
                "podAffinity": _preserved("core/v1 PodAffinity"),
                "podAntiAffinity": _preserved("core/v1 PodAntiAffinity"),
            },
        ),
        "priorityClassName": _s(
            "PriorityClass of the router pods (it must exist, or no pod is created)",
            minLength=1,
            maxLength=253,
            pattern=DNS_SUBDOMAIN,
        ),
        "topologySpreadConstraints": {
            "type": "array",
            "description": "how the router pods spread over zones or nodes (core/v1 "
            "TopologySpreadConstraint); a constraint without labelSelector counts this router's own "
            "pods (every color and track together)",
            "items": _SPREAD_CONSTRAINT,
            "maxItems": MAX_SPREAD_CONSTRAINTS,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["topologyKey", "whenUnsatisfiable"],
        },
    },
)

FEDERATED_ROUTER_SPEC = _obj(
    "a privacy-preserving router deployment in front of HospitalNodes",
    {
        "image": _s("router container image", default=DEFAULT_ROUTER_IMAGE, minLength=1),
        "imagePullPolicy": _s("", enum=["Always", "IfNotPresent", "Never"], default="IfNotPresent"),
        "replicas": _i("router pods when autoscaling is off", minimum=0, default=1),
        "resources": {
            "type": "object",
            "description": "container resources (core/v1 ResourceRequirements)",
            "x-kubernetes-preserve-unknown-fields": True,
        },
        "policyRef": _obj(
            "the PrivacyPolicy (same namespace) the router enforces",
            {"name": _s("PrivacyPolicy name", minLength=1)},
            required=["name"],
        ),
        "nodeSelector": _LABEL_SELECTOR,
        "routing": _obj(
            "how requests are spread over nodes",
            {
                "strategy": _s(
                    "balancer", enum=[s.value for s in Strategy], default=Strategy.QUANTUM_INSPIRED.value
                ),
                "maxAttempts": _i("failover attempts", minimum=1, maximum=10, default=2),
                "connectTimeoutSeconds": _n("", default=2.0, minimum=0.01),
                "readTimeoutSeconds": _n("", default=60.0, minimum=0.01),
                "streamTimeoutSeconds": _n(
                    "longest time a streamed answer is relayed from a node, counted from the router's "
                    "first read of its body; a HospitalNode's timeouts.streamSeconds overrides it",
                    default=600.0,
                    minimum=0.01,
                ),
            },
            default={},
        ),
        "auth": _obj(
            "JWT verification of clinicians' tokens",
            {
                "issuer": _s("expected iss", default="fdp-dev"),
                "audience": _s("expected aud", default="federated-dp-llm"),
                "algorithms": {
                    "type": "array",
                    "items": {"type": "string", "enum": ["HS256", "RS256", "ES256"]},
                    "default": ["HS256"],
                    "minItems": 1,
                },
                "jwksUrl": _s("JWKS URL for RS256/ES256"),
                "hs256SecretRef": _secret_ref(
                    "Secret key holding the HS256 shared secret" + OPT_IN, key="secret"
                ),
                "requireMfa": _b(
                    "the token's amr claim must show a second factor ('mfa', or methods of two kinds, "
                    "as OIDC providers set it, RFC 8176)",
                    False,
                ),
                "maxTokenAgeSeconds": _i(
                    "refuse tokens whose auth_time (else iat) is older than this: an automatic logoff "
                    "(8 hours by default); 0: no limit beyond exp",
                    minimum=0,
                    maximum=MAX_TOKEN_AGE_SECONDS,
                    default=28800,
                ),
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.maxTokenAgeSeconds == 0 || self.maxTokenAgeSeconds >= 60",
                        "auth.maxTokenAgeSeconds must be 0 (no limit) or at least 60",
                    )
                ]
            },
        ),
        "rateLimits": _obj(
            "per-principal request limits and the brute-force lockout: over a limit a client gets 429 "
            "with Retry-After, before anything is reserved or any node called",
            {
                "perUser": _bucket("requests of one user (token sub)", "per_user"),
                "perDepartment": _bucket(
                    "requests of one department, all its users together", "per_department"
                ),
                "failedAuthPerClient": _bucket(
                    "authentication failures from one client address before it is locked out",
                    "failed_auth_per_client",
                ),
                "failedAuthPerSubject": _bucket(
                    "authentication failures for one token subject before it is locked out",
                    "failed_auth_per_subject",
                ),
                "clientAddressHeader": _s(
                    "take the client address from this header (its last entry), e.g. X-Forwarded-For set "
                    "by your ingress; unset: the TCP peer (behind an ingress every client would share "
                    "the ingress' address and its lockout)",
                    pattern=r"^[A-Za-z0-9-]{1,64}$",
                ),
            },
            default={},
        ),
        "ledger": _obj(
            "where privacy budgets are recorded",
            {
                "backend": _s(
                    "sqlite (one replica) or postgres", enum=["sqlite", "postgres"], default="sqlite"
                ),
                "dsnSecretRef": _secret_ref(
                    "Secret key holding the PostgreSQL DSN (its hosts and ports also open the "
                    "NetworkPolicy's egress)" + OPT_IN,
                    key="dsn",
                ),
                "auditKeySecretRef": _secret_ref(
                    "Secret key holding the audit keyring (lines '<key-id> <64 hex>', the last one "
                    "active). Unset: the operator creates Secret <router>-audit-key once, without an "
                    "owner (deleting the router keeps it), and never rewrites it" + OPT_IN,
                    key="key",
                ),
                "commitMode": _s(
                    "Deferred (default): the commit record (the answer was released) rides with the "
                    "next group commit, at most 50 ms later, instead of costing each answer one more "
                    "durable write. Durable: it is durable before the answer leaves. Either way the "
                    "spend, and the node it was reserved for, are durable before any node is called, "
                    "and a crash before the commit record leaves the spend counted",
                    enum=["Durable", "Deferred"],
                    default="Deferred",
                ),
                "sqlite": _obj(
                    "sqlite: the PersistentVolumeClaim <router>-ledger holding the ledger file, created "
                    "once by the operator (later edits of size or class do not change it)",
                    {
                        "size": _s("requested storage", default="1Gi", pattern=QUANTITY),
                        "storageClassName": _s("StorageClass of the claim; unset: the cluster's default"),
                        "whenDeleted": _s(
                            "Retain: deleting the FederatedRouter keeps the claim (and every budget in "
                            "it; a router created again with the same name reuses it). Delete: the claim "
                            "is owned by the router and deleted with it",
                            enum=["Retain", "Delete"],
                            default="Retain",
                        ),
                    },
                    default={},
                ),
                "timeouts": _obj(
                    "bounds on every ledger operation: a ledger database that is down, frozen or full "
                    "costs a client a 503 within seconds, never a hang (the router's ledger.timeouts)",
                    {
                        "connectSeconds": _i(
                            "PostgreSQL connect_timeout per host (whole seconds)",
                            minimum=2,
                            maximum=60,
                            default=2,
                        ),
                        "lockSeconds": _n(
                            "wait for the ledger's write lock (PostgreSQL lock_timeout, SQLite busy timeout)",
                            exclusiveMinimum=True,
                            minimum=0,
                            maximum=60,
                            default=2.0,
                        ),
                        "statementSeconds": _n(
                            "PostgreSQL statement_timeout, and the router's cap on one ledger transaction",
                            exclusiveMinimum=True,
                            minimum=0,
                            maximum=120,
                            default=3.0,
                        ),
                        "operationSeconds": _n(
                            "deadline of one ledger operation, queueing included",
                            exclusiveMinimum=True,
                            minimum=0,
                            maximum=300,
                            default=5.0,
                        ),
                    },
                    default={},
                    **{
                        "x-kubernetes-validations": [
                            _rule(
                                "self.lockSeconds <= self.statementSeconds"
                                " && self.statementSeconds <= self.operationSeconds",
                                "ledger.timeouts: need lockSeconds <= statementSeconds <= operationSeconds",
                            )
                        ]
                    },
                ),
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.backend != 'postgres' || has(self.dsnSecretRef)",
                        "ledger.dsnSecretRef is required when ledger.backend is 'postgres'",
                    )
                ]
            },
        ),
        "rollout": ROLLOUT,
        "autoscaling": _obj(
            "HorizontalPodAutoscaler (autoscaling/v2) for the serving pods",
            {
                "enabled": _b("create an HPA; the operator then never sets replicas itself", False),
                "minReplicas": _i("", minimum=1, default=1),
                "maxReplicas": _i("", minimum=1, default=3),
                "targetCPUUtilizationPercentage": _i("", minimum=1, maximum=100, default=70),
                "targetMemoryUtilizationPercentage": _i("", minimum=1, maximum=100),
                "behavior": {
                    "type": "object",
                    "description": "HPA scaling behavior (autoscaling/v2 HorizontalPodAutoscalerBehavior)",
                    "x-kubernetes-preserve-unknown-fields": True,
                },
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "self.maxReplicas >= self.minReplicas",
                        "autoscaling.maxReplicas must be >= autoscaling.minReplicas",
                    )
                ]
            },
        ),
        "tls": _obj(
            "serving certificate: operator-managed CA, or an existing Secret (e.g. cert-manager)",
            {
                "secretName": _s(
                    "existing Secret with tls.crt, tls.key, ca.crt; the operator then issues nothing"
                    + OPT_IN
                    + " (cert-manager: the Certificate's spec.secretTemplate.labels)"
                ),
                "duration": _s(
                    "certificate lifetime (cert-manager semantics)", default="2160h", pattern=DURATION_PATTERN
                ),
                "renewBefore": _s("renew this long before expiry", default="360h", pattern=DURATION_PATTERN),
            },
            default={},
            **{
                "x-kubernetes-validations": [
                    _rule(
                        "duration(self.renewBefore) < duration(self.duration)",
                        "tls.renewBefore must be shorter than tls.duration",
                    ),
                    _rule("duration(self.duration) >= duration('1m')", "tls.duration must be at least 1m"),
                ]
            },
        ),
        "service": _obj(
            "the router Service",
            {
                "type": _s("", enum=["ClusterIP", "NodePort", "LoadBalancer"], default="ClusterIP"),
                "port": _i("HTTPS port", minimum=1, maximum=65535, default=443),
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            default={},
        ),
        "networkPolicy": _obj(
            "a NetworkPolicy around the router pods: ingress on the HTTPS port from the named peers only; "
            "egress only to DNS, the selected nodes' endpoint ports, the JWKS URL and the ledger database",
            {
                "enabled": _b("render the NetworkPolicy", True),
                "ingressFrom": {
                    "type": "array",
                    "description": "NetworkPolicyPeer objects allowed in; empty: the operator's default "
                    "(chart value routerNetworkPolicy.defaultIngressFrom; out of the box: pods of the "
                    "router's own namespace)",
                    "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
                "extraEgress": {
                    "type": "array",
                    "description": "NetworkPolicyEgressRule objects allowed besides DNS, the nodes, the "
                    "JWKS URL and the ledger (e.g. an OpenTelemetry collector)",
                    "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                },
            },
            default={},
        ),
        "scheduling": SCHEDULING,
    },
    required=["policyRef"],
    **{
        "x-kubernetes-validations": [
            _rule("self.ledger.backend != 'sqlite' || self.replicas <= 1", SQLITE_ONE_REPLICA),
            _rule("self.ledger.backend != 'sqlite' || !self.autoscaling.enabled", SQLITE_NO_AUTOSCALING),
            _rule(
                "self.ledger.backend != 'sqlite' || self.rollout.strategy == 'RollingUpdate'",
                SQLITE_NO_PROGRESSIVE,
            ),
        ]
    },
)

_ROLLOUT_STATUS = _obj(
    "progressive delivery state (written by the rollout engine)",
    {
        "strategy": _s(""),
        "activeColor": _s("BlueGreen: color behind the active Service"),
        "previewColor": _s("BlueGreen: color behind the preview Service"),
        "stableRevision": _s("pod template revision known good"),
        "currentRevision": _s("pod template revision desired now"),
        "currentStepIndex": _i("Canary: index of the current step", minimum=0),
        "canaryWeight": _i("Canary: percentage of replicas on the canary", minimum=0, maximum=100),
        "pauseReason": _s("why the rollout waits"),
        "switchingFrom": _s(
            "during a strategy switch: the previous strategy's serving Deployment, kept serving "
            "until the new strategy's stable Deployment runs its revision"
        ),
        "message": _s(""),
    },
    **{"x-kubernetes-preserve-unknown-fields": True},
)

FEDERATED_ROUTER_STATUS = _status(
    {
        "rollout": _ROLLOUT_STATUS,
        "replicas": _i("desired serving replicas"),
        "readyReplicas": _i("ready serving replicas"),
        "availableReplicas": _i("available serving replicas"),
        "endpoint": _s("in-cluster URL of the router"),
        "configHash": _s("hash of the rendered router config (node list included: what the pods read)"),
        "configMapName": _s(
            "ConfigMap holding the rendered config; named by the hash of the config without its node "
            "list, so a change of the selected nodes changes its content in place and only spec "
            "changes roll the pods (node health changes neither)"
        ),
        "ledger": _obj(
            "where the budget ledger lives",
            {
                "backend": _s("sqlite or postgres"),
                "claimName": _s("sqlite: the PersistentVolumeClaim holding the ledger"),
                "claimPhase": _s("sqlite: the claim's phase (Pending until a volume is bound)"),
                "auditKeySecret": _s("the Secret holding the audit keyring"),
            },
        ),
        "nodes": _obj(
            "HospitalNodes selected by the router",
            {
                "selected": _i("nodes matching spec.nodeSelector"),
                "ready": _i("selected nodes that pass the operator's health checks"),
                "names": _strings(
                    "the ready nodes (every selected node is in the config; the router probes them)"
                ),
            },
        ),
        "nodesSummary": _s("ready/selected, for the printer column"),
        "activeOrWeight": _s("active color or canary weight, for the printer column"),
        "tls": _obj(
            "serving certificate",
            {
                "secretName": _s(""),
                "notAfter": _s("certificate expiry", format="date-time"),
                "renewalTime": _s("when the operator renews it", format="date-time"),
                "serial": _s("serial number of the serving certificate"),
            },
        ),
    }
)


def _crd(kind: str, plural: str, short: str, spec: Schema, status: Schema, columns: list[Schema]) -> Schema:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "federated-dp-llm"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": CATEGORIES,
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": spec["description"],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def _col(name: str, path: str, typ: str = "string", priority: int = 0, desc: str = "") -> Schema:
    col: Schema = {"name": name, "type": typ, "jsonPath": path}
    if priority:
        col["priority"] = priority
    if desc:
        col["description"] = desc
    return col


_READY = _col("Ready", '.status.conditions[?(@.type=="Ready")].status')
_REASON = _col("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1)
_AGE = _col("Age", ".metadata.creationTimestamp", "date")


def all_crds() -> list[Schema]:
    return [
        _crd(
            "HospitalNode",
            "hospitalnodes",
            "hn",
            HOSPITAL_NODE_SPEC,
            HOSPITAL_NODE_STATUS,
            [
                _READY,
                _col("Hospital", ".spec.hospital"),
                _col("Data", ".spec.privacy.dataClass", desc="PHI or Public"),
                _col("Mechanism", ".spec.privacy.mechanism", desc="DP mechanism the endpoint runs"),
                _col("Endpoint", ".spec.endpoint"),
                _col("Latency-ms", ".status.latencyMs", "number"),
                _col("Failures", ".status.consecutiveFailures", "integer"),
                _REASON,
                _AGE,
            ],
        ),
        _crd(
            "PrivacyPolicy",
            "privacypolicies",
            "pp",
            PRIVACY_POLICY_SPEC,
            PRIVACY_POLICY_STATUS,
            [
                _READY,
                _col("Epsilon/User", ".spec.budgets.perUser", "number"),
                _col("Delta", ".spec.delta", "number"),
                _col("Window", ".spec.window.kind"),
                _col("Guarantee", ".status.guarantee", priority=1),
                _AGE,
            ],
        ),
        _crd(
            "FederatedRouter",
            "federatedrouters",
            "fr",
            FEDERATED_ROUTER_SPEC,
            FEDERATED_ROUTER_STATUS,
            [
                _READY,
                _col("Strategy", ".spec.rollout.strategy"),
                _col("Active/Weight", ".status.activeOrWeight"),
                _col("Replicas", ".status.availableReplicas", "integer"),
                _col("Nodes", ".status.nodesSummary"),
                _REASON,
                _col("Endpoint", ".status.endpoint", priority=1),
                _AGE,
            ],
        ),
    ]


def file_name(crd: Schema) -> str:
    return f"{crd['metadata']['name']}.yaml"


def to_yaml(crd: Schema) -> str:
    header = "# Generated by `python -m fdp_operator.crds --write` from operator/fdp_operator/crds.py.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=110)


def _rows(schema: Schema, path: str) -> list[str]:
    rows = []
    for name, sub in (schema.get("properties") or {}).items():
        p = f"{path}.{name}" if path else name
        typ = sub.get("type", "")
        if typ == "array" and "items" in sub:
            typ = f"[]{sub['items'].get('type', '')}"
        extra = []
        if "enum" in sub:
            extra.append("one of " + ", ".join(f"`{json_text(e)}`" for e in sub["enum"]))
        for key, word in (("minimum", "≥"), ("maximum", "≤")):
            if key in sub:
                strict = sub.get("exclusiveMinimum" if key == "minimum" else "exclusiveMaximum")
                extra.append(f"{word.replace('≥', '>').replace('≤', '<') if strict else word} {sub[key]}")
        default = sub.get("default")
        default_text = "" if default is None or isinstance(default, dict) else f"`{json_text(default)}`"
        desc = "; ".join(x for x in [sub.get("description", ""), ", ".join(extra)] if x)
        rows.append(f"| `{p}` | {typ} | {default_text} | {desc} |")
        if sub.get("type") == "object" and "properties" in sub:
            rows += _rows(sub, p)
        if sub.get("type") == "array" and "properties" in sub.get("items", {}):
            rows += _rows(sub["items"], f"{p}[]")
    return rows


def json_text(v: Any) -> str:
    import json

    return json.dumps(v) if not isinstance(v, str) or not v else v


def _rules(schema: Schema, path: str) -> list[str]:
    out = [f"- `{path or 'spec'}`: {r['message']}" for r in schema.get("x-kubernetes-validations", [])]
    for name, sub in (schema.get("properties") or {}).items():
        out += _rules(sub, f"{path}.{name}" if path else name)
    if "items" in schema:
        out += _rules(schema["items"], f"{path}[]")
    return out


def reference() -> str:
    """docs/crd-reference.md, generated from the same schemas."""
    out = [
        "# CRD reference (fdp.io/v1alpha1)",
        "",
        "Generated by `python -m fdp_operator.crds --write` from `operator/fdp_operator/crds.py`;",
        "a unit test fails when it is stale. `kubectl explain fr.spec.rollout` shows the same text.",
        "",
    ]
    for crd in all_crds():
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        root = version["schema"]["openAPIV3Schema"]["properties"]
        out += [
            f"## {names['kind']} (`{names['shortNames'][0]}`)",
            "",
            root["spec"]["description"][:1].upper() + root["spec"]["description"][1:] + ".",
            "",
            "### spec",
            "",
            "| field | type | default | description |",
            "|---|---|---|---|",
            *_rows(root["spec"], ""),
            "",
            "Rejected at apply time (CEL rules):",
            "",
            *_rules(root["spec"], ""),
            "",
            "### status",
            "",
            "| field | type | default | description |",
            "|---|---|---|---|",
            *_rows(root["status"], ""),
            "",
            "Printer columns: "
            + ", ".join(c["name"] for c in version["additionalPrinterColumns"])
            + " (`-o wide` adds the priority-1 ones).",
            "",
        ]
    return "\n".join(out)


if __name__ == "__main__":  # ``python -m fdp_operator.crds [--write]``: the writer is crds_write.py
    from fdp_operator.crds_write import main

    raise SystemExit(main())
