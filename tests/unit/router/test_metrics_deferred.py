"""The deferred metric series (``metrics.py``): what a scrape shows is exactly what direct
prometheus_client updates would have shown."""

from __future__ import annotations

import random
import re

import pytest
from fdp_router.metrics import Metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


def _samples(text: bytes, prefix: str = "fdp_") -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line.startswith(prefix) and "_created" not in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


WATCHED = r"fdp_(requests|request_duration|in_flight|queue_depth)"


def test_deferred_series_render_as_direct_updates() -> None:
    m = Metrics()
    r = CollectorRegistry()
    buckets = tuple(m.latency._upper_bounds[:-1])
    requests = Counter("fdp_requests", "x", ["route", "status"], registry=r)
    latency = Histogram("fdp_request_duration_seconds", "x", ["route"], buckets=buckets, registry=r)
    in_flight = Gauge("fdp_in_flight_requests", "x", registry=r)
    queue = Gauge("fdp_queue_depth", "x", registry=r)
    rng = random.Random(7)
    for step in range(3000):
        route = rng.choice(["/a", "/b"])
        status = rng.choice(["200", "500"])
        m.child(m.requests, route, status).inc()
        requests.labels(route, status).inc()
        value = rng.choice([0.0, 0.001, 0.0025, 1e-5, 3.0, 99.0, rng.random()])
        m.child(m.latency, route).observe(value)
        latency.labels(route).observe(value)
        op = rng.randrange(3)
        if op == 0:
            m.child(m.in_flight).inc()
            in_flight.inc()
        elif op == 1:
            m.child(m.in_flight).dec(2)
            in_flight.dec(2)
        else:
            n = rng.randrange(5)
            m.child(m.queue_depth).set(n)
            queue.set(n)
            m.child(m.queue_depth).inc()
            queue.inc()
        if step % 997 == 0:  # scrapes in between
            m.render()
    ours = {k: v for k, v in _samples(m.render()).items() if re.match(WATCHED, k)}
    direct = _samples(generate_latest(r))
    assert ours.keys() == direct.keys()
    for name, value in direct.items():
        # The sums add the same numbers in another order: equal up to rounding.
        assert ours[name] == (pytest.approx(value, rel=1e-12) if "_sum" in name else value), name


def test_every_collection_sees_pending_updates() -> None:
    m = Metrics()
    m.child(m.cache, "miss").inc()
    m.child(m.cache, "miss").inc(2)
    assert m.registry.get_sample_value("fdp_cache_lookups_total", {"result": "miss"}) == 3.0
    m.child(m.epsilon_spent, "cardiology").inc(0.5)
    assert m.registry.get_sample_value("fdp_epsilon_spent_total", {"department": "cardiology"}) == 0.5


def test_deferred_series_check_like_prometheus_client() -> None:
    m = Metrics()
    with pytest.raises(ValueError):
        m.child(m.requests, "/only-one-label")
    with pytest.raises(ValueError):
        m.child(m.cache, "hit").inc(-1)


def test_a_removed_series_drops_its_pending_updates() -> None:
    m = Metrics()
    m.child(m.node_in_flight, "n1").inc(3)
    m.remove(m.node_in_flight, "n1")
    assert "fdp_node_in_flight{" not in m.render().decode()
