"""The balancer interface: pick hospital node(s) for one request, from a snapshot.

Pure code: a balancer sees immutable `NodeView` snapshots (built by ``backends.py`` from
live counters) and a `PickContext` (department, epsilon, known hospital budgets) and
returns node ids. No I/O, no clocks except what the caller passes in, so the same classes
run in the request path and in ``benchmarks/balancer_sim.py``.

Eligibility is decided here, once, for every strategy: a node must be healthy (not
ejected, probes passing) and allowed for the department. Strategies only rank eligible
nodes; ``privacy_aware`` narrows further by hospital budget. Randomised strategies take a
seeded ``random.Random``: balancer randomness is load spreading, not privacy noise.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import ClassVar, NamedTuple

_NO_BUDGETS: Mapping[str, float] = MappingProxyType({})


class NodeView(NamedTuple):
    """One node as a balancer sees it at decision time. Immutable; a NamedTuple, not a frozen
    dataclass: one is built per node on every request, and a tuple builds about twice as fast."""

    id: str
    hospital: str
    weight: float = 1.0
    departments: tuple[str, ...] = ()  # empty: every department
    in_flight: int = 0
    ewma_latency_s: float = 0.0  # 0: no sample yet
    healthy: bool = True
    max_concurrent: int = 32
    specializations: tuple[str, ...] = ()

    def allows(self, department: str) -> bool:
        return not self.departments or department in self.departments

    def serves(self, specialization: str | None) -> bool:
        return specialization is None or specialization in self.specializations


class PickContext(NamedTuple):
    """What one pick is for. Immutable (a NamedTuple, as `NodeView`: built on every request)."""

    department: str
    epsilon: float = 0.0
    # Remaining epsilon per hospital as last seen (may be stale or missing: missing = unknown).
    hospital_remaining: Mapping[str, float] = _NO_BUDGETS
    exclude: frozenset[str] = frozenset()  # node ids already tried (failover)
    exclude_hospitals: frozenset[str] = frozenset()  # hospitals whose budget refused
    specialization: str | None = None  # only nodes listing it (None: any)


class Balancer(abc.ABC):
    """Strategy interface. Subclasses implement `_rank`; eligibility lives here."""

    name: ClassVar[str]

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)  # noqa: S311 (load spreading, not privacy noise)

    def eligible(self, nodes: Sequence[NodeView], ctx: PickContext) -> list[NodeView]:
        return [
            n
            for n in nodes
            if n.healthy
            and n.allows(ctx.department)
            and n.serves(ctx.specialization)
            and n.id not in ctx.exclude
            and n.hospital not in ctx.exclude_hospitals
        ]

    def pick(self, nodes: Sequence[NodeView], ctx: PickContext) -> NodeView | None:
        """The node for one request, or None if no node is eligible."""
        candidates = self.eligible(nodes, ctx)
        if not candidates:
            return None
        return self._choose(candidates, ctx)

    def pick_many(self, nodes: Sequence[NodeView], ctx: PickContext, k: int) -> list[NodeView]:
        """Up to k nodes of k distinct hospitals (consensus fan-out).

        At most one node per hospital: a consensus vote is one hospital's, and GNMax is
        charged one vote per hospital; a second node of the same hospital would be a second
        vote on the same data, which the charge does not cover."""
        chosen: list[NodeView] = []
        hospitals: set[str] = set(ctx.exclude_hospitals)
        while len(chosen) < k:
            sub = ctx._replace(exclude_hospitals=frozenset(hospitals))
            node = self.pick(nodes, sub)
            if node is None:
                break
            chosen.append(node)
            hospitals.add(node.hospital)
        return chosen

    @abc.abstractmethod
    def _choose(self, candidates: list[NodeView], ctx: PickContext) -> NodeView:
        """Rank non-empty eligible candidates and return one of them."""


def load_of(n: NodeView) -> float:
    """In-flight requests per unit of weight (Envoy's weighted least-request load)."""
    return (n.in_flight + 1) / n.weight
