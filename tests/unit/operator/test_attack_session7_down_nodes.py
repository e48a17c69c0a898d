"""Attacks on the health redesign, operator side (5d79c91): every selected node is rendered,
healthy or not. What must still keep a node out of every router config is the Secret check
(`allowed_nodes`): a node naming a Secret nobody opted in stays out whether it is up or down,
in today's config and in an older revision's ConfigMap refreshed during a rollout. The status
must say the down node is failing probes, not that it left the config."""

from __future__ import annotations

import json
from typing import Any

from fdp_operator.reconcile.router import reconcile_router
from fdp_operator.render import names
from fdp_operator.render.router import refreshed_config_map

from .test_security import NOW, POLICY, FakeKube, _node, router_body

DOWN = {"consecutiveFailures": 7}  # over the default failureThreshold (3)


def _down(name: str, **spec: Any) -> dict[str, Any]:
    return {**_node(name, **spec), "status": DOWN}


def _config_nodes(kube: FakeKube) -> list[str]:
    (cm,) = [o for (k, _), o in kube.objects.items() if k == "ConfigMap"]
    return [n["id"] for n in json.loads(cm["data"][names.CONFIG_FILE])["nodes"]]


async def test_a_down_node_with_a_refused_secret_stays_out_and_a_down_allowed_one_is_in() -> None:
    stolen = {"kind": "Secret", "metadata": {"name": "payroll-db"}, "data": {"ca.crt": "eA=="}}
    evil = _down("evil", tls={"caSecretRef": {"name": "payroll-db"}})
    evil_up = _node("evil-up", tls={"caSecretRef": {"name": "payroll-db"}})
    kube = FakeKube([POLICY, _node("a"), _down("down"), evil, evil_up, stolen])
    outcome = await reconcile_router(kube, router_body("fr1"), NOW)  # type: ignore[arg-type]
    assert sorted(_config_nodes(kube)) == ["a", "down"]
    dep = kube.objects[("Deployment", "fr1")]
    volumes = dep["spec"]["template"]["spec"]["volumes"]
    assert "payroll-db" not in {v["secret"]["secretName"] for v in volumes if "secret" in v}
    conds = {c["type"]: c for c in outcome.status["conditions"]}
    msg = conds["NodesReady"]["message"]
    assert conds["NodesReady"]["status"] == "False", conds["NodesReady"]
    assert "left the config" not in msg and "removed" not in msg, msg
    assert "evil" in msg and "payroll-db" in msg, msg


async def test_the_node_status_of_a_down_node_does_not_claim_it_left_the_config() -> None:
    from fdp_operator.reconcile.node import node_conditions

    conds = node_conditions(5, 3, True, "connection refused")
    text = json.dumps(conds)
    assert "removed from" not in text and "config" not in text, text


def test_an_older_revisions_config_refreshed_in_a_rollout_never_takes_a_refused_node(
    make_router, make_node
) -> None:
    """The old ConfigMap was rendered for a, down and evil (evil's Secret was allowed then,
    refused now): the refresh keeps a and down (down: the router probes it) and drops evil,
    since the reconcile passes only allowed nodes."""
    router = make_router()
    stale = {"id": "evil", "endpoint": "https://evil.example:8443"}
    cm = {
        "metadata": {
            "name": "fr1-config-old",
            "annotations": {names.SELECTED_NODES_ANNOTATION: "a,down,evil"},
        },
        "data": {names.CONFIG_FILE: json.dumps({"nodes": [stale], "other": 1})},
    }
    allowed = [make_node("a"), make_node("down", healthy=False)]
    out = refreshed_config_map(router, cm, allowed)
    assert out is not None
    data = json.loads(out["data"][names.CONFIG_FILE])
    assert [n["id"] for n in data["nodes"]] == ["a", "down"]
    assert data["other"] == 1
    # a node selected today but not when the old config was rendered does not join it
    later = [*allowed, make_node("new")]
    out = refreshed_config_map(router, cm, later)
    assert out is not None
    assert [n["id"] for n in json.loads(out["data"][names.CONFIG_FILE])["nodes"]] == ["a", "down"]
