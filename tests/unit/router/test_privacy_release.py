"""Every answer released comes from a DP mechanism whose cost the ledger charged.

The audit's attacks (issue 10), each against a real router and real demo nodes over HTTP:
a tiny epsilon on a PHI node, a node that answers a secret in a consensus, two nodes of one
hospital in a consensus, a node that reports more epsilon than reserved or nothing at all,
bad candidate options, and a PHI node without a mechanism.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fdp_router.app import HOLDER
from fdp_router.demo_data import CONDITIONS
from fdp_router.privacy.api import Scope
from fdp_router.privacy.events import gnmax_event
from fdp_router.privacy.filter import ORDERS, filter_epsilon, rdp_curve

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, q, token

DIABETES = next(c for c in CONDITIONS if c.name == "type 2 diabetes")
OPTIONS = list(DIABETES.treatments)
SECRET = "SECRET-H4: patient Jane Roe (MRN 998877) HIV positive"


def consensus(tag: object = "", **extra: Any) -> dict[str, Any]:
    return {
        "prompt": q(tag, condition="type 2 diabetes"),
        "require_consensus": True,
        "options": OPTIONS,
        **extra,
    }


async def budget(client: Any, user: str = "alice") -> dict[str, Any]:
    r = await client.get(f"/v1/privacy/budget/{user}", headers=auth(token(user=user)))
    assert r.status == 200
    return dict(await r.json())


async def test_a_phi_answer_reports_the_charged_epsilon_and_the_node_spent_exactly_that(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q(), "privacy_budget": 0.3}, headers=auth())
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["privacy_cost"] == pytest.approx(0.3)
    assert doc["privacy"]["basis"].startswith("node-side pure_dp mechanism at epsilon 0.3")
    assert any(
        t in doc["response"] for t in next(c for c in CONDITIONS if c.name == "hypertension").treatments
    )
    node = next(n for n in demo_cluster.nodes if n.state.releases == 1)
    assert node.state.releases == 1


@pytest.mark.parametrize("eps", [1e-300, 5e-324, 0.001, 0.009])
async def test_a_tiny_epsilon_is_refused_before_anything_is_spent(
    router: RouterFactory, demo_cluster: Cluster, eps: float
) -> None:
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q(), "privacy_budget": eps}, headers=auth())
    assert r.status == 400, await r.text()
    err = (await r.json())["error"]
    assert err["field"] == "privacy_budget"
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0
    assert (await budget(client))["consumed_budget"] == 0


@pytest.mark.parametrize("bad", [True, "0.5", None, [0.5]])
async def test_privacy_budget_must_be_a_real_number(router: RouterFactory, bad: object) -> None:
    client = await router()
    body: dict[str, Any] = {"prompt": q(), "privacy_budget": bad}
    r = await client.post("/v1/inference", json=body, headers=auth())
    if bad is None:  # JSON null: the policy default, allowed
        assert r.status == 200
        return
    assert r.status == 400
    assert (await r.json())["error"]["field"] == "privacy_budget"


async def test_answer_accuracy_depends_on_epsilon_through_the_node_mechanism(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    # One node only, so every answer comes from the same hospital's mechanism.
    cfg = demo_cluster.config(
        nodes=[demo_cluster.config().nodes[0].model_dump()],
        privacy={
            "budgets": {"per_user": 1e6, "per_department": 1e6, "per_hospital": 1e6},
            "max_epsilon_per_query": 10.0,
        },
        cache={"enabled": False},
    )
    client = await router(cfg)
    answers: dict[float, list[str]] = {0.01: [], 10.0: []}
    for eps, got in answers.items():
        for i in range(40):
            r = await client.post(
                "/v1/inference", json={"prompt": q(f"{eps}-{i}"), "privacy_budget": eps}, headers=auth()
            )
            assert r.status == 200, await r.text()
            got.append((await r.json())["response"])
    # At epsilon 10 the released treatment is (nearly) always the same; at 0.01 it is spread.
    assert max(answers[10.0].count(a) for a in answers[10.0]) >= 38
    assert len(set(answers[0.01])) >= 3


async def test_a_node_that_reports_more_than_reserved_releases_nothing_and_is_refunded(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    for n in demo_cluster.nodes:
        n.state.over_report = 2.0
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q(), "privacy_budget": 0.5}, headers=auth())
    assert r.status == 502, await r.text()
    assert "privacy contract violation (epsilon_over_reservation)" in (await r.json())["error"]["message"]
    assert (await budget(client))["consumed_budget"] == 0
    metrics = await (await client.get("/metrics")).text()
    assert 'fdp_node_contract_violations_total{node="node-' in metrics
    assert 'reason="epsilon_over_reservation"' in metrics


async def test_a_phi_node_that_reports_nothing_is_a_violation(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    for n in demo_cluster.nodes:
        n.state.no_report = True
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q()}, headers=auth())
    assert r.status == 502
    assert "no_report" in (await r.json())["error"]["message"]
    assert (await budget(client))["consumed_budget"] == 0


async def test_a_violating_node_is_failed_over_to_an_honest_one(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    demo_cluster.nodes[0].state.over_report = 3.0
    cfg = demo_cluster.config(routing={"strategy": "round_robin", "max_attempts": 3})
    client = await router(cfg)
    for i in range(3):
        r = await client.post("/v1/inference", json={"prompt": q(i), "privacy_budget": 0.2}, headers=auth())
        assert r.status == 200, await r.text()
        assert (await r.json())["node_id"] != "node-0"


async def test_a_phi_node_without_a_mechanism_is_never_used(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    nodes = [
        {**n.model_dump(), "privacy": {"data_class": "phi", "mechanism": "none"}}
        for n in demo_cluster.config().nodes
    ]
    client = await router(demo_cluster.config(nodes=nodes))
    r = await client.post("/v1/inference", json={"prompt": q()}, headers=auth())
    assert r.status == 403
    err = (await r.json())["error"]
    assert err["reason"] == "no_dp_mechanism" and "nothing was charged" in err["message"]
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0
    assert (await budget(client))["consumed_budget"] == 0


async def test_a_public_node_costs_nothing_and_says_why(router: RouterFactory, demo_cluster: Cluster) -> None:
    demo_cluster.nodes[2].state.data_class = "public"
    nodes = [n.model_dump() for n in demo_cluster.config().nodes]
    nodes[2].update(model="medical-guidelines", privacy={"data_class": "public", "mechanism": "none"})
    client = await router(demo_cluster.config(nodes=nodes))
    r = await client.post(
        "/v1/chat/completions",
        json={
            "model": "medical-guidelines",
            "messages": [{"role": "user", "content": "How is sepsis managed?"}],
        },
        headers=auth(),
    )
    assert r.status == 200, await r.text()
    doc = await r.json()
    assert doc["privacy"]["epsilon"] == 0 and doc["privacy"]["basis"].startswith("public data")
    assert "antibiotics" in doc["choices"][0]["message"]["content"]
    assert (await budget(client))["consumed_budget"] == 0
    # The PHI model reaches only the PHI nodes.
    r = await client.post(
        "/v1/chat/completions",
        json={"model": PHI_MODEL, "messages": [{"role": "user", "content": q()}]},
        headers=auth(),
    )
    assert r.status == 200 and (await r.json())["privacy"]["nodes"][0] in {"node-0", "node-1"}
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": q()}]},
        headers=auth(),
    )
    assert r.status == 404 and (await r.json())["error"]["code"] == "model_not_found"  # OpenAI's envelope


async def test_a_secret_answered_in_consensus_is_never_released(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    demo_cluster.nodes[0].state.vote_text = SECRET
    cfg = demo_cluster.config(
        privacy={
            "budgets": {"per_user": 1e4, "per_department": 1e4, "per_hospital": 1e4},
            "consensus": {"nodes": 3, "min_answers": 2, "sigma": 0.5},
        },
        cache={"enabled": False},
    )
    client = await router(cfg)
    for i in range(30):
        r = await client.post("/v1/inference", json=consensus(i), headers=auth())
        assert r.status == 200, await r.text()
        doc = await r.json()
        assert doc["response"] in OPTIONS
        assert "SECRET" not in doc["response"] and "998877" not in json.dumps(doc)


async def test_two_nodes_of_one_hospital_cast_one_vote_and_the_charge_is_gnmax_per_hospital(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    base = demo_cluster.config()
    # node-0 and node-1 are both hospital A; node-2 is hospital B.
    nodes = (
        base.nodes[0].model_copy(update={"hospital": "A"}),
        base.nodes[1].model_copy(update={"hospital": "A"}),
        base.nodes[2].model_copy(update={"hospital": "B"}),
    )
    sigma = 2.0
    cfg = base.model_copy(
        update={
            "nodes": nodes,
            "privacy": base.privacy.model_copy(
                update={
                    "budgets": base.privacy.budgets.model_copy(update={"per_user": 50.0}),
                    "consensus": base.privacy.consensus.model_copy(
                        update={"nodes": 3, "min_answers": 2, "sigma": sigma}
                    ),
                }
            ),
        }
    )
    client = await router(cfg)
    for i in range(6):
        r = await client.post("/v1/inference", json=consensus(i), headers=auth())
        assert r.status == 200, await r.text()
        asked = (await r.json())["node_id"].split(",")
        assert len(asked) == 2 and {"node-0", "node-1"} & set(asked) and "node-2" in asked
    # Hospital A's spend is exactly 6 GNMax votes at sigma: RDP at alpha=2 is 6 * 2/sigma^2.
    rt = client.server.app[HOLDER].current
    assert rt is not None
    st = await rt.ledger.budget(Scope.HOSPITAL, "A")
    one = rdp_curve(gnmax_event(sigma))
    assert ORDERS[3] == 2.0 and one[3] == pytest.approx(2.0 / sigma**2)
    assert st.extra["queries"] == 6
    assert st.consumed_epsilon == pytest.approx(filter_epsilon([6 * c for c in one], cfg.privacy.delta))


async def test_fewer_distinct_hospitals_than_min_answers_is_502_and_charges_nothing(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    base = demo_cluster.config()
    nodes = tuple(n.model_copy(update={"hospital": "only-one"}) for n in base.nodes)
    client = await router(base.model_copy(update={"nodes": nodes}))
    r = await client.post("/v1/inference", json=consensus(), headers=auth())
    assert r.status == 502
    assert (await r.json())["error"]["type"] == "consensus_failed"
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0
    assert (await budget(client))["consumed_budget"] == 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ([], "options"),
        (["only one"], "options"),
        (["Metformin", " metformin. "], "options[1]"),
        (["a", ""], "options[1]"),
        (["a", "   "], "options[1]"),
        ([f"o{i}" for i in range(33)], "options"),
        (["a", "x" * 501], "options[1]"),
        (["a", 3], "options.1"),
    ],
)
async def test_bad_candidate_options_are_400_and_spend_nothing(
    router: RouterFactory, demo_cluster: Cluster, options: list[Any], field: str
) -> None:
    client = await router()
    r = await client.post("/v1/inference", json=consensus(options=options), headers=auth())
    assert r.status == 400, await r.text()
    assert (await r.json())["error"]["field"] == field
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0


async def test_a_consensus_needs_public_options(router: RouterFactory) -> None:
    client = await router()
    r = await client.post("/v1/inference", json={"prompt": q(), "require_consensus": True}, headers=auth())
    assert r.status == 400
    err = (await r.json())["error"]
    assert err["field"] == "options" and "public candidate answers" in err["message"]


async def test_a_named_candidate_set_from_the_policy(router: RouterFactory, demo_cluster: Cluster) -> None:
    cfg = demo_cluster.config(
        privacy={
            "budgets": {"per_user": 50.0, "per_department": 500.0, "per_hospital": 500.0},
            "consensus": {"candidate_sets": {"diabetes": OPTIONS}},
        }
    )
    client = await router(cfg)
    body = {"prompt": q(condition="type 2 diabetes"), "require_consensus": True, "candidate_set": "diabetes"}
    r = await client.post("/v1/inference", json=body, headers=auth())
    assert r.status == 200, await r.text()
    assert (await r.json())["response"] in OPTIONS
    body["candidate_set"] = "nope"
    r = await client.post("/v1/inference", json=body, headers=auth())
    assert r.status == 400 and (await r.json())["error"]["field"] == "candidate_set"


async def test_an_off_family_question_is_the_clients_400_and_never_ejects_a_node(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(demo_cluster.config(routing={"outlier_consecutive_failures": 2}))
    for i in range(10):
        r = await client.post("/v1/inference", json={"prompt": f"tell me a joke {i}"}, headers=auth())
        assert r.status == 400
        assert "question_not_supported" in (await r.json())["error"]["message"]
    assert (await budget(client))["consumed_budget"] == 0
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["nodes"]["healthy"] == 3
    r = await client.post("/v1/inference", json={"prompt": q()}, headers=auth())
    assert r.status == 200


@pytest.mark.parametrize("role", ["assistant", "tool", "system", "developer"])
async def test_a_chat_without_a_user_message_never_reaches_a_node(
    router: RouterFactory, demo_cluster: Cluster, role: str
) -> None:
    client = await router()
    for _ in range(8):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": PHI_MODEL, "messages": [{"role": role, "content": q()}]},
            headers=auth(),
        )
        assert r.status == 400
        assert (await r.json())["error"]["field"] == "messages"
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0
    assert (await (await client.get("/readyz")).json())["nodes"]["healthy"] == 3


def test_gnmax_rdp_is_alpha_over_sigma_squared() -> None:
    for sigma in (0.5, 2.0, 4.0):
        curve = rdp_curve(gnmax_event(sigma))
        assert math.isclose(curve[3], 2.0 / sigma**2, rel_tol=1e-9)


async def test_a_request_naming_a_specialization_reaches_only_nodes_that_list_it(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    nodes = [n.model_dump() for n in demo_cluster.config().nodes]
    nodes[1]["specializations"] = ["oncology"]
    client = await router(demo_cluster.config(nodes=nodes, cache={"enabled": False}))
    for i in range(6):
        r = await client.post(
            "/v1/inference", json={"prompt": q(i), "specialization": "oncology"}, headers=auth()
        )
        assert r.status == 200, await r.text()
        assert (await r.json())["node_id"] == "node-1"
    r = await client.post(
        "/v1/inference", json={"prompt": q(), "specialization": "dermatology"}, headers=auth()
    )
    assert r.status == 503
    assert "specialization 'dermatology'" in (await r.json())["error"]["message"]


async def test_nodes_below_the_policy_security_level_are_never_used(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    nodes = [n.model_dump() for n in demo_cluster.config().nodes]
    nodes[2]["security_level"] = "critical"
    cfg = demo_cluster.config(nodes=nodes, privacy={"min_security_level": "high"}, cache={"enabled": False})
    client = await router(cfg)
    for i in range(6):
        r = await client.post("/v1/inference", json={"prompt": q(i)}, headers=auth())
        assert r.status == 200, await r.text()
        assert (await r.json())["node_id"] == "node-2"
    assert demo_cluster.nodes[0].state.completions == demo_cluster.nodes[1].state.completions == 0
