"""Attacks on the health redesign (5d79c91, e8fd893): every selected node is in the router's
config, healthy or not, and each router acts on its own probes. A node the router sees down
(failing probes, or ejected after failed calls) must get no request of any kind (single,
stream, consensus vote), a request only down nodes could serve is a 503 that charges nothing,
the security-level floor still holds when the nodes above it are down, and /readyz is 503
once every node is down."""

from __future__ import annotations

import asyncio
from typing import Any

from fdp_router.runtime import POOL

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, fast_probes, q, token

CONSENSUS_PRIVACY = {
    "budgets": {"per_user": 10.0, "per_department": 50.0, "per_hospital": 500.0},
    "consensus": {"nodes": 3, "min_answers": 2, "sigma": 2.0},
}


def _calls(cluster: Cluster) -> list[int]:
    """What each demo node was asked to do, health checks aside."""
    return [n.state.completions + n.state.votes + n.state.failures for n in cluster.nodes]


async def _budget(client: Any) -> dict[str, Any]:
    doc: dict[str, Any] = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    return doc


def _mark_down(client: Any, *node_ids: str) -> None:
    """As a router's own probes leave a node that failed failureThreshold probes."""
    pool = client.server.app[POOL]
    for node_id in node_ids:
        pool.nodes[node_id].probe_healthy = False


async def test_a_node_down_by_probe_but_still_answering_gets_no_request_and_no_charge(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """The node would answer (only its /health fails): the router must not call it, and a
    request every serving node of which is down is 503 no_node_available, charged nothing,
    whether streamed or not, /v1/inference or /v1/chat/completions."""
    client = await router(demo_cluster.config(cache={"enabled": False}))
    _mark_down(client, "node-0", "node-1", "node-2")
    before = _calls(demo_cluster)
    chat = {"model": PHI_MODEL, "privacy_budget": 0.5, "messages": [{"role": "user", "content": q("d")}]}
    for path, body in (
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/inference", {"prompt": q("d2"), "privacy_budget": 0.5}),
    ):
        r = await client.post(path, json=body, headers=auth())
        assert r.status == 503, (path, body.get("stream"), await r.text())
        err = (await r.json())["error"]
        assert err.get("code", err.get("type")) == "no_node_available", err
        assert "all down" in err["message"], err
    assert _calls(demo_cluster) == before
    doc = await _budget(client)
    assert doc["consumed_budget"] == 0 and doc["details"]["queries"] == 0, doc
    assert (await client.get("/readyz")).status == 503


async def test_only_the_node_up_is_used_and_only_its_request_is_charged(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(demo_cluster.config(cache={"enabled": False}))
    _mark_down(client, "node-0", "node-2")
    for i in range(6):
        r = await client.post("/v1/inference", json={"prompt": q(i), "privacy_budget": 0.1}, headers=auth())
        assert r.status == 200, await r.text()
        assert (await r.json())["node_id"] == "node-1"
    assert demo_cluster.nodes[0].state.completions == demo_cluster.nodes[2].state.completions == 0
    doc = await _budget(client)
    assert doc["details"]["queries"] == 6 and doc["consumed_budget"] > 0, doc
    assert (await client.get("/readyz")).status == 200


async def test_consensus_never_asks_a_down_node_to_vote_and_charges_nothing_without_quorum(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(demo_cluster.config(privacy=CONSENSUS_PRIVACY, cache={"enabled": False}))
    _mark_down(client, "node-1", "node-2")
    body = {
        "prompt": q("vote", condition="type 2 diabetes"),
        "require_consensus": True,
        "options": ["metformin", "insulin", "lifestyle"],
    }
    r = await client.post("/v1/inference", json=body, headers=auth())
    assert r.status != 200, await r.text()
    assert "consensus" in (await r.text()).lower()
    assert demo_cluster.nodes[1].state.votes == demo_cluster.nodes[2].state.votes == 0
    assert demo_cluster.nodes[0].state.votes == 0  # too few hospitals: nobody is asked
    doc = await _budget(client)
    assert doc["consumed_budget"] == 0, doc


async def test_the_security_floor_holds_when_every_node_above_it_is_down(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """The node below the policy's minimum is healthy and the only one up: it is still never
    used (503, nothing charged) and it is not counted as configured for the department."""
    nodes = [n.model_dump() for n in demo_cluster.config().nodes]
    nodes[2]["security_level"] = "critical"
    cfg = demo_cluster.config(
        nodes=nodes, privacy={"min_security_level": "critical"}, cache={"enabled": False}
    )
    client = await router(cfg)
    _mark_down(client, "node-2")
    before = _calls(demo_cluster)
    for body in (
        {"prompt": q("floor"), "privacy_budget": 0.2},
        {"prompt": q("floor2"), "privacy_budget": 0.2, "model": PHI_MODEL},
    ):
        r = await client.post("/v1/inference", json=body, headers=auth())
        assert r.status == 503, await r.text()
        assert "(1 configured, all down)" in (await r.json())["error"]["message"]
    assert _calls(demo_cluster) == before
    assert (await _budget(client))["consumed_budget"] == 0


async def test_a_node_ejected_after_failed_calls_gets_nothing_until_its_ejection_ends(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """Outlier ejection (`_failed`) is the other way a configured node is down: its probes
    pass, its calls fail. Once ejected, no request reaches it, and with every node ejected
    the router answers 503 and charges nothing."""
    for n in demo_cluster.nodes:
        n.state.failure_rate = 1.0
    cfg = demo_cluster.config(
        cache={"enabled": False},
        routing={
            "strategy": "round_robin",
            "max_attempts": 3,
            "outlier_consecutive_failures": 1,
            "outlier_ejection_seconds": 60,
        },
    )
    client = await router(cfg)
    r = await client.post("/v1/inference", json={"prompt": q("ej"), "privacy_budget": 0.2}, headers=auth())
    assert r.status == 502, await r.text()
    before = _calls(demo_cluster)
    assert all(before), before  # each node was tried once, and failed
    for n in demo_cluster.nodes:
        n.state.failure_rate = 0.0
    r = await client.post("/v1/inference", json={"prompt": q("ej2"), "privacy_budget": 0.2}, headers=auth())
    assert r.status == 503, await r.text()
    assert _calls(demo_cluster) == before
    assert (await _budget(client))["consumed_budget"] == 0
    assert (await client.get("/readyz")).status == 503


async def test_down_nodes_taken_out_by_real_probes_keep_models_listed_but_answer_503(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """With the router's own probes (failure threshold 2): nothing reaches the nodes after
    they are seen down, the model stays listed (it is configured), /readyz is 503."""
    cfg = demo_cluster.config(cache={"enabled": False})
    client = await router(fast_probes(cfg, failure_threshold=2), probes=True)
    for n in demo_cluster.nodes:
        n.state.healthy = False
    pool = client.server.app[POOL]
    for _ in range(400):
        if not any(st.probe_healthy for st in pool.nodes.values()):
            break
        await asyncio.sleep(0.02)
    assert (await client.get("/readyz")).status == 503
    before = _calls(demo_cluster)
    tok = token(user="bob")
    r = await client.post(
        "/v1/chat/completions",
        json={"model": PHI_MODEL, "messages": [{"role": "user", "content": q("p")}], "stream": True},
        headers=auth(tok),
    )
    assert r.status == 503, await r.text()
    assert _calls(demo_cluster) == before
    models = await (await client.get("/v1/models", headers=auth(tok))).json()
    assert PHI_MODEL in [m["id"] for m in models["data"]]
    bob = await (await client.get("/v1/privacy/budget/bob", headers=auth(tok))).json()
    assert bob["consumed_budget"] == 0
