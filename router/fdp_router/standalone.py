"""`fdp-router standalone-demo`: three DEMO hospital nodes and the router on 127.0.0.1.

Uses ``examples/standalone/router.yaml`` (or ``--config``). Everything runs in this one
process; the ledger and a fresh dev JWT secret go to a temporary directory (unless
``$FDP_JWT_SECRET`` is set), so a demo never touches real state. Prints a working ``curl``
and an ``openai`` SDK snippet. With ``--smoke`` it uses free ports, sends a few queries
(plain, OpenAI SDK, consensus, a cache hit, the budget), prints them and exits 0 only if
all succeeded.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from fdp_router.app import Settings, create_app
from fdp_router.auth import mint_token
from fdp_router.config import RouterConfig, load_config
from fdp_router.demo_node import DemoState, create_demo_app

REPO_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "standalone" / "router.yaml"


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    return runner, int(sockets[0].getsockname()[1]) if sockets else port


def _snippets(base: str, token: str) -> str:
    return f"""
Router: {base}   (DEMO nodes, canned answers; Ctrl-C to stop)

curl:
  curl -s {base}/v1/inference \\
    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
    -d '{{"prompt": "First-line treatment for hypertension?", "privacy_budget": 0.1}}'

openai SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{token}")
  r = client.chat.completions.create(
      model="demo",
      messages=[{{"role": "user", "content": "How is sepsis managed?"}}],
      extra_body={{"privacy_budget": 0.2, "require_consensus": False}},
  )
  print(r.choices[0].message.content, r.model_extra["privacy"])
"""


async def _smoke(base: str, token: str) -> bool:
    ok = True
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        steps: list[tuple[str, str, str, dict[str, Any] | None]] = [
            (
                "inference",
                "POST",
                "/v1/inference",
                {"prompt": "Treatment of hypertension?", "privacy_budget": 0.1},
            ),
            (
                "cache hit",
                "POST",
                "/v1/inference",
                {"prompt": "Treatment of hypertension?", "privacy_budget": 0.1},
            ),
            (
                "consensus",
                "POST",
                "/v1/inference",
                {"prompt": "Diabetes first-line drug?", "require_consensus": True},
            ),
            ("budget", "GET", "/v1/privacy/budget/dr-demo", None),
        ]
        for name, method, path, body in steps:
            async with http.request(method, base + path, json=body) as resp:
                doc = await resp.json()
                good = resp.status == 200
                ok &= good
                show = (
                    {
                        k: doc.get(k)
                        for k in (
                            "response",
                            "privacy_cost",
                            "remaining_budget",
                            "node_id",
                            "cached",
                            "consensus_reached",
                            "confidence_score",
                            "remaining_budget",
                        )
                        if k in doc
                    }
                    if path != "/v1/privacy/budget/dr-demo"
                    else doc
                )
                print(f"[{'ok' if good else 'FAILED'}] {name}: HTTP {resp.status} {json.dumps(show)[:400]}")
    try:
        from openai import AsyncOpenAI
    except ImportError:
        print("[skip] openai SDK not installed")
        return ok
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
    try:
        r = await client.chat.completions.create(
            model="demo",
            messages=[{"role": "user", "content": "How is sepsis managed?"}],
            extra_body={"privacy_budget": 0.2},
        )
        privacy = (r.model_extra or {}).get("privacy")
        print(f"[ok] openai SDK: {r.choices[0].message.content!r} privacy={json.dumps(privacy)}")
    except Exception as exc:
        print(f"[FAILED] openai SDK: {exc}")
        ok = False
    finally:
        await client.close()
    return ok


async def run_standalone(config_path: str | None = None, smoke: bool = False) -> int:
    cfg = load_config(config_path or REPO_EXAMPLE)
    tmp = Path(tempfile.mkdtemp(prefix="fdp-standalone-"))
    env_name = cfg.auth.hs256_secret_env or "FDP_JWT_SECRET"
    secret = (os.environ.get(env_name) or secrets.token_hex(32)).encode()
    host = "127.0.0.1"
    runners: list[web.AppRunner] = []
    nodes = []
    try:
        for n in cfg.nodes:
            port = 0 if smoke else (urlsplit(n.endpoint).port or 80)
            runner, real_port = await _start(create_demo_app(DemoState(name=n.id)), host, port)
            runners.append(runner)
            nodes.append(n.model_copy(update={"endpoint": f"http://{host}:{real_port}"}))
        data = cfg.model_dump()
        data["nodes"] = [n.model_dump() for n in nodes]
        data["ledger"]["sqlite_path"] = str(tmp / "ledger.sqlite")
        run_cfg = RouterConfig.model_validate(data)
        config_file = tmp / "router.json"
        config_file.write_text(json.dumps(run_cfg.model_dump(mode="json"), indent=2), encoding="utf-8")
        settings = Settings(config=run_cfg, config_path=config_file, hs256_secret=secret, access_log=False)
        runner, port = await _start(create_app(settings), host, 0 if smoke else cfg.server.port)
        runners.append(runner)
        base = f"http://{host}:{port}"
        token = mint_token(
            secret,
            user="dr-demo",
            department="cardiology",
            roles=["clinician"],
            issuer=cfg.auth.issuer,
            audience=cfg.auth.audience,
            ttl_seconds=8 * 3600,
        )
        print(_snippets(base, token), flush=True)
        print(f"(config: {config_file}; edit it and the router reloads; ledger in {tmp})", flush=True)
        if smoke:
            ok = await _smoke(base, token)
            print("smoke: OK" if ok else "smoke: FAILED", flush=True)
            return 0 if ok else 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        for r in reversed(runners):
            await r.cleanup()
