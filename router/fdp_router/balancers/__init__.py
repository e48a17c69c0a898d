"""Pluggable balancers: one file per strategy, one interface (``base.py``).

`make_balancer(strategy, seed)` is what the router (``backends.py``) and the balancer
simulation call. Every strategy passes the shared contract suite in
``tests/unit/router/test_balancers.py``.
"""

from __future__ import annotations

from fdp_router.balancers.base import Balancer, NodeView, PickContext
from fdp_router.balancers.latency_aware import LatencyAware
from fdp_router.balancers.least_request import LeastRequest
from fdp_router.balancers.privacy_aware import PrivacyAware
from fdp_router.balancers.quantum_inspired import QuantumInspired
from fdp_router.balancers.round_robin import RoundRobin

BALANCERS: dict[str, type[Balancer]] = {
    cls.name: cls for cls in (RoundRobin, LeastRequest, LatencyAware, PrivacyAware, QuantumInspired)
}


def make_balancer(strategy: str, seed: int | None = None) -> Balancer:
    try:
        cls = BALANCERS[str(strategy)]
    except KeyError:
        raise ValueError(
            f"routing.strategy: unknown strategy {strategy!r}; known: {sorted(BALANCERS)}"
        ) from None
    return cls(seed=seed)


__all__ = ["BALANCERS", "Balancer", "NodeView", "PickContext", "make_balancer"]
