"""Quantum-inspired balancing: a classical sampler written in the language of amplitudes.

Nothing quantum runs here; the name comes from the original design. Precisely, for the
eligible nodes i = 1..n at decision time:

1. **Scores.** ``s_i = w_i / ((q_i + 1) * l_i)`` with weight ``w_i``, in-flight count
   ``q_i`` and relative EWMA latency ``l_i = ewma_i / mean(ewma)`` (1 when unknown).
   ``p_i = s_i / sum(s)``.
2. **Amplitudes.** Two "paths" are superposed: the score state with real amplitudes
   ``sqrt(p_i)`` and the uniform state with amplitudes ``e^{i phi_i} / sqrt(n)``, where the
   phase ``phi_i = pi * min(1, q_i / (2 * mean(q) + 1e-9))`` is 0 for an idle node,
   pi/2 at mean load and pi at twice the mean load:
   ``psi_i = a * sqrt(p_i) + b * e^{i phi_i} / sqrt(n)``, with ``a^2 + b^2 = 1``
   (``b`` is the ``exploration`` parameter; default b = 0.75, a = 0.66, chosen with
   ``benchmarks/balancer_sim.py``).
3. **Interference.** ``|psi_i|^2 = a^2 p_i + b^2 / n + 2ab sqrt(p_i / n) cos(phi_i)``: the
   cross term adds probability to nodes below the mean load (constructive) and removes it
   from nodes above (destructive), clipped at 0.
4. **Measurement.** Probabilities are ``|psi_i|^2`` normalised; two independent
   measurements draw two nodes with a seeded RNG and the one with the lower
   ``(q + 1) * l / w`` is kept (a power-of-two-choices "collapse"). Measuring twice is what
   makes it robust to stale load information, like Envoy's P2C, while the amplitude
   distribution steers traffic away from slow nodes.
5. **Back-action.** A measurement disturbs the state: each pick adds one to the chosen
   node's effective load ``q_i`` until that node's reported state (in-flight count, EWMA
   latency) changes. With fresh information the report changes at once and this is a
   no-op; with stale information (a snapshot seconds old) it stops every decision in the
   window from collapsing onto the node that looked idle when the snapshot was taken.
"""

from __future__ import annotations

import math

from fdp_router.balancers.base import Balancer, NodeView, PickContext


class QuantumInspired(Balancer):
    name = "quantum_inspired"

    def __init__(self, seed: int | None = None, exploration: float = 0.75) -> None:
        super().__init__(seed)
        if not 0.0 <= exploration <= 1.0:
            raise ValueError("exploration must be in [0, 1]")
        self._b = exploration
        self._a = math.sqrt(1.0 - exploration * exploration)
        self._seen: dict[str, tuple[int, float]] = {}
        self._picked_since: dict[str, int] = {}

    def _with_back_action(self, candidates: list[NodeView]) -> list[NodeView]:
        out = []
        for c in candidates:
            state = (c.in_flight, c.ewma_latency_s)
            if self._seen.get(c.id) != state:
                self._seen[c.id] = state
                self._picked_since[c.id] = 0
            extra = self._picked_since[c.id]
            out.append(c._replace(in_flight=c.in_flight + extra) if extra else c)
        return out

    def probabilities(self, candidates: list[NodeView]) -> list[float]:
        """Measurement probabilities |psi_i|^2 (normalised), exposed for tests and docs."""
        n = len(candidates)
        lat = [c.ewma_latency_s for c in candidates if c.ewma_latency_s > 0]
        mean_lat = sum(lat) / len(lat) if lat else 0.0
        rel = [
            (c.ewma_latency_s / mean_lat) if (mean_lat > 0 and c.ewma_latency_s > 0) else 1.0
            for c in candidates
        ]
        scores = [c.weight / ((c.in_flight + 1) * r) for c, r in zip(candidates, rel, strict=True)]
        total = sum(scores)
        p = [s / total for s in scores]
        mean_q = sum(c.in_flight for c in candidates) / n
        out = []
        for c, pi in zip(candidates, p, strict=True):
            phi = math.pi * min(1.0, c.in_flight / (2 * mean_q + 1e-9))
            amp_re = self._a * math.sqrt(pi) + self._b * math.cos(phi) / math.sqrt(n)
            amp_im = self._b * math.sin(phi) / math.sqrt(n)
            out.append(max(0.0, amp_re * amp_re + amp_im * amp_im))
        z = sum(out)
        return [x / z for x in out] if z > 0 else [1.0 / n] * n

    def _choose(self, candidates: list[NodeView], ctx: PickContext) -> NodeView:
        if len(candidates) == 1:
            return candidates[0]
        by_id = {c.id: c for c in candidates}
        candidates = self._with_back_action(candidates)
        probs = self.probabilities(candidates)
        a, b = self._rng.choices(candidates, weights=probs, k=2)
        lat = [c.ewma_latency_s for c in candidates if c.ewma_latency_s > 0]
        mean_lat = sum(lat) / len(lat) if lat else 0.0

        def cost(n: NodeView) -> float:
            rel = n.ewma_latency_s / mean_lat if (mean_lat > 0 and n.ewma_latency_s > 0) else 1.0
            return (n.in_flight + 1) * rel / n.weight

        chosen = a if cost(a) <= cost(b) else b
        self._picked_since[chosen.id] = self._picked_since.get(chosen.id, 0) + 1
        return by_id[chosen.id]
