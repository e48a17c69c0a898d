"""Privacy-aware: only nodes whose hospital budget can still pay, then least request.

The department allow-list is enforced for every strategy (see ``base.py``); this one also
drops nodes whose hospital's remaining epsilon (as last read from the ledger, possibly a
little stale) is below the request's epsilon, and among the rest prefers lower load, ties
broken toward the hospital with more budget left. The ledger's atomic reservation stays
the authority: a stale view can only cost a retry, never an overspend.
"""

from __future__ import annotations

from collections.abc import Sequence

from fdp_router.balancers.base import Balancer, NodeView, PickContext, load_of


class PrivacyAware(Balancer):
    name = "privacy_aware"

    def eligible(self, nodes: Sequence[NodeView], ctx: PickContext) -> list[NodeView]:
        out = super().eligible(nodes, ctx)
        return [n for n in out if ctx.hospital_remaining.get(n.hospital, float("inf")) >= ctx.epsilon]

    def _choose(self, candidates: list[NodeView], ctx: PickContext) -> NodeView:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(candidates, 2)
        ra = ctx.hospital_remaining.get(a.hospital, float("inf"))
        rb = ctx.hospital_remaining.get(b.hospital, float("inf"))
        return a if (load_of(a), -ra) <= (load_of(b), -rb) else b
