"""EWMA latency-aware: P2C on expected completion time.

Each node's cost is its EWMA latency (kept by the backend pool; nodes without a sample
borrow the mean of the others, so new nodes get traffic) times its in-flight load per
weight (the "peak EWMA" idea of Finagle/linkerd). Two random candidates, the cheaper wins.
"""

from __future__ import annotations

from fdp_router.balancers.base import Balancer, NodeView, PickContext, load_of


class LatencyAware(Balancer):
    name = "latency_aware"

    def _choose(self, candidates: list[NodeView], ctx: PickContext) -> NodeView:
        if len(candidates) == 1:
            return candidates[0]
        sampled = [n.ewma_latency_s for n in candidates if n.ewma_latency_s > 0]
        default = sum(sampled) / len(sampled) if sampled else 1.0
        a, b = self._rng.sample(candidates, 2)

        def cost(n: NodeView) -> float:
            return (n.ewma_latency_s or default) * load_of(n)

        return a if cost(a) <= cost(b) else b
