"""The router's HTTP API over real round trips: shapes, error statuses, charging rules."""

from __future__ import annotations

import asyncio
import json
import re

from fdp_router.app import HOLDER
from fdp_router.demo_data import CONDITIONS
from fdp_router.privacy.api import Scope

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, fast_probes, q, token

CONSENSUS_PRIVACY = {
    "budgets": {"per_user": 10.0, "per_department": 50.0, "per_hospital": 500.0},
    "consensus": {"nodes": 3, "min_answers": 2, "sigma": 2.0},
}
DIABETES = next(c for c in CONDITIONS if c.name == "type 2 diabetes")
DIABETES_OPTIONS = list(DIABETES.treatments)


def consensus_body(tag: object = "") -> dict[str, object]:
    return {
        "prompt": q(tag, condition="type 2 diabetes"),
        "require_consensus": True,
        "options": DIABETES_OPTIONS,
    }


async def test_inference_returns_the_original_shape_and_charges_the_requested_epsilon(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    resp = await client.post(
        "/v1/inference",
        json={"prompt": q("How to treat hypertension?"), "privacy_budget": 0.3},
        headers=auth(),
    )
    assert resp.status == 200, await resp.text()
    doc = await resp.json()
    assert doc["success"] is True
    assert "hypertension" in doc["response"]
    assert abs(doc["privacy_cost"] - 0.3) < 1e-6
    assert doc["node_id"].startswith("node-")
    assert doc["cached"] is False
    assert doc["remaining_budget"] < 2.0
    assert doc["consensus_reached"] is None
    for key in ("processing_time", "confidence_score", "request_id"):
        assert key in doc
    assert resp.headers["X-Request-Id"] == doc["request_id"]
    assert resp.headers["X-FDP-Cache"] == "miss"
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["remaining_budget"] == doc["remaining_budget"]
    assert budget["consumed_budget"] > 0


async def test_budget_exhaustion_is_403_and_no_node_is_contacted(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(demo_cluster.config(cache={"enabled": False}))
    statuses = []
    for i in range(40):
        r = await client.post(
            "/v1/inference", json={"prompt": q(f"q{i} hypertension"), "privacy_budget": 1.0}, headers=auth()
        )
        statuses.append(r.status)
        if r.status == 403:
            doc = await r.json()
            break
    else:
        raise AssertionError(f"budget never ran out: {statuses}")
    assert doc["error"]["type"] == "privacy_budget_exceeded"
    assert doc["error"]["scope"] == "user"
    assert doc["error"]["requested"] > doc["error"]["available"]
    seen = sum(n.state.completions for n in demo_cluster.nodes)
    assert seen == statuses.count(200)
    # Once exhausted, further requests are refused before any backend call.
    for _ in range(3):
        r = await client.post(
            "/v1/inference", json={"prompt": q("again"), "privacy_budget": 1.0}, headers=auth()
        )
        assert r.status == 403
    assert sum(n.state.completions for n in demo_cluster.nodes) == seen
    # Another user still has budget: the refusal is per unit.
    r = await client.post("/v1/inference", json={"prompt": q("fever")}, headers=auth(token(user="bob")))
    assert r.status == 200


async def test_cache_hit_costs_nothing_and_says_so(router: RouterFactory, demo_cluster: Cluster) -> None:
    client = await router()
    body = {"prompt": q("Sepsis bundle?"), "privacy_budget": 0.5}
    first = await (await client.post("/v1/inference", json=body, headers=auth())).json()
    second_resp = await client.post("/v1/inference", json=body, headers=auth())
    second = await second_resp.json()
    assert first["cached"] is False and first["privacy_cost"] > 0
    assert second["cached"] is True
    assert second["privacy_cost"] == 0.0
    assert second["privacy"]["cache_note"]
    assert second_resp.headers["X-FDP-Privacy-Cost"] == "0"
    assert second["response"] == first["response"]
    assert second["remaining_budget"] == first["remaining_budget"]
    assert sum(n.state.completions for n in demo_cluster.nodes) == 1
    # Another department never gets the cached answer: it pays and reaches a node.
    other = await client.post(
        "/v1/inference", json=body, headers=auth(token(user="carol", department="oncology"))
    )
    assert (await other.json())["cached"] is False
    assert sum(n.state.completions for n in demo_cluster.nodes) == 2


async def test_invalid_input_is_400_naming_the_field_and_charges_nothing(router: RouterFactory) -> None:
    client = await router()
    cases = [
        ({"prompt": ""}, "prompt"),
        ({"prompt": q("x"), "privacy_budget": -1}, "privacy_budget"),
        ({"prompt": q("x"), "privacy_budget": 5.0}, "privacy_budget"),  # above max_epsilon_per_query
        ({"prompt": q("x"), "priority": 99}, "priority"),
        ({"prompt": q("x"), "surprise": 1}, "surprise"),
        ({"max_tokens": 3}, "prompt"),
    ]
    for body, field in cases:
        r = await client.post("/v1/inference", json=body, headers=auth())
        assert r.status == 400, (body, await r.text())
        err = (await r.json())["error"]
        assert err["type"] == "invalid_request"
        assert field in err["message"], (field, err)
    r = await client.post("/v1/inference", data=b"{not json", headers=auth())
    assert r.status == 400
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["consumed_budget"] == 0


async def test_missing_token_is_401_with_json_error(router: RouterFactory) -> None:
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q("x")})
    assert r.status == 401
    assert (await r.json())["error"]["type"] == "unauthorized"
    assert "Bearer" in r.headers["WWW-Authenticate"]


async def test_budget_of_another_user_needs_auditor_or_admin(router: RouterFactory) -> None:
    client = await router()
    r = await client.get("/v1/privacy/budget/bob", headers=auth())
    assert r.status == 403
    assert (await r.json())["error"]["type"] == "forbidden"
    for role in ("auditor", "admin"):
        r = await client.get("/v1/privacy/budget/bob", headers=auth(token(user="eve", roles=[role])))
        assert r.status == 200
        assert (await r.json())["user_id"] == "bob"


async def test_department_in_body_must_match_the_token(router: RouterFactory) -> None:
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q("x"), "department": "oncology"}, headers=auth())
    assert r.status == 403
    assert "department" in (await r.json())["error"]["message"]


async def test_node_not_allowed_for_department_is_never_used(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    cfg = demo_cluster.config()
    nodes = [n.model_copy(update={"departments": ("oncology",)}) for n in cfg.nodes]
    nodes[2] = cfg.nodes[2].model_copy(update={"departments": ("cardiology",)})
    client = await router(cfg.model_copy(update={"nodes": tuple(nodes)}))
    for i in range(6):
        r = await client.post("/v1/inference", json={"prompt": q(f"asthma {i}")}, headers=auth())
        assert (await r.json())["node_id"] == "node-2"
    r = await client.post(
        "/v1/inference", json={"prompt": q("x")}, headers=auth(token(department="radiology"))
    )
    assert r.status == 503
    assert "radiology" in (await r.json())["error"]["message"]


async def test_backend_failure_fails_over_and_charges_once(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    demo_cluster.nodes[0].state.failure_rate = 1.0
    client = await router(demo_cluster.config(routing={"strategy": "round_robin", "max_attempts": 3}))
    r = await client.post(
        "/v1/inference", json={"prompt": q("diabetes"), "privacy_budget": 0.2}, headers=auth()
    )
    assert r.status == 200
    doc = await r.json()
    assert doc["node_id"] != "node-0"
    assert demo_cluster.nodes[0].state.failures == 1
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["details"]["queries"] == 1  # one committed charge, the failed attempt was refunded
    ledger = client.app[HOLDER].current.ledger
    assert (await ledger.budget(Scope.HOSPITAL, "hospital-0")).consumed_epsilon == 0  # refunded
    charged = doc["node_id"].replace("node-", "hospital-")
    assert (await ledger.budget(Scope.HOSPITAL, charged)).consumed_epsilon > 0


async def test_all_backends_failing_is_502_and_nothing_charged(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    for n in demo_cluster.nodes:
        n.state.failure_rate = 1.0
    client = await router(demo_cluster.config(routing={"max_attempts": 3}))
    r = await client.post("/v1/inference", json={"prompt": q("x"), "privacy_budget": 0.5}, headers=auth())
    assert r.status == 502
    assert (await r.json())["error"]["type"] == "backend_error"
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["consumed_budget"] == 0


async def test_backend_timeout_is_504_and_nothing_charged(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    for n in demo_cluster.nodes:
        n.state.delay = 2.0
    client = await router(demo_cluster.config(routing={"read_timeout_seconds": 0.2, "max_attempts": 1}))
    r = await client.post("/v1/inference", json={"prompt": q("x")}, headers=auth())
    assert r.status == 504
    assert (await r.json())["error"]["type"] == "backend_timeout"
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["consumed_budget"] == 0


async def test_consensus_with_one_node_down_still_answers(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    demo_cluster.nodes[1].state.failure_rate = 1.0
    client = await router(demo_cluster.config(privacy=CONSENSUS_PRIVACY))
    r = await client.post("/v1/inference", json=consensus_body("drug?"), headers=auth())
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["response"] in DIABETES_OPTIONS
    assert isinstance(doc["consensus_reached"], bool)
    assert 0.0 <= doc["confidence_score"] <= 1.0
    assert set(doc["node_id"].split(",")) == {"node-0", "node-2"}
    assert doc["privacy_cost"] > 0  # GNMax at sigma=1 is charged


async def test_consensus_with_too_few_answers_is_an_error_and_charges_nothing(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    demo_cluster.nodes[1].state.failure_rate = 1.0
    demo_cluster.nodes[2].state.failure_rate = 1.0
    client = await router(demo_cluster.config(privacy=CONSENSUS_PRIVACY))
    r = await client.post("/v1/inference", json=consensus_body(), headers=auth())
    assert r.status == 502
    err = (await r.json())["error"]
    assert err["type"] == "consensus_failed"
    assert "nothing was charged" in err["message"]
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["consumed_budget"] == 0


async def test_overload_is_429_with_retry_after(router: RouterFactory, demo_cluster: Cluster) -> None:
    for n in demo_cluster.nodes:
        n.state.delay = 1.5
    client = await router(
        demo_cluster.config(
            overload={"max_concurrency": 1, "max_queue": 1, "queue_timeout_seconds": 30.0},
            cache={"enabled": False},
        )
    )
    results = await asyncio.gather(
        *(
            client.post("/v1/inference", json={"prompt": q(f"p{i}")}, headers=auth(token(user=f"u{i}")))
            for i in range(4)
        )
    )
    statuses = sorted(r.status for r in results)
    assert statuses.count(200) == 2 and statuses.count(429) == 2, statuses
    rejected = next(r for r in results if r.status == 429)
    assert int(rejected.headers["Retry-After"]) >= 1
    assert (await rejected.json())["error"]["type"] == "overloaded"


async def test_health_ready_metrics_openapi(router: RouterFactory) -> None:
    client = await router()
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["nodes"]["healthy"] == 3
    assert await (await client.get("/v1/health")).json() == {"status": "up"}  # details need a token
    health = await (await client.get("/v1/health", headers=auth())).json()
    assert health["status"] == "healthy"
    assert len(health["components"]["nodes"]) == 3
    await client.post(
        "/v1/inference", json={"prompt": q("fever")}, headers=auth(token(user="patient-zero-user"))
    )
    text = await (await client.get("/metrics")).text()
    assert 'fdp_requests_total{route="/v1/inference",status="200"} 1.0' in text
    assert "fdp_epsilon_spent_total" in text
    assert "fdp_cache_hit_ratio" in text and "fdp_queue_depth" in text
    assert "patient-zero-user" not in text  # no per-user labels
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/v1/inference", "/v1/chat/completions", "/v1/privacy/budget/{user_id}", "/v1/admin/config"):
        assert path in spec["paths"]
    refs = re.findall(r'"\$ref": "#/([^"]+)"', json.dumps(spec))
    for ref in refs:  # every reference resolves inside the document
        node = spec
        for part in ref.split("/"):
            node = node[part]
    assert "ChatMessage" in spec["components"]["schemas"]
    assert (await client.get("/nope")).status == 404


async def test_readyz_is_503_when_every_node_is_down(router: RouterFactory, demo_cluster: Cluster) -> None:
    for n in demo_cluster.nodes:
        n.state.healthy = False
    cfg = demo_cluster.config()
    client = await router(fast_probes(cfg, failure_threshold=1), probes=True)
    for _ in range(400):
        if (await client.get("/readyz")).status == 503:
            break
        await asyncio.sleep(0.05)
    assert (await client.get("/readyz")).status == 503
    r = await client.post("/v1/inference", json={"prompt": q("x")}, headers=auth())
    assert r.status == 503
    assert int(r.headers["Retry-After"]) > 0


async def test_nodes_the_routers_probes_see_down_are_503_and_back_without_a_config_change(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """The operator keeps a down node in the config: the router's own probes take it out and
    bring it back. A model whose nodes are all down is 503 (OpenAI SDKs retry), never 404,
    and costs nothing; the first passing probe serves it again, the config unchanged."""
    cfg = demo_cluster.config()
    client = await router(fast_probes(cfg, failure_threshold=1), probes=True)
    for n in demo_cluster.nodes:
        n.state.healthy = False
    for _ in range(400):
        if (await client.get("/readyz")).status == 503:
            break
        await asyncio.sleep(0.05)
    body = {"model": PHI_MODEL, "privacy_budget": 0.5, "messages": [{"role": "user", "content": q("down")}]}
    r = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert r.status == 503, await r.text()
    err = (await r.json())["error"]
    assert err["code"] == "no_node_available" and "all down" in err["message"], err
    assert int(r.headers["Retry-After"]) > 0
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["consumed_budget"] == 0
    for n in demo_cluster.nodes:
        n.state.healthy = True
    for _ in range(400):
        r = await client.post("/v1/chat/completions", json=body, headers=auth())
        if r.status == 200:
            break
        await asyncio.sleep(0.05)
    assert r.status == 200, await r.text()


async def test_admin_endpoints_need_admin_and_answer_409_when_managed(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    admin = auth(token(user="root", roles=["admin"]))
    assert (await client.get("/v1/admin/nodes", headers=auth())).status == 403
    nodes = await (await client.get("/v1/admin/nodes", headers=admin)).json()
    assert {n["id"] for n in nodes["nodes"]} == {"node-0", "node-1", "node-2"}
    r = await client.delete("/v1/admin/nodes/node-1", headers=admin)
    assert r.status == 200
    nodes = await (await client.get("/v1/admin/nodes", headers=admin)).json()
    assert {n["id"] for n in nodes["nodes"]} == {"node-0", "node-2"}
    r = await client.post(
        "/v1/admin/nodes", json={"id": "bad", "hospital": "h", "endpoint": "ftp://x"}, headers=admin
    )
    assert r.status == 400 and "endpoint" in (await r.json())["error"]["message"]

    managed = await router(demo_cluster.config(managed_by={"namespace": "health", "name": "edge"}))
    for method, path in (
        ("GET", "/v1/admin/nodes"),
        ("PUT", "/v1/admin/config"),
        ("GET", "/v1/admin/config"),
    ):
        r = await managed.request(method, path, headers=admin, json={})
        assert r.status == 409
        err = (await r.json())["error"]
        assert "FederatedRouter health/edge" in err["message"]
        assert err["managed_by"]["name"] == "edge"


async def test_admin_config_put_applies_a_new_generation(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    admin = auth(token(user="root", roles=["admin"]))
    before = await (await client.get("/v1/admin/config", headers=admin)).json()
    cfg = before["config"]
    cfg["routing"]["strategy"] = "latency_aware"
    r = await client.put("/v1/admin/config", json=cfg, headers=admin)
    assert r.status == 200, await r.text()
    after = await r.json()
    assert after["generation"] == before["generation"] + 1
    assert client.app[HOLDER].current.balancer.name == "latency_aware"
    cfg["privacy"]["delta"] = 0.5
    r = await client.put("/v1/admin/config", json=cfg, headers=admin)
    assert r.status == 400 and "delta" in (await r.json())["error"]["message"]
    assert client.app[HOLDER].current.generation == after["generation"]


async def test_hospital_budget_exhaustion_moves_traffic_then_refuses(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(
        demo_cluster.config(
            privacy={
                "max_epsilon_per_query": 0.5,
                "budgets": {"per_user": 10.0, "per_department": 100.0, "per_hospital": 1.2},
            },
            routing={"strategy": "privacy_aware", "seed": 3},
            cache={"enabled": False},
        )
    )
    served: list[str] = []
    for i in range(30):
        r = await client.post(
            "/v1/inference",
            json={"prompt": q(f"q{i}"), "privacy_budget": 0.5},
            headers=auth(token(user=f"u{i}")),
        )
        doc = await r.json()
        if r.status != 200:
            break
        served.append(doc["node_id"])
    else:
        raise AssertionError("hospital budgets never ran out")
    assert r.status == 403
    assert doc["error"]["type"] == "privacy_budget_exceeded"
    assert doc["error"]["scope"] == "hospital"
    assert set(served) == {"node-0", "node-1", "node-2"}  # every hospital paid until it could not
    completions = sum(n.state.completions for n in demo_cluster.nodes)
    assert completions == len(served)  # the refused request reached no node


async def test_failing_node_is_ejected_after_consecutive_failures(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    demo_cluster.nodes[0].state.failure_rate = 1.0
    client = await router(
        demo_cluster.config(
            routing={"strategy": "round_robin", "max_attempts": 3, "outlier_consecutive_failures": 2},
            privacy={"budgets": {"per_user": 10.0, "per_department": 100.0, "per_hospital": 100.0}},
            cache={"enabled": False},
        )
    )
    for i in range(12):
        r = await client.post("/v1/inference", json={"prompt": q(f"q{i}")}, headers=auth())
        assert r.status == 200  # failover hides the bad node from clients
    assert demo_cluster.nodes[0].state.failures == 2  # then it was out of rotation
    admin = auth(token(user="root", roles=["admin"]))
    nodes = {n["id"]: n for n in (await (await client.get("/v1/admin/nodes", headers=admin)).json())["nodes"]}
    assert nodes["node-0"]["ejected"] is True and nodes["node-0"]["healthy"] is False
    assert 'fdp_node_healthy{node="node-0"} 0.0' in await (await client.get("/metrics")).text()


async def test_parallel_requests_never_overspend_a_budget(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(demo_cluster.config(cache={"enabled": False}))
    sequential = await router(
        demo_cluster.config(
            cache={"enabled": False}, ledger={"sqlite_path": str(demo_cluster.tmp / "seq.sqlite")}
        )
    )
    allowed = 0
    while (
        await sequential.post(
            "/v1/inference", json={"prompt": q(f"s{allowed}"), "privacy_budget": 0.7}, headers=auth()
        )
    ).status == 200:
        allowed += 1
    results = await asyncio.gather(
        *(
            client.post("/v1/inference", json={"prompt": q(f"p{i}"), "privacy_budget": 0.7}, headers=auth())
            for i in range(25)
        )
    )
    statuses = [r.status for r in results]
    assert set(statuses) <= {200, 403}
    assert statuses.count(200) == allowed  # exactly what fits, however the requests interleave
    budget = await (await client.get("/v1/privacy/budget/alice", headers=auth())).json()
    assert budget["consumed_budget"] <= budget["total_budget"]


def _reserve_records(demo_cluster: Cluster) -> list[dict[str, object]]:
    """The sealed reserve records of the cluster's ledger, opened with its audit key."""
    import sqlite3

    from fdp_router.privacy.audit import parse_keyring, unseal
    from fdp_router.privacy.ledger.core import AUDIT_COLUMNS

    keyring = parse_keyring(demo_cluster.audit_key.read_text(), "audit key")
    with sqlite3.connect(demo_cluster.tmp / "ledger.sqlite") as conn:
        rows = conn.execute(
            f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit WHERE kind = 'reserve' ORDER BY seq"
        ).fetchall()
    return [unseal(keyring, dict(zip(AUDIT_COLUMNS, row, strict=True))) for row in rows]


async def test_every_reservation_names_the_node_it_was_made_for(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """The reserve record (durable before any node is called) names the node, so the trail
    says who was asked even when the commit record is deferred: here a failed first attempt
    (refunded), the node that answered, and the three hospitals' nodes of a consensus vote."""
    demo_cluster.nodes[0].state.failure_rate = 1.0
    cfg = demo_cluster.config(
        routing={"strategy": "round_robin", "max_attempts": 3}, privacy=CONSENSUS_PRIVACY
    )
    client = await router(cfg)
    r = await client.post("/v1/inference", json={"prompt": q("names"), "privacy_budget": 0.2}, headers=auth())
    assert r.status == 200, await r.text()
    answered = (await r.json())["node_id"]
    demo_cluster.nodes[0].state.failure_rate = 0.0
    r = await client.post("/v1/inference", json=consensus_body("names"), headers=auth())
    assert r.status == 200, await r.text()
    records = _reserve_records(demo_cluster)
    assert [rec["nodes"] for rec in records] == [["node-0"], [answered], ["node-0", "node-1", "node-2"]]
    assert [rec["hospitals"] for rec in records[:2]] == [
        ["hospital-0"],
        [answered.replace("node-", "hospital-")],
    ]
