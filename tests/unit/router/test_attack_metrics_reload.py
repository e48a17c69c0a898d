"""Attack review of the metrics across a hot reload: a node removed by a config reload while
a call to it is in flight must not leave a wrong series behind."""

from __future__ import annotations

import asyncio

import pytest
from fdp_router.backends import BackendPool
from fdp_router.config import HospitalNodeConfig, RoutingConfig
from fdp_router.metrics import Metrics

from .test_node_client import PAYLOAD, SENT, whole


async def test_a_node_removed_mid_call_leaves_no_negative_in_flight_gauge() -> None:
    """configure() drops the removed node's fdp_node_in_flight series; the call still in
    flight then ends with `_end` -> child(...).dec(), which creates the series again at -1
    (the deferred series as the direct one before it): a scrape shows
    fdp_node_in_flight{node="n1"} -1.0 for a node that no longer exists, until restart."""
    loop = asyncio.get_running_loop()

    class Slow(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            loop.call_later(0.2, self.t.write, whole())  # type: ignore[attr-defined]

    srv = await loop.create_server(Slow, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    routing = RoutingConfig()
    metrics = Metrics()
    pool = BackendPool(routing, metrics)
    await pool.start()
    node = HospitalNodeConfig(
        id="n1",
        hospital="h1",
        endpoint=f"http://127.0.0.1:{port}",
        privacy={"data_class": "phi", "mechanism": "pure_dp"},  # type: ignore[arg-type]
    )
    other = node.model_copy(update={"id": "n2"})
    try:
        pool.configure((node,), routing)
        call = asyncio.ensure_future(pool.chat("n1", PAYLOAD, SENT))
        await asyncio.sleep(0.05)
        assert metrics.registry.get_sample_value("fdp_node_in_flight", {"node": "n1"}) == 1.0
        pool.configure((other,), routing)  # hot reload: n1 is gone
        await call
        value = metrics.registry.get_sample_value("fdp_node_in_flight", {"node": "n1"})
        assert value in (None, 0.0), f'fdp_node_in_flight{{node="n1"}} {value} after n1 was removed'
    finally:
        await pool.close()
        srv.close()


async def test_a_node_removed_mid_call_that_fails_recreates_no_series() -> None:
    """The removed node's failing call must not bring back its failure counter or a
    healthy=0 gauge (an alert for a node that no longer exists)."""
    loop = asyncio.get_running_loop()

    class Broken(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            loop.call_later(0.2, self.t.close)  # type: ignore[attr-defined]

    srv = await loop.create_server(Broken, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    routing = RoutingConfig(outlier_consecutive_failures=1)
    metrics = Metrics()
    pool = BackendPool(routing, metrics)
    await pool.start()
    node = HospitalNodeConfig(
        id="n1",
        hospital="h1",
        endpoint=f"http://127.0.0.1:{port}",
        privacy={"data_class": "phi", "mechanism": "pure_dp"},  # type: ignore[arg-type]
    )
    try:
        pool.configure((node,), routing)
        call = asyncio.ensure_future(pool.chat("n1", PAYLOAD, SENT))
        await asyncio.sleep(0.05)
        pool.configure((node.model_copy(update={"id": "n2"}),), routing)
        with pytest.raises(Exception):
            await call
        for name in ("fdp_node_healthy", "fdp_node_failures_total", "fdp_node_in_flight"):
            assert metrics.registry.get_sample_value(name, {"node": "n1"}) is None, name
    finally:
        await pool.close()
        srv.close()
