"""The Argo CD Lua health checks shipped in the chart, run (Lua 5.1, like Argo CD's gopher-lua)
against recorded statuses of every phase; plus the argocd-cm snippet stays in sync."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from . import recorded
from .health import lua_health, lua_script

REPO = Path(__file__).resolve().parents[3]
ARGOCD = REPO / "charts" / "federated-dp-llm" / "argocd"
KINDS = ("FederatedRouter", "HospitalNode", "PrivacyPolicy")


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    assert obj["kind"] == kind
    return lua_health(obj)


CASES = (
    [
        pytest.param("FederatedRouter", o, h, id=f"FederatedRouter {name} is {h}")
        for name, o, h, _ in recorded.FEDERATED_ROUTER
    ]
    + [
        pytest.param("HospitalNode", o, h, id=f"HospitalNode {name} is {h}")
        for name, o, h, _ in recorded.HOSPITAL_NODE
    ]
    + [
        pytest.param("PrivacyPolicy", o, h, id=f"PrivacyPolicy {name} is {h}")
        for name, o, h, _ in recorded.PRIVACY_POLICY
    ]
)


@pytest.mark.parametrize(("kind", "obj", "expected"), CASES)
def test_lua_health_check_gives_the_expected_verdict(kind: str, obj: dict[str, Any], expected: str) -> None:
    status, message = health(kind, obj)
    assert status == expected, message
    assert message, "Argo CD shows the message: it must never be empty"


def test_a_stalled_router_shows_the_operators_message() -> None:
    _, o, _, _ = next(c for c in recorded.FEDERATED_ROUTER if c[0].startswith("aborted"))
    assert health("FederatedRouter", o)[1].startswith("Rollout of revision bbb was aborted")


@pytest.mark.parametrize("kind", KINDS)
def test_a_resource_without_status_is_progressing(kind: str) -> None:
    assert health(kind, recorded.obj(kind, None))[0] == "Progressing"


def test_the_argocd_cm_snippet_embeds_exactly_the_shipped_lua() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    data = cm["data"]
    for kind in KINDS:
        key = f"resource.customizations.health.fdp.io_{kind}"
        assert data[key] == lua_script(kind), key
        assert "local function not_observed" in data[key], "each script carries the prelude"
