"""Attack review of the deferred metric series (``metrics.py``): a scrape must show exactly
what direct prometheus_client updates would have shown, in one process and with several
workers (``PROMETHEUS_MULTIPROC_DIR``), whatever the order of updates and scrapes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fdp_router.metrics import LATENCY_BUCKETS, Metrics
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest


def test_multiprocess_scrape_has_only_the_routers_metric_families(tmp_path: Path) -> None:
    """With ``--workers N`` every worker imports metrics.py with PROMETHEUS_MULTIPROC_DIR set.
    The import-time check `_histogram_internals_ok` builds a throwaway ``Histogram("probe")``:
    in multiprocess mode its values are mmap files in the shared directory, so every
    worker's /metrics exports a stray ``probe`` histogram family (probe_bucket, probe_sum,
    probe_count) next to the fdp_* ones."""
    code = textwrap.dedent(
        """
        from fdp_router.metrics import Metrics
        m = Metrics()
        m.child(m.requests, "/v1/query", "200").inc()
        families = sorted({l.split()[2] for l in m.render().decode().splitlines() if l.startswith("# TYPE")})
        print(",".join(families))
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    families = out.stdout.strip().split(",")
    assert "fdp_requests_total" in families
    assert [f for f in families if not f.startswith("fdp_")] == [], families


GAUGE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), st.floats(-1e6, 1e6)),
        st.tuples(st.just("dec"), st.floats(-1e6, 1e6)),
        st.tuples(st.just("set"), st.floats(-1e6, 1e6)),
        st.tuples(st.just("scrape"), st.just(0.0)),
    ),
    max_size=40,
)
# Observations on and around every bucket bound, negative, zero, huge and infinite.
EDGE = [b for b in LATENCY_BUCKETS for b in (b, b * (1 - 1e-16), b * (1 + 1e-15))]
OBSERVATIONS = st.lists(
    st.one_of(
        st.sampled_from([*EDGE, 0.0, -0.0, -1.0, 1e300, float("inf")]),
        st.floats(-10, 1e4, allow_nan=False),
        st.just(None),  # a scrape
    ),
    max_size=60,
)


def _value(text: bytes, name: str) -> dict[str, float]:
    out = {}
    for line in text.decode().splitlines():
        if line.startswith(name) and "_created" not in line:
            key, _, v = line.rpartition(" ")
            out[key] = float(v)
    return out


@settings(max_examples=150, deadline=None)
@given(ops=GAUGE_OPS)
def test_a_deferred_gauge_reads_as_direct_updates_after_any_sequence(ops: list[tuple[str, float]]) -> None:
    m = Metrics()
    r = CollectorRegistry()
    direct = Gauge("fdp_queue_depth", "x", registry=r)
    series = m.child(m.queue_depth)
    for op, v in ops:
        if op == "scrape":
            m.render()
            continue
        getattr(series, op)(v)
        getattr(direct, op)(v)
        assert m.registry.get_sample_value("fdp_queue_depth") == pytest.approx(
            r.get_sample_value("fdp_queue_depth"), rel=1e-9, abs=1e-6
        )


@settings(max_examples=150, deadline=None)
@given(obs=OBSERVATIONS)
def test_a_deferred_histogram_buckets_count_and_sum_match_direct(obs: list[float | None]) -> None:
    m = Metrics()
    r = CollectorRegistry()
    direct = Histogram("fdp_request_duration_seconds", "x", ["route"], buckets=LATENCY_BUCKETS, registry=r)
    series = m.child(m.latency, "/v1/query")
    direct.labels("/v1/query")  # child() creates the series at once, as labels() does
    for v in obs:
        if v is None:
            m.render()
            continue
        series.observe(v)
        direct.labels("/v1/query").observe(v)
    ours = _value(m.render(), "fdp_request_duration_seconds")
    theirs = _value(generate_latest(r), "fdp_request_duration_seconds")
    assert ours.keys() == theirs.keys()
    for k, v in theirs.items():
        if k.startswith("fdp_request_duration_seconds_sum"):
            assert ours[k] == pytest.approx(v, rel=1e-9, abs=1e-9) or (ours[k] == v), k
        else:  # bucket counts and _count: exact
            assert ours[k] == v, (k, ours[k], v)
    count = next(v for k, v in ours.items() if k.startswith("fdp_request_duration_seconds_count"))
    inf = next(v for k, v in ours.items() if 'le="+Inf"' in k)
    assert count == inf == sum(1 for v in obs if v is not None)
