"""Hospital servers as they are deployed: per-node credentials (a bearer API key, extra
headers), the OpenAI-compatible base path, the health check's path and method (with the
credentials), and per-node timeouts. A recording server stands in for a gateway that requires
a key."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from fdp_router.backends import node_headers
from fdp_router.config import HospitalNodeConfig
from fdp_router.runtime import POOL

from .conftest import Cluster, RouterFactory, auth

KEY = "sk-hospital-" + "k" * 24


def gateway(seen: list[tuple[str, str, dict[str, str]]], delay: float = 0.0) -> web.Application:
    """An OpenAI-compatible 'gateway' under /openai/v2 that requires the key (401 otherwise)."""

    async def check(request: web.Request) -> None:
        seen.append((request.method, request.path, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            raise web.HTTPUnauthorized(
                text='{"error": {"message": "bad key"}}', content_type="application/json"
            )

    async def chat(request: web.Request) -> web.Response:
        await check(request)
        await asyncio.sleep(delay)
        body = await request.json()
        answer = {"role": "assistant", "content": f"ok {body['model']}"}
        return web.json_response({"choices": [{"index": 0, "message": answer, "finish_reason": "stop"}]})

    async def models(request: web.Request) -> web.Response:
        await check(request)
        return web.json_response({"object": "list", "data": []})

    app = web.Application()
    app.router.add_post("/openai/v2/chat/completions", chat)
    app.router.add_get("/openai/v2/models", models)  # aiohttp answers HEAD with it
    return app


def node(url: str, tmp: Path, **kw: Any) -> dict[str, Any]:
    (tmp / "key").write_text(KEY + "\n")
    (tmp / "headers.json").write_text(json.dumps({"X-Tenant": "hospital-7"}))
    return {
        "id": "gw",
        "hospital": "h7",
        "endpoint": url,
        "model": "general",
        "api_base_path": "/openai/v2",
        "auth": {"api_key_file": str(tmp / "key"), "headers_file": str(tmp / "headers.json")},
        "health_check": {
            "path": "/openai/v2/models",
            "method": "HEAD",
            "interval_seconds": 0.2,
            "timeout_seconds": 0.2,
        },
        "privacy": {"data_class": "public", "mechanism": "none"},
        **kw,
    }


async def test_a_gateway_with_a_key_a_base_path_and_its_own_health_check(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, tmp_path: Path
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    server = await aiohttp_server(gateway(seen))
    url = str(server.make_url("")).rstrip("/")
    client = await router(demo_cluster.config(nodes=[node(url, tmp_path)]), probes=True)
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "general", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(),
    )
    assert r.status == 200, await r.text()
    assert (await r.json())["choices"][0]["message"]["content"] == "ok general"
    posts = [h for m, p, h in seen if m == "POST"]
    assert posts and posts[0]["Authorization"] == f"Bearer {KEY}" and posts[0]["X-Tenant"] == "hospital-7"
    assert posts[0]["X-FDP-Privacy-Epsilon"] == "0.0"
    for _ in range(50):
        if any(m == "HEAD" for m, _, _ in seen):
            break
        await asyncio.sleep(0.05)
    probes = [(p, h) for m, p, h in seen if m == "HEAD"]
    assert probes and probes[0][0] == "/openai/v2/models" and probes[0][1]["Authorization"] == f"Bearer {KEY}"
    assert client.app[POOL].describe()[0]["healthy"] is True
    # The key is never in what the admin API or the health page shows.
    assert KEY not in json.dumps(client.app[POOL].describe())


async def test_a_per_node_read_timeout_overrides_routing(
    router: RouterFactory, demo_cluster: Cluster, aiohttp_server: Any, tmp_path: Path
) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    server = await aiohttp_server(gateway(seen, delay=0.5))
    url = str(server.make_url("")).rstrip("/")
    cfg = demo_cluster.config(
        nodes=[node(url, tmp_path, read_timeout_seconds=0.1)], routing={"max_attempts": 1}
    )
    client = await router(cfg)
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "general", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(),
    )
    assert r.status == 504 and (await r.json())["error"]["code"] == "backend_timeout"


def test_credentials_are_read_and_checked_when_the_config_is_applied(tmp_path: Path) -> None:
    cfg = HospitalNodeConfig.model_validate(node("http://h:1", tmp_path))
    assert node_headers(cfg) == {"X-Tenant": "hospital-7", "Authorization": f"Bearer {KEY}"}
    bad = [
        ({"api_key_file": str(tmp_path / "missing")}, "cannot read"),
        ({"headers_file": str(tmp_path / "key")}, "JSON object"),
    ]
    (tmp_path / "reserved.json").write_text(json.dumps({"X-FDP-Privacy-Epsilon": "9"}))
    bad.append(({"headers_file": str(tmp_path / "reserved.json")}, "set by the router"))
    (tmp_path / "two.json").write_text(json.dumps({"Authorization": "Basic x"}))
    bad.append(
        ({"headers_file": str(tmp_path / "two.json"), "api_key_file": str(tmp_path / "key")}, "both set")
    )
    (tmp_path / "spaces").write_text("two words")
    bad.append(({"api_key_file": str(tmp_path / "spaces")}, "one token"))
    # Anything that would end or corrupt the request head the node client writes: a name
    # with a final newline ('$' matched before it), control characters in a value.
    for i, smuggled in enumerate(
        [{"X-A\n": "v"}, {"X-A": "v\r\nX-Injected: 1"}, {"X-A": "v\x00"}, {"X-A": "v\x7f"}]
    ):
        (tmp_path / f"inject{i}.json").write_text(json.dumps(smuggled))
        bad.append(({"headers_file": str(tmp_path / f"inject{i}.json")}, "not a valid header"))
    for auth_cfg, message in bad:
        with pytest.raises(ValueError, match=message) as exc:
            node_headers(cfg.model_copy(update={"auth": cfg.auth.model_copy(update=auth_cfg)}))
        assert KEY not in str(exc.value)


async def test_a_bad_credential_file_keeps_the_previous_config(
    router: RouterFactory, demo_cluster: Cluster, tmp_path: Path
) -> None:
    from fdp_router.runtime import apply_config

    client = await router()
    broken = demo_cluster.config(
        nodes=[node("http://127.0.0.1:9", tmp_path, auth={"api_key_file": str(tmp_path / "gone")})]
    )
    with pytest.raises(ValueError, match="api_key_file"):
        await apply_config(client.app, broken)
    assert [n["id"] for n in client.app[POOL].describe()] == ["node-0", "node-1", "node-2"]
