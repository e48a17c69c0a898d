"""Bad specs are rejected by the API server at apply time, with a message a person understands."""

from __future__ import annotations

import re

import yaml

from .conftest import federated_router, hospital_node, privacy_policy

NODE = hospital_node("hn1", "https://node.example:8443")
POLICY = privacy_policy("p")
ROUTER = federated_router("r", "p")


def _with(base: dict, **spec) -> dict:
    out = yaml.safe_load(yaml.safe_dump(base))
    out["spec"].update(spec)
    return out


CASES = [
    ("http endpoint", _with(NODE, endpoint="http://node.example"), "spec.endpoint must be an https:// URL"),
    ("not a url", _with(NODE, endpoint="https://"), "spec.endpoint must be an https:// URL"),
    (
        "probe timeout > interval",
        _with(NODE, healthCheck={"intervalSeconds": 1, "timeoutSeconds": 5}),
        "healthCheck.timeoutSeconds must not exceed healthCheck.intervalSeconds",
    ),
    ("zero weight", _with(NODE, weight=0), "spec.weight must be in (0, 1000]"),
    (
        "PHI node without a mechanism",
        _with(NODE, privacy={"dataClass": "PHI", "mechanism": "None"}),
        "spec.privacy.mechanism: Invalid value: a PHI node must declare the DP mechanism its "
        "endpoint runs (PureDP or Gaussian); None is only for dataClass Public",
    ),
    (
        "PHI node, mechanism left to its default",
        _with(NODE, privacy={"dataClass": "PHI"}),
        "a PHI node must declare the DP mechanism its endpoint runs",
    ),
    (
        "node without privacy",
        {**NODE, "spec": {k: v for k, v in NODE["spec"].items() if k != "privacy"}},
        "spec.privacy: Required value",
    ),
    (
        "unknown data class",
        _with(NODE, privacy={"dataClass": "Confidential", "mechanism": "PureDP"}),
        'spec.privacy.dataClass: Unsupported value: "Confidential"',
    ),
    ("delta too large", _with(POLICY, delta=0.01), "spec.delta must be in (0, 1e-3]"),
    ("delta zero", _with(POLICY, delta=0), "spec.delta must be in (0, 1e-3]"),
    ("epsilon zero", _with(POLICY, defaultEpsilonPerQuery=0), "epsilon must be > 0"),
    (
        "default > max",
        _with(POLICY, defaultEpsilonPerQuery=2, maxEpsilonPerQuery=1),
        "spec.defaultEpsilonPerQuery must be <= spec.maxEpsilonPerQuery",
    ),
    ("negative budget", _with(POLICY, budgets={"perUser": -1}), "every budget"),
    (
        "min epsilon above the default",
        _with(POLICY, minEpsilonPerQuery=0.5),
        "spec.minEpsilonPerQuery must be > 0 and <= spec.defaultEpsilonPerQuery",
    ),
    (
        "a candidate set of one option",
        _with(POLICY, consensus={"candidateSets": {"triage": ["Admit to ICU"]}}),
        "spec.consensus.candidateSets.triage: Invalid value: 1: spec.consensus.candidateSets.triage in body "
        "should have at least 2 items",
    ),
    (
        "a candidate set with the same option twice",
        _with(POLICY, consensus={"candidateSets": {"triage": ["Admit", "Admit"]}}),
        'spec.consensus.candidateSets[triage][1]: Duplicate value: "Admit"',
    ),
    (
        "a blank option",
        _with(POLICY, consensus={"candidateSets": {"triage": ["Admit", " "]}}),
        "consensus.candidateSets options must not be blank",
    ),
    (
        "a candidate set name a request cannot use",
        _with(POLICY, consensus={"candidateSets": {"Triage Set": ["Admit", "Discharge"]}}),
        "consensus.candidateSets names are 1-63 lowercase letters",
    ),
    ("period window without period", _with(POLICY, window={"kind": "period"}), "window.period (at least 1m)"),
    (
        "consensus minAnswers > nodes",
        _with(POLICY, consensus={"nodes": 2, "minAnswers": 3}),
        "consensus.minAnswers must be <= consensus.nodes",
    ),
    (
        "max < min replicas",
        _with(
            ROUTER,
            ledger={"backend": "postgres", "dsnSecretRef": {"name": "d"}},
            autoscaling={"enabled": True, "minReplicas": 4, "maxReplicas": 2},
        ),
        "autoscaling.maxReplicas must be >= autoscaling.minReplicas",
    ),
    (
        "canary weight > 100",
        _with(ROUTER, rollout={"strategy": "Canary", "steps": [{"setWeight": 120}]}),
        "should be less than or equal to 100",
    ),
    (
        "canary weights decrease",
        _with(ROUTER, rollout={"strategy": "Canary", "steps": [{"setWeight": 50}, {"setWeight": 20}]}),
        "canary setWeight values must be 0-100 and must not decrease",
    ),
    (
        "step with both",
        _with(ROUTER, rollout={"strategy": "Canary", "steps": [{"setWeight": 5, "pause": {}}]}),
        "each rollout step sets exactly one of setWeight or pause",
    ),
    (
        "steps without canary",
        _with(ROUTER, rollout={"strategy": "BlueGreen", "steps": [{"setWeight": 5}]}),
        "rollout.steps are only allowed with strategy Canary",
    ),
    ("sqlite with replicas", _with(ROUTER, replicas=3), "ledger.backend 'sqlite' allows one router replica"),
    (
        "postgres without dsn",
        _with(ROUTER, ledger={"backend": "postgres"}),
        "ledger.dsnSecretRef is required when ledger.backend is 'postgres'",
    ),
    (
        "renewBefore >= duration",
        _with(ROUTER, tls={"duration": "1h", "renewBefore": "2h"}),
        "tls.renewBefore must be shorter than tls.duration",
    ),
    ("missing policyRef", {**ROUTER, "spec": {"replicas": 1}}, "spec.policyRef: Required value"),
    (
        "sqlite autoscaled",
        _with(ROUTER, autoscaling={"enabled": True}),
        "ledger.backend 'sqlite' cannot autoscale: a second pod would need the same ledger file",
    ),
    (
        "sqlite blue/green",
        _with(ROUTER, rollout={"strategy": "BlueGreen"}),
        "ledger.backend 'sqlite' needs rollout.strategy RollingUpdate",
    ),
    (
        "sqlite canary",
        _with(ROUTER, rollout={"strategy": "Canary", "steps": [{"setWeight": 50}]}),
        "BlueGreen and Canary run two versions side by side",
    ),
    (
        "ledger timeouts out of order",
        _with(ROUTER, ledger={"timeouts": {"lockSeconds": 5, "statementSeconds": 3}}),
        "ledger.timeouts: need lockSeconds <= statementSeconds <= operationSeconds",
    ),
    (
        "ledger claim kept how?",
        _with(ROUTER, ledger={"sqlite": {"whenDeleted": "Orphan"}}),
        'spec.ledger.sqlite.whenDeleted: Unsupported value: "Orphan"',
    ),
    ("ledger claim size", _with(ROUTER, ledger={"sqlite": {"size": "lots"}}), "spec.ledger.sqlite.size"),
    ("node base path", _with(NODE, apiBasePath="v1/"), "spec.apiBasePath"),
    (
        "token age below a minute",
        _with(ROUTER, auth={"maxTokenAgeSeconds": 30}),
        "auth.maxTokenAgeSeconds must be 0 (no limit) or at least 60",
    ),
    (
        "a rate without a burst",
        _with(ROUTER, rateLimits={"perUser": {"ratePerSecond": 1, "burst": 0}}),
        "ratePerSecond and burst are both 0 (no limit) or both > 0",
    ),
    ("node probe method", _with(NODE, healthCheck={"method": "POST"}), 'Unsupported value: "POST"'),
    ("node read timeout", _with(NODE, timeouts={"readSeconds": 0}), "spec.timeouts.readSeconds"),
    (
        "node api key without a Secret name",
        _with(NODE, auth={"apiKeySecretRef": {"key": "k"}}),
        "spec.auth.apiKeySecretRef.name: Required value",
    ),
]


def test_invalid_custom_resources_are_rejected_with_their_message(cluster, namespace, fdp_crds) -> None:
    failures = []
    for label, body, message in CASES:
        proc = cluster.kubectl(
            "apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(body), check=False
        )
        if proc.returncode == 0 or message not in proc.stderr:
            failures.append(f"{label}: rc={proc.returncode} stderr={proc.stderr.strip()[:400]}")
    assert not failures, "\n".join(failures)


VALID = [
    NODE,
    POLICY,
    ROUTER,
    _with(NODE, privacy={"dataClass": "PHI", "mechanism": "Gaussian"}),
    _with(NODE, privacy={"dataClass": "Public"}),
    _with(
        NODE,
        auth={"apiKeySecretRef": {"name": "k"}, "headersSecretRef": {"name": "h"}},
        apiBasePath="",
        timeouts={"connectSeconds": 1, "readSeconds": 300},
        healthCheck={"path": "/v1/models", "method": "HEAD"},
    ),
    _with(
        ROUTER,
        ledger={"sqlite": {"size": "5Gi", "storageClassName": "fast", "whenDeleted": "Delete"}},
        rollout={"strategy": "RollingUpdate"},
    ),
    _with(
        ROUTER,
        replicas=4,
        ledger={"backend": "postgres", "dsnSecretRef": {"name": "d"}, "timeouts": {"operationSeconds": 10}},
        rollout={"strategy": "BlueGreen"},
        networkPolicy={"extraEgress": [{"ports": [{"protocol": "TCP", "port": 4317}]}]},
    ),
    _with(
        POLICY,
        minEpsilonPerQuery=0.05,
        consensus={
            "candidateSets": {"triage": ["Admit to ICU", "Admit to ward", "Discharge with follow-up"]}
        },
    ),
]


def test_the_valid_bases_are_accepted(cluster, namespace, fdp_crds) -> None:
    for body in VALID:
        cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))


def test_a_public_node_defaults_to_no_mechanism_and_kubectl_shows_both(cluster, namespace, fdp_crds) -> None:
    body = _with(NODE, privacy={"dataClass": "Public"})
    body["metadata"]["name"] = "guidelines"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))
    header, row = cluster.kubectl("get", "hn", "guidelines", "-n", namespace).stdout.splitlines()
    # columns by their header offsets: READY is still empty (no operator runs here)
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    columns = dict(zip(header.split(), cells, strict=True))
    assert columns["DATA"] == "Public" and columns["MECHANISM"] == "None", columns
