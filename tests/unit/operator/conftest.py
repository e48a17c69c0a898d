"""Builders for parsed CRs: a valid default plus keyword modifiers (cert-manager's builder style)."""

from __future__ import annotations

from typing import Any

import pytest
from fdp_operator.models import parse_node, parse_policy, parse_router


def router_body(name: str = "fr1", namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "fdp.io/v1alpha1",
        "kind": "FederatedRouter",
        "metadata": {"name": name, "namespace": namespace, "uid": "uid-1", "generation": 1},
        "spec": {"policyRef": {"name": "pol"}, **spec},
    }


PHI_PURE_DP = {"dataClass": "PHI", "mechanism": "PureDP"}


def node_body(name: str, hospital: str = "h", labels: dict[str, str] | None = None, **spec: Any):
    return {
        "metadata": {"name": name, "namespace": "ns", "labels": labels or {}, "uid": f"u-{name}"},
        "spec": {
            "endpoint": f"https://{name}.example:8443",
            "hospital": hospital,
            "privacy": PHI_PURE_DP,
            **spec,
        },
    }


@pytest.fixture
def make_router():
    return lambda name="fr1", **spec: parse_router(router_body(name, **spec))


@pytest.fixture
def make_policy():
    return lambda **spec: parse_policy({"metadata": {"name": "pol", "namespace": "ns"}, "spec": spec})


@pytest.fixture
def make_node():
    def build(name: str, *, healthy: bool = True, labels=None, **spec):
        return parse_node(node_body(name, labels=labels, **spec), healthy=healthy)

    return build
