"""Round robin over eligible nodes, weight-blind (the baseline)."""

from __future__ import annotations

from fdp_router.balancers.base import Balancer, NodeView, PickContext


class RoundRobin(Balancer):
    name = "round_robin"

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(seed)
        self._counter = 0

    def _choose(self, candidates: list[NodeView], ctx: PickContext) -> NodeView:
        ordered = sorted(candidates, key=lambda n: n.id)
        node = ordered[self._counter % len(ordered)]
        self._counter += 1
        return node
