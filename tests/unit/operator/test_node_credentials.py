"""The operator's own node probe: the node's credentials and method, and no Secret its owner
did not opt in (the operator would otherwise present it to a server the spec's author runs)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fdp_operator.models import parse_node
from fdp_operator.reconcile.node import SecretRefused, node_credentials, refused_status
from fdp_operator.security import Refusal

from .conftest import node_body

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LABEL = {"fdp.io/allow-router-mount": "true"}


class Secrets:
    def __init__(self, *secrets: dict[str, Any]) -> None:
        self.by_name = {s["metadata"]["name"]: s for s in secrets}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert kind == "Secret"
        return self.by_name.get(name)


def _secret(name: str, labels=None, **data: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def _node(**spec: Any):
    return parse_node(node_body("gw", **spec))


AUTH = {"apiKeySecretRef": {"name": "key"}, "headersSecretRef": {"name": "hdr"}}


async def test_the_probe_sends_the_api_key_and_the_extra_headers() -> None:
    kube = Secrets(
        _secret("key", LABEL, **{"api-key": "sk-1\n"}),
        _secret("hdr", LABEL, **{"headers.json": json.dumps({"X-Tenant": "cardiology"})}),
    )
    creds = await node_credentials(kube, _node(auth=AUTH))  # type: ignore[arg-type]
    assert creds.headers == {"Authorization": "Bearer sk-1", "X-Tenant": "cardiology"}


async def test_a_headers_secret_that_is_not_a_json_object_of_strings_is_named() -> None:
    kube = Secrets(
        _secret("key", LABEL, **{"api-key": "sk-1"}),
        _secret("hdr", LABEL, **{"headers.json": json.dumps({"X-Retries": 3})}),
    )
    with pytest.raises(ValueError, match=r"Secret 'hdr' key 'headers\.json'"):
        await node_credentials(kube, _node(auth=AUTH))  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["apiKeySecretRef", "headersSecretRef"])
async def test_an_unlabelled_credential_is_never_read_into_a_probe(field: str) -> None:
    kube = Secrets(
        _secret("key", LABEL if field != "apiKeySecretRef" else {}, **{"api-key": "sk-1"}),
        _secret("hdr", LABEL if field != "headersSecretRef" else {}, **{"headers.json": "{}"}),
    )
    with pytest.raises(SecretRefused) as exc:
        await node_credentials(kube, _node(auth=AUTH))  # type: ignore[arg-type]
    assert (
        exc.value.refusal.reason == "SecretNotAllowed" and f"spec.auth.{field}" in exc.value.refusal.message
    )


async def test_an_unlabelled_client_certificate_is_not_presented() -> None:
    kube = Secrets(_secret("client", {}, **{"tls.crt": "x", "tls.key": "y"}))
    with pytest.raises(SecretRefused, match=r"spec\.tls\.clientCertSecretRef"):
        await node_credentials(kube, _node(tls={"clientCertSecretRef": {"name": "client"}}))  # type: ignore[arg-type]


def test_a_refused_node_is_not_ready_keeps_its_probe_history_and_says_why() -> None:
    old = {"consecutiveFailures": 0, "latencyMs": 3.0, "lastProbeTime": "2025-12-31T00:00:00Z"}
    refusal = Refusal("SecretNotAllowed", "Secret 'x' (spec.tls.caSecretRef) does not carry the label")
    status = refused_status(old, refusal, NOW, 2, ["fr"])
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "SecretNotAllowed") and "'x'" in ready["message"]
    assert (
        status["latencyMs"] == 3.0 and status["lastError"] == refusal.message and status["usedBy"] == ["fr"]
    )
