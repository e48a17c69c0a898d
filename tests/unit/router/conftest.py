"""Fixtures for the router tests: live demo nodes, a real router app, tokens.

Everything is a real HTTP server on 127.0.0.1 (aiohttp's test servers); the ledger is the
privacy core's real SQLite ledger in a temporary directory.

How the router is served (`serving`): aiohttp's test server cancels a handler whose client
disconnected (``TestServer`` passes ``handler_cancellation=True`` to its runner), while
``fdp-router serve`` (``web.run_app`` in ``service_cli.py``) and ``standalone-demo`` leave it
running (aiohttp's default, ``handler_cancellation=False``): the handler finds the client gone
only where it looks (a write that fails, ``connected()``), or never. A test of what a client
disconnect costs runs in the production mode (`production_serving`), or in both
(`both_servings`) where the claim must hold also for a handler that is cancelled (as it is
at shutdown). Every other test keeps aiohttp's test server.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
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
from fdp_router.runtime import METRICS

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


def reservation_states(cluster: Cluster) -> dict[str, str]:
    """Every reservation of the cluster's ledger: its id -> reserved, committed or released."""
    with sqlite3.connect(cluster.tmp / "ledger.sqlite") as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, state FROM fdp_reservations")}


async def settled_reservations(cluster: Cluster, timeout: float = 3.0) -> list[str]:
    """The states of the cluster's reservations once none is left `reserved` (or `timeout`
    seconds on, as they are): a commit record is queued (``commit_mode: deferred``) and rides
    with a later batch, so right after a handler returned its reservation may still read
    `reserved` although it is settled."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while "reserved" in (states := list(reservation_states(cluster).values())) and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return states


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


async def assert_no_internal_error(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing counted as the router's own error, nothing logged at ERROR (a client's doing)."""
    assert await metric(client, 'fdp_errors_total{type="internal_error"}') == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def metric(client: TestClient, name: str) -> float:
    """The value of one sample of the router's /metrics (`name` with its labels, as exposed);
    0 when the series does not exist yet."""
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


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


CANCELLING = "cancelling"  # aiohttp's test server: a handler whose client left is cancelled
PRODUCTION = "production"  # as `fdp-router serve` runs: the handler runs on (ProductionServer)
both_servings = pytest.mark.parametrize("serving", [CANCELLING, PRODUCTION], indirect=True)
production_serving = pytest.mark.parametrize("serving", [PRODUCTION], indirect=True)


class ProductionServer(TestServer):
    """A test server that serves the app as ``web.run_app`` does in ``fdp-router serve``
    (``service_cli.py``): ``handler_cancellation=False`` and ``access_log=None``; its other
    runner settings (keep-alive 75 s, shutdown 60 s) are aiohttp's defaults there as here.
    ``TestServer.start_server`` always passes ``handler_cancellation=True`` to `_make_runner`
    (a second one through its kwargs is a TypeError), so the runner is made here."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        kwargs.update(handler_cancellation=False, access_log=None)
        return web.AppRunner(self.app, **kwargs)


@pytest.fixture
def serving(request: pytest.FixtureRequest) -> str:
    """How `router` serves its apps: `CANCELLING` unless a test parametrizes it (indirect)."""
    mode: str = getattr(request, "param", CANCELLING)
    assert mode in (CANCELLING, PRODUCTION), mode
    return mode


def in_flight(client: TestClient) -> int:
    """The router's requests still being handled (its ``fdp_in_flight_requests`` gauge: the
    middleware counts a request until its handler has returned or raised, refund included)."""
    text = client.server.app[METRICS].render().decode()
    found = re.search(r"^fdp_in_flight_requests (\S+)$", text, re.MULTILINE)
    assert found, "no fdp_in_flight_requests in the metrics"
    return int(float(found.group(1)))


async def settled(client: TestClient, timeout: float = 10.0) -> None:
    """Wait until the router handles no request: a handler whose client left has finished
    (refunded, committed, stopped reading its node). In production mode nothing cancels it,
    so this is the moment its outcome can be read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (n := in_flight(client)) > 0:
        assert loop.time() < deadline, (
            f"{n} request(s) still handled {timeout} s on: a handler runs for no one"
        )
        await asyncio.sleep(0.02)


@pytest.fixture
async def router(
    aiohttp_client: Callable[..., Awaitable[TestClient]], demo_cluster: Cluster, serving: str
) -> AsyncIterator[RouterFactory]:
    """`await router(cfg=None, **settings)` -> a test client of a live router app, served as
    `serving` says. In production mode every router must have settled when the test ends:
    nothing cancels a handler whose client left, and one still running at the app's cleanup
    would use a closed ledger."""
    clients: list[TestClient] = []

    async def make(cfg: RouterConfig | None = None, **settings: Any) -> TestClient:
        settings.setdefault("hs256_secret", SECRET)
        settings.setdefault("probes", False)
        settings.setdefault("access_log", False)
        app = create_app(Settings(config=cfg or demo_cluster.config(), **settings))
        client = await aiohttp_client(ProductionServer(app) if serving == PRODUCTION else TestServer(app))
        clients.append(client)
        return client

    yield make
    if serving == PRODUCTION:
        for client in clients:
            if not client.server.closed:
                await settled(client)
