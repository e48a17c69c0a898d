"""Unit tests of the pure pieces: cache policies and scoping, admission with aging, consensus."""

from __future__ import annotations

import asyncio

import pytest
from fdp_router.cache import AnswerCache, cache_key
from fdp_router.config import CacheConfig, OverloadConfig, normalize_answer
from fdp_router.consensus import aggregate
from fdp_router.errors import Overloaded
from fdp_router.metrics import Metrics
from fdp_router.overload import OverloadLimiter
from fdp_router.request_path import CompletionRequest, canonical_request


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _canonical(*contents: str, t: float = 0.7) -> str:
    req = CompletionRequest(
        messages=[{"role": "user", "content": c} for c in contents],
        max_tokens=64,
        temperature=t,
        privacy_budget=None,
        require_consensus=False,
        priority=5,
        department=None,
        request_id="r",
    )
    return canonical_request(req, None)


def test_cache_keys_are_scoped_by_department_and_exact() -> None:
    a = cache_key("cardiology", _canonical("What is SEPSIS?"))
    assert a == cache_key("cardiology", _canonical("What is SEPSIS?"))
    assert a != cache_key("oncology", _canonical("What is SEPSIS?"))
    assert a != cache_key("cardiology", _canonical("What is SEPSIS?", t=0.1))
    assert a != cache_key("cardiology", _canonical("what is sepsis?"))  # case is content
    # Two turns are another conversation than one message holding both (the old key merged them).
    assert cache_key("c", _canonical("Tell me about hypertension", "and diabetes")) != cache_key(
        "c", _canonical("Tell me about hypertension\nand diabetes")
    )
    assert "sepsis" not in a[1].casefold()  # hashed, never stored in clear


@pytest.mark.parametrize(
    ("policy", "survivor", "victim"),
    [("lru", "a", "b"), ("lfu", "a", "b"), ("adaptive", "a", "b"), ("ttl", "b", "a")],
)
def test_cache_eviction_policies(policy: str, survivor: str, victim: str) -> None:
    clock = Clock()
    c = AnswerCache(CacheConfig(policy=policy, max_entries=2, ttl_seconds=100), clock=clock)  # type: ignore[arg-type]
    c.put(("d", "a"), {"v": "a"})
    clock.t = 1
    c.put(("d", "b"), {"v": "b"})
    clock.t = 2
    for _ in range(3):
        assert c.get(("d", "a")) == {"v": "a"}
    clock.t = 3
    c.put(("d", "c"), {"v": "c"})
    assert c.get(("d", survivor)) is not None
    assert c.get(("d", victim)) is None
    assert c.stats.evictions == 1


def test_cache_ttl_expires_and_disabled_cache_never_hits() -> None:
    clock = Clock()
    c = AnswerCache(CacheConfig(ttl_seconds=10), clock=clock)
    c.put(("d", "k"), {"v": 1})
    clock.t = 9
    assert c.get(("d", "k")) is not None
    clock.t = 11
    assert c.get(("d", "k")) is None
    off = AnswerCache(CacheConfig(enabled=False))
    off.put(("d", "k"), {"v": 1})
    assert off.get(("d", "k")) is None


async def test_admission_runs_higher_priority_first_and_ages_low_priority() -> None:
    ctl = OverloadLimiter(
        OverloadConfig(max_concurrency=1, max_queue=10, queue_timeout_seconds=5, aging_seconds=0.05)
    )
    order: list[str] = []
    gate = asyncio.Event()

    async def job(name: str, prio: int, delay: float = 0.0) -> None:
        await asyncio.sleep(delay)
        async with ctl.slot(prio):
            order.append(name)
            if name == "first":
                await gate.wait()

    first = asyncio.create_task(job("first", 5))
    await asyncio.sleep(0.01)
    low = asyncio.create_task(job("low-old", 0))
    await asyncio.sleep(0.6)  # low has aged by 12 priority levels
    high = asyncio.create_task(job("high-new", 9))
    mid = asyncio.create_task(job("mid-new", 5))
    await asyncio.sleep(0.01)
    assert ctl.queue_depth == 3
    gate.set()
    await asyncio.gather(first, low, high, mid)
    assert order == ["first", "low-old", "high-new", "mid-new"]
    assert ctl.running == 0


async def test_admission_rejects_beyond_the_queue_and_after_the_timeout() -> None:
    ctl = OverloadLimiter(OverloadConfig(max_concurrency=1, max_queue=1, queue_timeout_seconds=0.2))
    gate = asyncio.Event()

    async def hold() -> None:
        async with ctl.slot():
            await gate.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded) as full:
        async with ctl.slot():
            pass
    assert full.value.headers["Retry-After"]
    with pytest.raises(Overloaded, match="waited"):
        await waiter
    gate.set()
    await holder
    assert ctl.running == 0
    async with ctl.slot():  # capacity is back
        assert ctl.running == 1


def test_consensus_maps_normalised_answers_and_releases_the_noisy_winner() -> None:
    assert normalize_answer("  Metformin  is First-line. ") == "metformin is first-line"
    options = ["Metformin", "Insulin"]
    answers = ["Metformin.", "metformin", "Insulin", "METFORMIN "]
    wins = sum(aggregate(answers, options, sigma=0.5).answer == "Metformin" for _ in range(50))
    assert wins >= 45  # 3 votes vs 1 with small noise
    r = aggregate(answers, options, sigma=0.5)
    assert r.hospitals == 4 and r.abstained == 0
    assert 0.0 <= r.confidence <= 1.0


def test_consensus_uses_noisy_counts_only() -> None:
    # With a noise function that flips the ranking, the minority answer is released:
    # proof that the release is the argmax of the noisy, not the raw, histogram.
    r = aggregate(["x", "x", "y"], ["x", "y"], sigma=1.0, noise=lambda v, s: [-c for c in v])
    assert r.answer == "y"
    assert r.consensus_reached is False
    assert r.confidence == 0.0
    with pytest.raises(ValueError):
        aggregate([], ["x", "y"], sigma=1.0)


def test_memoised_metric_children_follow_removal() -> None:
    m = Metrics()
    m.child(m.node_in_flight, "n1").inc()
    assert m.child(m.node_in_flight, "n1") is m.child(m.node_in_flight, "n1")
    assert 'fdp_node_in_flight{node="n1"} 1.0' in m.render().decode()
    m.remove(m.node_in_flight, "n1")
    assert 'fdp_node_in_flight{node="n1"}' not in m.render().decode()
    m.child(m.node_in_flight, "n1").inc(2)  # a node that comes back gets a live series again
    assert 'fdp_node_in_flight{node="n1"} 2.0' in m.render().decode()
    m.remove(m.node_in_flight, "never-seen")  # removing an unknown series is not an error


def test_completion_relayed_is_replace() -> None:
    from fdp_router.request_path import Completion

    c = Completion(
        text="",
        node_ids=("n1",),
        epsilon=0.5,
        delta=1e-6,
        remaining_budget=3.0,
        cached=False,
        consensus=False,
        consensus_reached=None,
        confidence=None,
        processing_time=0.01,
        basis="b",
        finish_reason="stop",
        usage={"prompt_tokens": 1},
        logprobs=[1],
    )
    assert c.relayed("all of it", "length", None) == c._replace(
        text="all of it", finish_reason="length", usage=None, logprobs=None
    )


def test_logprobs_reads_the_last_logprobs_param() -> None:
    base = dict(
        messages=[{"role": "user", "content": "x"}],
        max_tokens=1,
        temperature=0.0,
        privacy_budget=None,
        require_consensus=False,
        priority=5,
        department=None,
        request_id="r",
    )
    assert CompletionRequest(**base).logprobs is False  # type: ignore[arg-type]
    assert CompletionRequest(**base, params=(("logprobs", True),)).logprobs is True  # type: ignore[arg-type]
    assert CompletionRequest(**base, params=(("logprobs", False), ("top_p", 1.0))).logprobs is False  # type: ignore[arg-type]
