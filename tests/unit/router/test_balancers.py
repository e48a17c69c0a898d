"""One contract suite that every balancer passes, plus what each strategy promises."""

from __future__ import annotations

import collections

import pytest
from fdp_router.balancers import BALANCERS, NodeView, PickContext, make_balancer
from fdp_router.balancers.quantum_inspired import QuantumInspired

STRATEGIES = sorted(BALANCERS)


def nodes(n: int = 4, **over: dict[str, object]) -> list[NodeView]:
    out = []
    for i in range(n):
        kw: dict[str, object] = {"id": f"n{i}", "hospital": f"h{i}"}
        kw.update(over.get(f"n{i}", {}))
        out.append(NodeView(**kw))  # type: ignore[arg-type]
    return out


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class TestBalancerContract:
    def test_picks_only_eligible_nodes(self, strategy: str) -> None:
        b = make_balancer(strategy, seed=1)
        views = nodes(
            5,
            n0={"healthy": False},
            n1={"departments": ("oncology",)},
            n2={"departments": ("cardiology", "oncology")},
        )
        ctx = PickContext(department="cardiology", exclude=frozenset({"n3"}))
        picked = {b.pick(views, ctx).id for _ in range(200)}  # type: ignore[union-attr]
        assert picked <= {"n2", "n4"}
        assert picked  # something was picked

    def test_none_when_nothing_is_eligible(self, strategy: str) -> None:
        b = make_balancer(strategy, seed=1)
        assert b.pick([], PickContext(department="x")) is None
        assert (
            b.pick(nodes(2, n0={"healthy": False}, n1={"healthy": False}), PickContext(department="x"))
            is None
        )
        assert (
            b.pick(nodes(2), PickContext(department="x", exclude_hospitals=frozenset({"h0", "h1"}))) is None
        )

    def test_every_eligible_node_gets_traffic_when_idle(self, strategy: str) -> None:
        b = make_balancer(strategy, seed=3)
        views = nodes(4)
        counts = collections.Counter(b.pick(views, PickContext(department="d")).id for _ in range(400))  # type: ignore[union-attr]
        assert set(counts) == {"n0", "n1", "n2", "n3"}
        assert min(counts.values()) > 40

    def test_same_seed_same_choices(self, strategy: str) -> None:
        views = nodes(5, n1={"in_flight": 3}, n2={"ewma_latency_s": 0.2}, n3={"ewma_latency_s": 0.05})
        seq = [
            [make_balancer(strategy, seed=42).pick(views, PickContext(department="d")).id for _ in range(1)]  # type: ignore[union-attr]
            for _ in range(2)
        ]
        a = make_balancer(strategy, seed=42)
        c = make_balancer(strategy, seed=42)
        assert [a.pick(views, PickContext(department="d")).id for _ in range(50)] == [  # type: ignore[union-attr]
            c.pick(views, PickContext(department="d")).id
            for _ in range(50)  # type: ignore[union-attr]
        ]
        assert seq[0] == seq[1]

    def test_pick_many_takes_at_most_one_node_per_hospital(self, strategy: str) -> None:
        # n0 and n1 are both hospital h0: a consensus may ask h0 once (one vote per hospital).
        b = make_balancer(strategy, seed=5)
        views = nodes(4, n1={"hospital": "h0"})
        for _ in range(20):
            chosen = b.pick_many(views, PickContext(department="d"), 3)
            assert len(chosen) == 3
            assert len({n.hospital for n in chosen}) == 3
        assert len(b.pick_many(views, PickContext(department="d"), 10)) == 3

    def test_never_picks_an_unhealthy_node_even_if_it_looks_best(self, strategy: str) -> None:
        b = make_balancer(strategy, seed=9)
        views = nodes(3, n0={"healthy": False, "weight": 100.0}, n1={"in_flight": 50}, n2={"in_flight": 50})
        assert all(b.pick(views, PickContext(department="d")).id != "n0" for _ in range(100))  # type: ignore[union-attr]


def test_unknown_strategy_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"routing\.strategy"):
        make_balancer("random_walk")


def test_round_robin_cycles() -> None:
    b = make_balancer("round_robin")
    views = nodes(3)
    assert [b.pick(views, PickContext(department="d")).id for _ in range(6)] == ["n0", "n1", "n2"] * 2  # type: ignore[union-attr]


@pytest.mark.parametrize("strategy", ["least_request", "latency_aware", "quantum_inspired", "privacy_aware"])
def test_load_aware_strategies_avoid_the_busy_node(strategy: str) -> None:
    # Fresh load information: each pick adds one in-flight request to the chosen node.
    b = make_balancer(strategy, seed=11)
    load = {"n0": 40, "n1": 0, "n2": 0}
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(60):
        views = [NodeView(id=k, hospital=f"h-{k}", in_flight=v) for k, v in load.items()]
        node = b.pick(views, PickContext(department="d"))
        assert node is not None
        counts[node.id] += 1
        load[node.id] += 1
    assert counts["n0"] <= 3, counts


def test_quantum_back_action_spreads_load_when_information_is_stale() -> None:
    # The same (stale) snapshot for every decision: P2C keeps favouring the node that looked
    # idle; the quantum balancer's back-action counts its own picks and spreads them.
    views = nodes(3, n0={"in_flight": 0}, n1={"in_flight": 5}, n2={"in_flight": 5})
    q = make_balancer("quantum_inspired", seed=1)
    counts = collections.Counter(q.pick(views, PickContext(department="d")).id for _ in range(60))  # type: ignore[union-attr]
    assert 5 <= counts["n0"] <= 35, counts  # not all 60
    assert counts["n1"] + counts["n2"] >= 25


def test_latency_aware_prefers_the_fast_node() -> None:
    b = make_balancer("latency_aware", seed=2)
    views = nodes(2, n0={"ewma_latency_s": 0.5}, n1={"ewma_latency_s": 0.05})
    counts = collections.Counter(b.pick(views, PickContext(department="d")).id for _ in range(300))  # type: ignore[union-attr]
    assert counts["n1"] == 300  # P2C between two nodes always compares both


def test_privacy_aware_skips_hospitals_that_cannot_pay() -> None:
    b = make_balancer("privacy_aware", seed=4)
    views = nodes(3)
    ctx = PickContext(department="d", epsilon=0.5, hospital_remaining={"h0": 0.1, "h1": 3.0})
    picked = {b.pick(views, ctx).id for _ in range(100)}  # type: ignore[union-attr]
    assert "n0" not in picked and picked  # h2 unknown: allowed (the ledger decides)
    ctx = PickContext(department="d", epsilon=0.5, hospital_remaining={"h0": 0.1, "h1": 3.0, "h2": 0.4})
    assert {b.pick(views, ctx).id for _ in range(50)} == {"n1"}  # type: ignore[union-attr]


def test_quantum_probabilities_follow_the_definition() -> None:
    q = QuantumInspired(seed=0)
    idle = nodes(4)
    assert q.probabilities(idle) == pytest.approx([0.25] * 4)
    loaded = nodes(3, n0={"in_flight": 0}, n1={"in_flight": 3}, n2={"in_flight": 9})
    p = q.probabilities(loaded)
    assert sum(p) == pytest.approx(1.0)
    assert p[0] > p[1] > p[2]
    # Interference: the idle node gets more than its plain score share, the busiest less.
    scores = [1 / 1, 1 / 4, 1 / 10]
    share = [s / sum(scores) for s in scores]
    assert p[0] > share[0] * 0.81 + 0.19 / 3
    assert p[2] < share[2]
    slow = nodes(2, n0={"ewma_latency_s": 0.3}, n1={"ewma_latency_s": 0.1})
    ps = q.probabilities(slow)
    assert ps[1] > ps[0]
    with pytest.raises(ValueError):
        QuantumInspired(exploration=1.5)


def test_balancers_cache_and_overload_are_pure() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fdp_router.balancers, fdp_router.cache, fdp_router.overload; "
        "print(sorted(m for m in ('aiohttp', 'sqlite3', 'psycopg', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
