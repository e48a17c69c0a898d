"""`fdp-router standalone-demo`: DEMO hospital nodes and the router on 127.0.0.1.

Uses ``examples/standalone/router.yaml`` (or ``--config``): three PHI nodes, each answering
from its own synthetic patient table through a pure-DP mechanism, and one Public node. Each
configured node becomes a demo node of its declared data class. Everything runs in this one
process; the ledger and a fresh dev JWT secret go to a temporary directory (unless
``$FDP_JWT_SECRET`` is set), so a demo never touches real state. Prints a working ``curl``
and an ``openai`` SDK snippet. With ``--smoke`` it uses free ports, sends queries (a PHI
answer, a cache hit, accuracy at a small and a large epsilon, a consensus over public options,
a Public node, an unsupported question, the budget, the OpenAI SDK whole and streaming),
prints them and exits 0
only if each got the status it should.
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

PHI_QUESTION = "What is the most common first-line treatment for hypertension among our patients?"
CONSENSUS_QUESTION = "Most common first-line treatment for type 2 diabetes among our patients?"
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
Router: {base}   (DEMO nodes on synthetic data; Ctrl-C to stop)

A PHI node answers from its patients through a DP mechanism at the epsilon you ask:
  curl -s {base}/v1/inference \\
    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
    -d '{{"prompt": "{PHI_QUESTION}", "privacy_budget": 0.5}}'

A consensus over public options (one vote per hospital, GNMax):
  curl -s {base}/v1/inference \\
    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
    -d '{{"prompt": "{CONSENSUS_QUESTION}", "require_consensus": true, \\
          "candidate_set": "diabetes-first-line", "model": "patient-stats"}}'

Streaming (server-sent events, as OpenAI sends them; the privacy summary is in the last chunk):
  curl -sN {base}/v1/chat/completions \\
    -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \\
    -d '{{"model": "patient-stats", "stream": true, "privacy_budget": 0.5,
         "messages": [{{"role": "user", "content": "{PHI_QUESTION}"}}]}}'

openai SDK (pip install openai); model "medical-guidelines" is the Public node (0 epsilon):
  from openai import OpenAI
  client = OpenAI(base_url="{base}/v1", api_key="{token}")
  r = client.chat.completions.create(
      model="patient-stats",
      messages=[{{"role": "user", "content": "{PHI_QUESTION}"}}],
      extra_body={{"privacy_budget": 0.5}},
  )
  print(r.choices[0].message.content, r.model_extra["privacy"])
"""


Step = tuple[str, str, str, dict[str, Any] | None, int]


def _steps() -> list[Step]:
    """(name, method, path, body, expected status): what the smoke run shows."""
    steps: list[Step] = [
        (
            "PHI node, epsilon 0.5",
            "POST",
            "/v1/inference",
            {"prompt": PHI_QUESTION, "privacy_budget": 0.5},
            200,
        ),
        (
            "same request again (cache hit, 0)",
            "POST",
            "/v1/inference",
            {"prompt": PHI_QUESTION, "privacy_budget": 0.5},
            200,
        ),
    ]
    for eps in (0.02, 2.0):
        for i in range(4):
            steps.append(
                (
                    f"accuracy at epsilon {eps:g} #{i + 1}",
                    "POST",
                    "/v1/inference",
                    {
                        "prompt": f"{PHI_QUESTION} (run {eps}-{i})",
                        "privacy_budget": eps,
                        "model": "patient-stats",
                    },
                    200,
                )
            )
    steps += [
        (
            "consensus over public options",
            "POST",
            "/v1/inference",
            {
                "prompt": CONSENSUS_QUESTION,
                "require_consensus": True,
                "candidate_set": "diabetes-first-line",
                "model": "patient-stats",
            },
            200,
        ),
        (
            "Public node (no patient data)",
            "POST",
            "/v1/inference",
            {"prompt": "How is sepsis managed?", "model": "medical-guidelines"},
            200,
        ),
        (
            "a question no DP mechanism answers",
            "POST",
            "/v1/inference",
            {"prompt": "Tell me about patient Jane Roe", "model": "patient-stats"},
            400,
        ),
        ("budget", "GET", "/v1/privacy/budget/dr-demo", None, 200),
    ]
    return steps


_SHOW = ("response", "privacy_cost", "remaining_budget", "node_id", "cached", "consensus_reached")


async def _smoke(base: str, token: str) -> bool:
    ok = True
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for name, method, path, body, expected in _steps():
            async with http.request(method, base + path, json=body) as resp:
                doc = await resp.json()
                good = resp.status == expected
                ok &= good
                if "error" in doc:
                    show: Any = doc["error"].get("message", doc["error"])
                elif path.startswith("/v1/privacy/budget"):
                    show = {k: doc.get(k) for k in ("total_budget", "consumed_budget", "remaining_budget")}
                else:
                    show = {k: doc.get(k) for k in _SHOW if k in doc}
                    show["basis"] = doc.get("privacy", {}).get("basis")
                print(f"[{'ok' if good else 'FAILED'}] {name}: HTTP {resp.status} {json.dumps(show)[:400]}")
    try:
        from openai import AsyncOpenAI
    except ImportError:
        print("[skip] openai SDK not installed")
        return ok
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=token, max_retries=0)
    try:
        r = await client.chat.completions.create(
            model="patient-stats",
            messages=[{"role": "user", "content": PHI_QUESTION + " (SDK)"}],
            extra_body={"privacy_budget": 0.5},
        )
        privacy = (r.model_extra or {}).get("privacy")
        print(f"[ok] openai SDK: {r.choices[0].message.content!r} privacy={json.dumps(privacy)}")
        # Streaming: the node's privacy report is checked before the first byte; the privacy
        # summary rides in the last chunk.
        stream = await client.chat.completions.create(
            model="patient-stats",
            messages=[{"role": "user", "content": PHI_QUESTION + " (stream)"}],
            extra_body={"privacy_budget": 0.5},
            stream=True,
        )
        parts: list[str] = []
        last_privacy = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            last_privacy = (chunk.model_extra or {}).get("privacy") or last_privacy
        streamed = "".join(parts)
        good = bool(streamed) and last_privacy is not None
        ok &= good
        print(
            f"[{'ok' if good else 'FAILED'}] openai SDK, stream=True: {len(parts)} chunk(s) {streamed!r} "
            f"privacy={json.dumps(last_privacy)}"
        )
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
        for i, n in enumerate(cfg.nodes):
            port = 0 if smoke else (urlsplit(n.endpoint).port or 80)
            state = DemoState(name=n.id, hospital=n.hospital, seed=i, data_class=n.privacy.data_class.value)
            runner, real_port = await _start(create_demo_app(state), host, port)
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
