"""Prometheus metrics of one router app, in its own registry (so tests and reloads never
collide). Labels are of bounded cardinality: route, status, error type, node, department
(configured units), outcome — never a user.

Created by ``app.py``; updated by the middleware, ``service.py`` and ``backends.py``.

One process (the default): `Metrics.child` hands out *deferred* series for the hot path: a
plain float (counters, gauges) or a list of bucket counts (histograms) that the event loop
updates without prometheus_client's lock, its label validation or its bucket loop. They are
folded into the prometheus_client series whenever the registry is collected (``/metrics``,
``registry.get_sample_value``), before anything is read, so every scrape sees exactly what
it would have seen with direct updates. Event loop only (not thread-safe), like the router.

Several worker processes (``fdp-router serve --workers N``, ``workers.py``): prometheus_client's
multiprocess mode, switched on by ``PROMETHEUS_MULTIPROC_DIR`` in each worker's environment.
Every worker writes its values to files there; `render` then reads them all
(MultiProcessCollector): counters and histograms are summed over the workers, each gauge
is merged as its ``multiprocess_mode`` says (ignored in a single process).
"""

from __future__ import annotations

import contextlib
import os
from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# A ledger operation is a durable write: sub-millisecond on a fast disk, seconds only when the
# database is in trouble (then it ends at ledger.timeouts.operation_seconds).
LEDGER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _DeferredCounter:
    """A counter series' increments since the last collection."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("Counters can only be incremented by non-negative amounts.")
        self.pending += amount

    def flush(self, real: Any) -> None:
        if self.pending:
            real.inc(self.pending)
            self.pending = 0.0


class _DeferredGauge:
    """A gauge series' last `set` (None: none since the last collection) and the increments
    after it."""

    __slots__ = ("assigned", "delta")

    def __init__(self) -> None:
        self.assigned: float | None = None
        self.delta = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.delta += amount

    def dec(self, amount: float = 1.0) -> None:
        self.delta -= amount

    def set(self, value: float) -> None:
        self.assigned = float(value)
        self.delta = 0.0

    def flush(self, real: Any) -> None:
        if self.assigned is not None:
            real.set(self.assigned + self.delta)
            self.assigned = None
        elif self.delta:
            real.inc(self.delta)
        self.delta = 0.0


class _DeferredHistogram:
    """A histogram series' observations since the last collection, as bucket counts (the
    first bucket whose upper bound is >= the value, as prometheus_client counts) and a sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: list[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.total += amount

    def flush(self, real: Any) -> None:
        counts = self.counts
        if not any(counts):
            return
        real._sum.inc(self.total)
        for i, n in enumerate(counts):
            if n:
                real._buckets[i].inc(n)
                counts[i] = 0
        self.total = 0.0


class _Flush:
    """Registered first in the registry: every collection folds the deferred series in
    before the metrics after it are read. Yields nothing itself."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return ()


_internals_ok: bool | None = None


def _histogram_internals_ok() -> bool:
    """The deferred histogram writes prometheus_client's bucket and sum values directly;
    checked once (in a single process only: in multiprocess mode the throwaway histogram would
    leave files, i.e. a stray family in /metrics), so that a release that renames them falls
    back to direct updates."""
    global _internals_ok
    if _internals_ok is None:
        h = Histogram("probe", "probe", buckets=(1.0,), registry=None)
        _internals_ok = isinstance(getattr(h, "_buckets", None), list) and hasattr(h, "_sum")
    return _internals_ok


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Deferred series (module docstring) in a single process; in multiprocess mode every
        # update goes to the shared files at once (another worker may render them).
        self._deferred = multiprocess_dir() is None and _histogram_internals_ok()
        r.register(_Flush(self))
        self.requests = Counter(
            "fdp_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "fdp_request_duration_seconds",
            "request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("fdp_errors", "errors by type", ["type"], registry=r)
        self.epsilon_spent = Counter(
            "fdp_epsilon_spent", "epsilon committed, by department", ["department"], registry=r
        )
        self.budget_rejections = Counter(
            "fdp_budget_rejections", "requests refused by budget", ["scope"], registry=r
        )
        # Gauges across workers: in_flight/queue sums; node health and ledger_up the minimum
        # (0 if any worker has the node out of rotation / its ledger down); the hit ratio of
        # each worker's own cache, one series per pid. "live": only running workers count.
        self.node_healthy = Gauge(
            "fdp_node_healthy",
            "1 if the node is in rotation (several workers: in every worker's rotation)",
            ["node"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.node_latency = Histogram(
            "fdp_node_latency_seconds", "backend call latency", ["node"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.node_in_flight = Gauge(
            "fdp_node_in_flight",
            "requests in flight per node",
            ["node"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.node_failures = Counter("fdp_node_failures", "failed backend calls", ["node"], registry=r)
        self.contract_violations = Counter(
            "fdp_node_contract_violations",
            "node answers not released because the node's privacy report did not fit the reservation",
            ["node", "reason"],
            registry=r,
        )
        self.streams_broken = Counter(
            "fdp_streams_broken",
            "streams ended with an error event after their first byte (charged): time_limit, "
            "node_failure, contract_violation, or invalid (malformed, an error event, too large)",
            ["reason"],
            registry=r,
        )
        self.cache = Counter("fdp_cache_lookups", "answer cache lookups", ["result"], registry=r)
        self.cache_hit_ratio = Gauge(
            "fdp_cache_hit_ratio",
            "answer cache hit ratio since start (several workers: one series per worker pid)",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.in_flight = Gauge(
            "fdp_in_flight_requests", "requests being served", registry=r, multiprocess_mode="livesum"
        )
        self.queue_depth = Gauge(
            "fdp_queue_depth", "requests waiting for admission", registry=r, multiprocess_mode="livesum"
        )
        self.consensus = Counter("fdp_consensus", "consensus outcomes", ["outcome"], registry=r)
        self.reloads = Counter("fdp_config_reloads", "config reloads", ["result"], registry=r)
        # The privacy ledger (ledger_health.py feeds these).
        self.ledger_up = Gauge(
            "fdp_ledger_up",
            "1 if the privacy ledger's last write or check succeeded, else 0 (several workers: "
            "0 if it failed in any)",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.ledger_latency = Histogram(
            "fdp_ledger_operation_seconds",
            "ledger operation latency (reserve, commit, release, read, check), queueing included",
            ["op"],
            buckets=LEDGER_BUCKETS,
            registry=r,
        )
        self.ledger_errors = Counter(
            "fdp_ledger_errors",
            "ledger operations refused because the ledger was unavailable, by kind "
            "(timeout, connection, busy, disk_full, read_only, io)",
            ["kind"],
            registry=r,
        )
        # Security events (access.py, admin.py, the request path). Labels are fixed enums.
        self.auth_failures = Counter(
            "fdp_auth_failures",
            "authentication failures by reason (missing_token, malformed, algorithm, unknown_key, "
            "signature, expired, not_yet_valid, issuer, audience, missing_claim, bad_claim, no_role, "
            "mfa_required, token_too_old)",
            ["reason"],
            registry=r,
        )
        self.auth_lockouts = Counter(
            "fdp_auth_lockouts",
            "requests refused (429) because their client address or token subject failed "
            "authentication too often",
            ["scope"],
            registry=r,
        )
        self.rate_limited = Counter(
            "fdp_rate_limited",
            "requests refused (429) by a per-user or per-department limit",
            ["scope"],
            registry=r,
        )
        self.access_violations = Counter(
            "fdp_access_violations",
            "authenticated requests refused for what they tried (role_not_allowed, admin_required, "
            "admin_locked_field, admin_file_path)",
            ["reason"],
            registry=r,
        )

        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # (metric, labels, deferred series) in creation order, for `flush`.
        self._deferred_series: dict[tuple[int, tuple[str, ...]], tuple[Any, tuple[str, ...], Any]] = {}
        self._multiprocess_registry: CollectorRegistry | None = None

    def child(self, metric: Any, *labels: str) -> Any:
        """The series of `metric` with `labels` (none: an unlabelled metric itself), memoised:
        the hot path touches ~12 series per request. In a single process a deferred series
        (``inc``, ``dec``, ``set``, ``observe`` as prometheus_client's, folded in at the next
        collection); in multiprocess mode ``metric.labels(*labels)``."""
        key = (id(metric), labels)
        got = self._children.get(key)
        if got is None:
            if not self._deferred:
                got = metric.labels(*labels) if labels else metric
            else:
                if labels:
                    metric.labels(*labels)  # validates the labels now, as a direct update would
                kind = metric._type
                if kind == "counter":
                    got = _DeferredCounter()
                elif kind == "gauge":
                    got = _DeferredGauge()
                else:
                    got = _DeferredHistogram(list(metric._upper_bounds))
                self._deferred_series[key] = (metric, labels, got)
            self._children[key] = got
        return got

    def flush(self) -> None:
        """Fold the deferred series into prometheus_client's (called by every collection)."""
        for metric, labels, series in list(self._deferred_series.values()):
            series.flush(metric.labels(*labels) if labels else metric)

    def remove(self, metric: Any, *labels: str) -> None:
        """Drop a labelled series (and its memoised child, which would otherwise stay bound
        to the removed series)."""
        self._children.pop((id(metric), labels), None)
        self._deferred_series.pop((id(metric), labels), None)
        if multiprocess_dir():
            # prometheus_client cannot remove a series from the shared files (it would only
            # warn): the series keeps its last value until the workers restart.
            return
        with contextlib.suppress(KeyError):
            metric.remove(*labels)

    def render(self) -> bytes:
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        if self._multiprocess_registry is None:
            from prometheus_client import multiprocess

            reg = CollectorRegistry()
            multiprocess.MultiProcessCollector(reg, path=path)  # type: ignore[no-untyped-call]
            self._multiprocess_registry = reg
        return generate_latest(self._multiprocess_registry)


def multiprocess_dir() -> str | None:
    """The multiprocess directory of this worker, or None in a single process."""
    return os.environ.get(MULTIPROC_ENV) or None
