"""Attacks on the privacy promise against a live router and live nodes (an attack-minded
review): each test is one attempt; the ones that broke it are regression tests for the fix."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web
from fdp_router.runtime import HOLDER
from multidict import CIMultiDict

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, q
from .test_openai_streaming import budget, post_stream, sse_events


def _chunk(content: str, **extra: Any) -> bytes:
    body = {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}], **extra}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def test_a_stream_whose_body_reports_more_than_its_headers_is_cut_off_and_never_cached(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """A node reports the reserved epsilon in its headers (checked before the first byte),
    then, in its stream, a privacy object that says it spent 50x that. The router cannot take
    back what was already relayed, but it must not relay another byte of an answer whose own
    report contradicts the one it was cleared on (the whole-answer path refuses such an
    inconsistent report outright), must count the violation, and must not cache it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        eps = request.headers["X-FDP-Privacy-Epsilon"]
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "X-FDP-Privacy-Epsilon": eps,
                "X-FDP-Privacy-Delta": "0.0",
                "X-FDP-Privacy-Mechanism": "pure_dp",
            }
        )
        await resp.prepare(request)
        await resp.write(_chunk("noisy "))
        over = {"epsilon": float(eps) * 50, "delta": 0.0, "mechanism": "pure_dp"}
        await resp.write(_chunk("RAW-PATIENT-COUNT-17", privacy=over))
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await resp.write(b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "liar",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    body = {
        "model": PHI_MODEL,
        "messages": [{"role": "user", "content": q("liar")}],
        "stream": True,
        "privacy_budget": 0.2,
    }
    resp = await post_stream(str(client.make_url("")), body)
    assert resp.status_code == 200
    assert b"RAW-PATIENT-COUNT-17" not in resp.content
    data, _ = sse_events(resp.content)
    assert "[DONE]" not in data and json.loads(data[-1])["error"]["code"] == "stream_broken"
    rt = client.app[HOLDER].current
    assert len(rt.cache) == 0
    metrics = (await (await client.get("/metrics")).text()).splitlines()
    assert any(
        line.startswith("fdp_node_contract_violations_total") and 'node="liar"' in line for line in metrics
    ), metrics
    assert (await budget(client))["details"]["queries"] == 1  # a byte went out: it stays charged


async def test_odd_sampling_fields_never_count_against_a_node(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """Client-chosen fields a node may not like must be the client's 400 or an answer, never a
    node failure (which would let a client eject hospitals)."""
    client = await router(demo_cluster.config(routing={"outlier_consecutive_failures": 2}))
    odd: list[dict[str, Any]] = [
        {"top_logprobs": 20},
        {"logprobs": True, "top_logprobs": 20},
        {"stop": ["a", "b", "c", "d"]},
        {"stop": ""},
        {"seed": -(2**63)},
        {"top_p": 0},
        {"max_tokens": 1},
        {"temperature": 0},
        {"temperature": 2},
        {"n": 1},
    ]
    for i, extra in enumerate(odd):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": PHI_MODEL, "messages": [{"role": "user", "content": q(f"odd{i}")}], **extra},
            headers=auth(),
        )
        assert r.status in (200, 400), (extra, r.status, await r.text())
    for n in demo_cluster.nodes:
        assert n.state.failures == 0
    metrics = await (await client.get("/metrics")).text()
    assert not any(
        line.startswith("fdp_node_failures_total{") and not line.rstrip().endswith(" 0.0")
        for line in metrics.splitlines()
    )


async def test_a_node_that_sends_its_epsilon_header_twice_is_not_released(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """Two `X-FDP-Privacy-Epsilon` headers, the reserved one first and 50x that second: a
    reader of the first header would release an answer its node says cost more than reserved."""

    async def handler(request: web.Request) -> web.Response:
        eps = request.headers["X-FDP-Privacy-Epsilon"]
        headers = CIMultiDict(
            [
                ("X-FDP-Privacy-Epsilon", eps),
                ("X-FDP-Privacy-Epsilon", repr(float(eps) * 50)),
                ("X-FDP-Privacy-Delta", "0.0"),
                ("X-FDP-Privacy-Mechanism", "pure_dp"),
            ]
        )
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "RAW-17"}}]}
        return web.json_response(body, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "twice",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("twice")}], "privacy_budget": 0.2}
    r = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert r.status == 502 and "RAW-17" not in await r.text()
    assert (await budget(client))["consumed_budget"] == 0
    resp = await post_stream(str(client.make_url("")), {**body, "stream": True})
    assert resp.status_code == 502 and b"RAW-17" not in resp.content
    assert (await budget(client))["consumed_budget"] == 0


async def test_an_unreadable_spend_in_one_place_is_not_outvoted_by_a_fitting_one(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """A node whose headers say it spent `inf` (or NaN, -1, garbage) and whose body says it spent
    the reserved epsilon, or the other way round: the unreadable part must not simply be
    dropped and the answer released on the other."""
    cases = [("inf", None), ("nan", None), ("-1", None), ("lots", None), (None, "inf"), (None, -1)]
    seen: list[tuple[Any, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        eps = request.headers["X-FDP-Privacy-Epsilon"]
        head, body_eps = cases[len(seen)]
        seen.append((head, body_eps))
        headers = {
            "X-FDP-Privacy-Epsilon": head if head is not None else eps,
            "X-FDP-Privacy-Delta": "0.0",
            "X-FDP-Privacy-Mechanism": "pure_dp",
        }
        privacy = {"epsilon": body_eps if body_eps is not None else float(eps), "mechanism": "pure_dp"}
        body = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "RAW-17"}}],
            "privacy": privacy,
        }
        return web.json_response(body, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "unreadable",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    for i, case in enumerate(cases):
        body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q(f"u{i}")}]}
        r = await client.post("/v1/chat/completions", json=body, headers=auth())
        assert r.status == 502 and "RAW-17" not in await r.text(), (case, r.status)
    assert (await budget(client))["consumed_budget"] == 0


async def test_a_burst_of_concurrent_requests_never_spends_past_the_user_budget(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """30 distinct questions at once, each at 0.3, against a per-user budget of 2.0: the
    reservations race, but at most 6 may be released and the ledger never goes over."""
    client = await router()

    async def ask(i: int) -> int:
        body = {
            "model": PHI_MODEL,
            "messages": [{"role": "user", "content": q(f"burst{i}")}],
            "privacy_budget": 0.3,
        }
        r = await client.post("/v1/chat/completions", json=body, headers=auth())
        await r.read()
        return r.status

    statuses = await asyncio.gather(*(ask(i) for i in range(30)))
    assert statuses.count(200) == 6 and set(statuses) == {200, 403}, statuses
    doc = await budget(client)
    assert doc["consumed_budget"] <= 2.0 + 1e-9 and doc["details"]["queries"] == 6
    assert sum(n.state.releases for n in demo_cluster.nodes) == 6


async def test_a_phi_node_declared_public_by_mistake_releases_nothing(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    """A config mix-up: a PHI node's endpoint entered as a Public node. The router sends it
    epsilon 0 for a release; a node keeping the contract refuses (the client's 400, no
    ejection), so no patient-data answer goes out for free."""
    phi = demo_cluster.nodes[0]
    node = {
        "id": "mislabelled",
        "hospital": "hospital-0",
        "endpoint": phi.url,
        "model": PHI_MODEL,
        "privacy": {"data_class": "public", "mechanism": "none"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("mix")}]}
    r = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert r.status == 400, await r.text()
    assert phi.state.releases == 0 and phi.state.failures == 0


async def test_a_delta_header_without_an_epsilon_header_is_not_ignored(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """A pure-DP node whose headers carry only `X-FDP-Privacy-Delta: 0.5` (a delta it was never
    given) and whose body reports the reserved epsilon with delta 0: the header's spend must
    not be dropped because its epsilon header is missing."""

    async def handler(request: web.Request) -> web.Response:
        eps = float(request.headers["X-FDP-Privacy-Epsilon"])
        body = {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "RAW-17"}}],
            "privacy": {"epsilon": eps, "delta": 0.0, "mechanism": "pure_dp"},
        }
        return web.json_response(body, headers={"X-FDP-Privacy-Delta": "0.5"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "delta-only",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("delta")}]}
    r = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert r.status == 502 and "RAW-17" not in await r.text()
    assert (await budget(client))["consumed_budget"] == 0


async def test_a_phi_node_never_sees_the_clients_seed_nor_does_its_basis_text_reach_the_client(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any
) -> None:
    """A client-chosen seed could undo a DP wrapper that seeds its noise from the request; a
    node's free-text `basis` is covered by no mechanism (a node could put an exact count there)."""
    seen: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append(body)
        p = body["fdp_privacy"]
        report = {"epsilon": p["epsilon"], "delta": 0.0, "mechanism": "pure_dp", "basis": "EXACT-COUNT-4711"}
        return web.json_response(
            {
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "privacy": report,
            },
            headers={"X-FDP-Privacy-Epsilon": repr(p["epsilon"]), "X-FDP-Privacy-Mechanism": "pure_dp"},
        )

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    node = {
        "id": "phi",
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }
    client = await router(demo_cluster.config(nodes=[node]))
    body = {"model": PHI_MODEL, "messages": [{"role": "user", "content": q("seed")}], "seed": 1234}
    r = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert r.status == 200, await r.text()
    assert seen and "seed" not in seen[0]
    assert "EXACT-COUNT-4711" not in await r.text()
