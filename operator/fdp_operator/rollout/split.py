"""Canary weights realised as replica counts (no service mesh: one Service, pods in ratio).

Called by ``canary.decide``. Two sizing modes:

* ``split_total(total, weight)``: the operator owns the replica count (no HPA). The total
  is split; with 2+ replicas neither side drops to 0 pods for weights 1-99.
* ``canary_for_stable(stable, weight)``: an HPA owns the stable Deployment's count (the
  operator never writes it), so the canary is sized in proportion to what the HPA keeps:
  canary / (canary + stable) is as close to ``weight`` as whole pods allow. The HPA keeps
  scaling stable by its pods' load, which already excludes the canary's share of traffic.

Rounding is half-up (10 replicas at 15% -> 2 canary), then clamped to at least one pod per
side. A single replica cannot be split; a weight of 1-99 then runs one extra canary pod
beside the stable one (an effective 50%) rather than starving either side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    stable: int
    canary: int


def _check_weight(weight: int) -> None:
    if not 0 <= weight <= 100:
        raise ValueError(f"canary weight must be within 0..100, got {weight}")


def _round_half_up(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


def split_total(total: int, weight: int) -> Split:
    """Split ``total`` replicas so the canary gets ``weight`` percent of the pods."""
    _check_weight(weight)
    if total < 0:
        raise ValueError(f"replica total must be >= 0, got {total}")
    if weight == 0 or total == 0:
        return Split(stable=total, canary=0)
    if weight == 100:
        return Split(stable=0, canary=total)
    if total == 1:
        return Split(stable=1, canary=1)
    canary = min(max(_round_half_up(total * weight, 100), 1), total - 1)
    return Split(stable=total - canary, canary=canary)


def canary_for_stable(stable: int, weight: int) -> int:
    """Canary pods beside an HPA-owned ``stable`` count so that canary/(canary+stable) ~ weight."""
    _check_weight(weight)
    if stable < 0:
        raise ValueError(f"stable replicas must be >= 0, got {stable}")
    if weight == 0:
        return 0
    if weight == 100 or stable == 0:
        return max(stable, 1)
    return max(_round_half_up(stable * weight, 100 - weight), 1)
