"""A DEMO hospital node: a tiny OpenAI-compatible server with canned answers.

Not a model. ``fdp-router demo-node`` runs it for the standalone quickstart, the tests and
the benchmarks. Answers come deterministically from a small local table (keyword match on
the last user message), so several demo nodes agree and consensus can be shown. Optional
``delay`` and ``failure_rate`` (deterministic: every k-th request fails) simulate slow or
flaky hospitals; with a certificate it serves HTTPS and can require client certificates
(mTLS). ``GET /stats`` reports how many completions it served (tests use it to prove a
refused request never reached a node).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

DEMO_TABLE: dict[str, str] = {
    "hypertension": "First-line treatment for hypertension is lifestyle change plus a thiazide, "
    "ACE inhibitor, ARB or calcium-channel blocker, per current guidelines.",
    "diabetes": "Metformin is the usual first-line drug for type 2 diabetes, with diet and exercise.",
    "sepsis": "Suspected sepsis: take cultures, give broad-spectrum antibiotics within an hour, and fluids.",
    "fever": "Fever in adults: treat the cause; paracetamol for comfort; seek care above 39.5 C "
    "or with red flags.",
    "asthma": "Asthma control: inhaled corticosteroid as the base, a reliever as needed, "
    "check inhaler technique.",
}
DEFAULT_ANSWER = "This demo node has no answer for that question in its local table."


@dataclass
class DemoState:
    name: str
    delay: float = 0.0
    failure_rate: float = 0.0
    table: dict[str, str] = field(default_factory=lambda: dict(DEMO_TABLE))
    completions: int = 0
    failures: int = 0
    health_checks: int = 0
    healthy: bool = True


DEMO = web.AppKey("demo", DemoState)


def answer_for(table: dict[str, str], text: str) -> str:
    low = text.lower()
    for key in sorted(table):
        if key in low:
            return table[key]
    return DEFAULT_ANSWER


async def _chat(request: web.Request) -> web.Response:
    st = request.app[DEMO]
    st.completions += 1
    try:
        body = await request.json()
        messages = body["messages"]
        last = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
    except (ValueError, KeyError, TypeError, StopIteration):
        return web.json_response(
            {"error": {"type": "invalid_request", "message": "messages required"}}, status=400
        )
    if st.delay:
        await asyncio.sleep(st.delay)
    if st.failure_rate > 0 and (st.completions * st.failure_rate) % 1.0 < st.failure_rate - 1e-12:
        st.failures += 1
        return web.json_response(
            {"error": {"type": "demo_failure", "message": "simulated failure"}}, status=503
        )
    text = answer_for(st.table, last)
    return web.json_response(
        {
            "id": f"demo-{st.name}-{st.completions}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "demo"),
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": len(last.split()),
                "completion_tokens": len(text.split()),
                "total_tokens": 0,
            },
            "system_fingerprint": f"demo-node-{st.name}",
        }
    )


async def _health(request: web.Request) -> web.Response:
    st = request.app[DEMO]
    st.health_checks += 1
    if not st.healthy:
        return web.json_response({"status": "unhealthy", "node": st.name}, status=503)
    return web.json_response({"status": "ok", "node": st.name, "demo": True})


async def _stats(request: web.Request) -> web.Response:
    st = request.app[DEMO]
    return web.json_response({"node": st.name, "completions": st.completions, "failures": st.failures})


def create_demo_app(state: DemoState) -> web.Application:
    app = web.Application()
    app[DEMO] = state
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/health", _health)
    app.router.add_get("/stats", _stats)
    return app


def server_ssl_context(cert: str, key: str, client_ca: str | None = None) -> ssl.SSLContext:
    """Serving TLS; with `client_ca`, client certificates signed by it are REQUIRED (mTLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def load_table(path: str | None) -> dict[str, str]:
    if not path:
        return dict(DEMO_TABLE)
    data: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError("table: must be a JSON object of keyword -> answer strings")
    return {k.lower(): v for k, v in data.items()}
