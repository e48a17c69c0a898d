"""GET /v1/models (OpenAI's list shape, per department), model selection by node model or
router-level alias, and OpenAI's error envelope on the OpenAI-compatible routes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fdp_router.config import RouterConfig
from pydantic import ValidationError

from .conftest import PHI_MODEL, Cluster, RouterFactory, auth, q, token


def _nodes(cluster: Cluster) -> list[dict[str, Any]]:
    nodes = [n.model_dump() for n in cluster.config().nodes]
    nodes[2].update(
        model="medical-guidelines",
        departments=("oncology",),
        privacy={"data_class": "public", "mechanism": "none"},
    )
    return nodes


async def test_models_lists_what_the_department_may_use(router: RouterFactory, demo_cluster: Cluster) -> None:
    demo_cluster.nodes[2].state.data_class = "public"
    client = await router(demo_cluster.config(nodes=_nodes(demo_cluster)))
    r = await client.get("/v1/models", headers=auth())
    assert r.status == 200
    doc = await r.json()
    assert doc["object"] == "list"
    assert [m["id"] for m in doc["data"]] == ["fdp-router", PHI_MODEL]
    stats = doc["data"][1]
    assert stats["object"] == "model" and stats["owned_by"] == "fdp-router"
    assert isinstance(stats["created"], int)
    assert stats["fdp"]["data_classes"] == ["phi"] and stats["fdp"]["mechanisms"] == ["pure_dp"]
    assert stats["fdp"]["hospitals"] == 2 and stats["fdp"]["kind"] == "node_model"
    onc = await (await client.get("/v1/models", headers=auth(token(department="oncology")))).json()
    assert [m["id"] for m in onc["data"]] == ["fdp-router", "medical-guidelines", PHI_MODEL]
    one = await client.get("/v1/models/medical-guidelines", headers=auth(token(department="oncology")))
    assert (await one.json())["fdp"]["data_classes"] == ["public"]
    # Not usable by cardiology: as OpenAI answers a model one may not use.
    r = await client.get("/v1/models/medical-guidelines", headers=auth())
    assert r.status == 404
    err = (await r.json())["error"]
    assert err["code"] == "model_not_found" and err["type"] == "invalid_request_error"
    assert err["param"] == "model"
    r = await client.get("/v1/models")
    assert r.status == 401 and (await r.json())["error"]["type"] == "authentication_error"


async def test_a_model_alias_selects_its_nodes(router: RouterFactory, demo_cluster: Cluster) -> None:
    cfg = demo_cluster.config(routing={"model_aliases": {"stats-eu": ["node-1", "node-2"]}})
    client = await router(cfg)
    ids = [m["id"] for m in (await (await client.get("/v1/models", headers=auth())).json())["data"]]
    assert ids == ["fdp-router", PHI_MODEL, "stats-eu"]
    seen = set()
    for i in range(6):
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "stats-eu", "messages": [{"role": "user", "content": q(f"alias {i}")}]},
            headers=auth(),
        )
        assert r.status == 200, await r.text()
        doc = await r.json()
        assert doc["model"] == "stats-eu"
        seen.add(doc["privacy"]["nodes"][0])
    assert seen == {"node-1", "node-2"}


def test_aliases_must_name_nodes_and_not_shadow_models(demo_cluster: Cluster) -> None:
    with pytest.raises(ValidationError, match="unknown: \\['nope'\\]"):
        demo_cluster.config(routing={"model_aliases": {"x": ["nope"]}})
    with pytest.raises(ValidationError, match="a node model has this name"):
        demo_cluster.config(routing={"model_aliases": {PHI_MODEL: ["node-0"]}})
    with pytest.raises(ValidationError, match="not a usable model name"):
        demo_cluster.config(routing={"model_aliases": {"fdp-router": ["node-0"]}})
    assert RouterConfig().routing.model_aliases == {}


@pytest.mark.parametrize(
    ("body", "status", "etype", "code", "param"),
    [
        ({"messages": []}, 400, "invalid_request_error", "invalid_request", "messages"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 9}, 400, "invalid_request_error",
         "invalid_request", "temperature"),
        ({"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": True}}, 400,
         "invalid_request_error", "invalid_request", "stream_options"),
        ({"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, 400, "invalid_request_error",
         "invalid_request", "top_logprobs"),
        ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}, 400,
         "invalid_request_error", "invalid_request", "tool_choice"),
        ({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}, 404, "invalid_request_error",
         "model_not_found", "model"),
    ],
)  # fmt: skip
async def test_openai_error_envelope(
    router: RouterFactory, body: dict[str, Any], status: int, etype: str, code: str, param: str
) -> None:
    client = await router()
    r = await client.post("/v1/chat/completions", json=body, headers=auth())
    assert r.status == status
    err = (await r.json())["error"]
    assert {"message", "type", "param", "code"} <= set(err)
    assert (err["type"], err["code"], err["param"]) == (etype, code, param), err


async def test_every_error_of_the_openai_routes_is_the_envelope(router: RouterFactory) -> None:
    client = await router()
    checks = [
        (await client.post("/v1/chat/completions", data=b"{", headers=auth()), 400, "invalid_request_error"),
        (await client.post("/v1/chat/completions", json={"messages": []}), 401, "authentication_error"),
        (await client.get("/v1/chat/completions", headers=auth()), 405, "invalid_request_error"),
        (await client.post("/v1/chat/completions", data=b"x" * 1_100_000, headers=auth()), 400,
         "invalid_request_error"),
        (await client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": q()}],
         "department": "oncology"}, headers=auth()), 403, "permission_error"),
    ]  # fmt: skip
    for resp, status, etype in checks:
        assert resp.status == status, await resp.text()
        assert resp.headers["Content-Type"].startswith("application/json")
        err = (await resp.json())["error"]
        assert err["type"] == etype and {"message", "param", "code"} <= set(err), err
    # /v1/inference keeps its documented shape.
    r = await client.post("/v1/inference", json={"prompt": ""}, headers=auth())
    err = (await r.json())["error"]
    assert err["type"] == "invalid_request" and err["field"] == "prompt" and "code" not in err


async def test_a_request_aiohttp_cannot_parse_is_answered_in_json(router: RouterFactory) -> None:
    client = await router()
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Bad: \x00\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400" and b"application/json" in head
    err = json.loads(body)["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "bad_http_request"
    assert "\x00" not in err["message"]
