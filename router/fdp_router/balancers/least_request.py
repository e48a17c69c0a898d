"""Least request with the power of two choices, as Envoy's LEAST_REQUEST.

Two distinct eligible nodes are drawn at random and the one with fewer in-flight requests
per unit of weight wins (ties: the first draw). P2C avoids the herding of "always the
global minimum" when load information is stale, and costs O(1).
"""

from __future__ import annotations

from fdp_router.balancers.base import Balancer, NodeView, PickContext, load_of


class LeastRequest(Balancer):
    name = "least_request"

    def _choose(self, candidates: list[NodeView], ctx: PickContext) -> NodeView:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        return a if load_of(a) <= load_of(b) else b
