"""Fixtures for the router tests: live demo nodes, a real router app, tokens.

Everything is a real HTTP server on 127.0.0.1 (aiohttp's test servers); the ledger is the
privacy core's real SQLite ledger in a temporary directory.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from fdp_router.app import Settings, create_app
from fdp_router.auth import mint_token
from fdp_router.config import RouterConfig
from fdp_router.demo_node import DemoState, create_demo_app

SECRET = b"test-secret-" + b"x" * 40
PHI_MODEL = "patient-stats"


def q(tag: object = "", condition: str = "hypertension") -> str:
    """A question the demo PHI nodes answer through their DP mechanism; `tag` makes it unique
    (the answer cache is keyed by the exact request)."""
    return f"Most common first-line treatment for {condition} among our patients? {tag}".strip()


def token(
    user: str = "alice",
    department: str = "cardiology",
    roles: list[str] | None = None,
    **kw: Any,
) -> str:
    return mint_token(
        SECRET,
        user=user,
        department=department,
        roles=roles or ["clinician"],
        issuer="fdp-test",
        audience="fdp-router-test",
        **kw,
    )


def auth(tok: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok or token()}"}


@dataclass
class DemoNode:
    state: DemoState
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@dataclass
class Cluster:
    nodes: list[DemoNode]
    tmp: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> RouterConfig:
        """A router config over the live demo nodes; `overrides` replace top-level sections."""
        data: dict[str, Any] = {
            "nodes": [
                {
                    "id": f"node-{i}",
                    "hospital": f"hospital-{i}",
                    "endpoint": n.url,
                    "model": PHI_MODEL,
                    "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
                }
                for i, n in enumerate(self.nodes)
            ],
            "privacy": {
                "default_epsilon_per_query": 0.1,
                "min_epsilon_per_query": 0.01,
                "max_epsilon_per_query": 1.0,
                "budgets": {"per_user": 2.0, "per_department": 50.0, "per_hospital": 500.0},
                "consensus": {"nodes": 3, "min_answers": 2, "sigma": 1.0},
            },
            "routing": {
                "strategy": "round_robin",
                "seed": 7,
                "connect_timeout_seconds": 1.0,
                "read_timeout_seconds": 5.0,
            },
            "auth": {
                "algorithms": ["HS256"],
                "issuer": "fdp-test",
                "audience": "fdp-router-test",
                "hs256_secret_env": None,
            },
            "ledger": {
                "backend": "sqlite",
                "sqlite_path": str(self.tmp / "ledger.sqlite"),
                "audit_key_file": str(self.audit_key),
            },
            # Off here: the tests send bursts from one user and dozens of bad tokens from one
            # address. test_security_limits.py turns each limit on and attacks it.
            "rate_limits": {
                bucket: {"rate_per_second": 0, "burst": 0}
                for bucket in (
                    "per_user",
                    "per_department",
                    "failed_auth_per_client",
                    "failed_auth_per_subject",
                )
            },
        }
        for k, v in overrides.items():
            if isinstance(v, dict) and isinstance(data.get(k), dict):
                data[k] = {**data[k], **v}
            else:
                data[k] = v
        return RouterConfig.model_validate(data)

    @property
    def audit_key(self) -> Path:
        p = self.tmp / "audit.key"
        if not p.exists():
            p.write_text(secrets.token_hex(32) + "\n")
        return p


@pytest.fixture
async def demo_cluster(aiohttp_server: Callable[..., Awaitable[TestServer]], tmp_path: Path) -> Cluster:
    nodes = []
    for i in range(3):
        state = DemoState(name=f"node-{i}", hospital=f"hospital-{i}", seed=i)
        server = await aiohttp_server(create_demo_app(state))
        nodes.append(DemoNode(state, server))
    return Cluster(nodes=nodes, tmp=tmp_path)


RouterFactory = Callable[..., Awaitable[TestClient]]
NodeHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fast_probes(cfg: RouterConfig, failure_threshold: int) -> RouterConfig:
    """`cfg` with every node probed every 50 ms and down after `failure_threshold` failures."""
    fast = {"failure_threshold": failure_threshold, "interval_seconds": 0.05}
    nodes = tuple(
        n.model_copy(update={"health_check": n.health_check.model_copy(update=fast)}) for n in cfg.nodes
    )
    return cfg.model_copy(update={"nodes": nodes})


def node_report(request: web.Request) -> dict[str, str]:
    """The privacy headers of a pure-DP node that spent exactly the ε the router sent."""
    return {
        "X-FDP-Privacy-Epsilon": request.headers["X-FDP-Privacy-Epsilon"],
        "X-FDP-Privacy-Delta": "0.0",
        "X-FDP-Privacy-Mechanism": "pure_dp",
    }


async def custom_node(
    aiohttp_server: Callable[..., Awaitable[TestServer]], handler: NodeHandler, node_id: str = "custom"
) -> dict[str, Any]:
    """Serve `handler` as a PHI pure-DP hospital node's chat completions; its config entry."""
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    server = await aiohttp_server(app)
    return {
        "id": node_id,
        "hospital": "h9",
        "endpoint": str(server.make_url("")).rstrip("/"),
        "model": PHI_MODEL,
        "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
    }


@pytest.fixture
def router(aiohttp_client: Callable[..., Awaitable[TestClient]], demo_cluster: Cluster) -> RouterFactory:
    """`await router(cfg=None, **settings)` -> a test client of a live router app."""

    async def make(cfg: RouterConfig | None = None, **settings: Any) -> TestClient:
        settings.setdefault("hs256_secret", SECRET)
        settings.setdefault("probes", False)
        settings.setdefault("access_log", False)
        return await aiohttp_client(create_app(Settings(config=cfg or demo_cluster.config(), **settings)))

    return make
