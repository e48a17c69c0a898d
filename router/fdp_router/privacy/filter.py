"""Admission: a Rényi-DP privacy filter at a fixed grid of orders, valid for adaptive epsilons.

The ledger keeps, per privacy unit and window, the running sum R(alpha) of the RDP curves
of every admitted (reserved or committed) event, at the orders in ``ORDERS``. A new event
with RDP curve r(alpha) is admitted iff

    there is an order alpha in ORDERS with  R(alpha) + r(alpha) <= B(alpha),
    B(alpha) = epsilon - log(|ORDERS| / delta) / (alpha - 1).

Why this is an (epsilon, delta)-DP filter even when each query's parameters are chosen
adaptively (from earlier answers):

1. Feldman & Zrnic, "Individual Privacy Accounting via a Rényi Filter" (NeurIPS 2021),
   Theorem 3.1 / its proof: for a fixed order alpha, with adaptively chosen mechanisms of
   RDP rho_t(alpha) (known before each runs), exp((alpha-1)(L_t - sum_{i<=t} rho_i(alpha)))
   is a supermartingale, L_t being the privacy loss so far. Optional stopping plus Markov give,
   for the stopped interaction, P[L > epsilon and sum rho_i(alpha) <= B] <= exp(-(alpha-1)(epsilon - B)).
2. Several orders (Lécuyer, "Practical Privacy Filters and Odometers with Rényi Differential
   Privacy...", 2021, multi-order RDP filter). We use the union-bound version, which is proven
   by step 1 alone: the filter guarantees that the final admitted sequence fits the budget at
   *some* order (sums only grow, so the order that admitted the last event bounds the whole
   sequence). Hence P[L > epsilon] <= sum over alpha of P[L > epsilon and R(alpha) <= B(alpha)]
   <= sum over alpha of exp(-(alpha-1)(epsilon - B(alpha))) = |ORDERS| * delta/|ORDERS| = delta,
   and a privacy-loss tail bound P[L > epsilon] <= delta (both directions, the RDP curves of
   add-or-remove Gaussian and Laplace being symmetric) implies (epsilon, delta)-DP.

The delta split over |ORDERS| costs log(|ORDERS|) ~ 3 nats next to log(1/delta) ~ 11.5: a small
price for a proof with no gaps. Basic composition is *not* used for admission (it is only
reported for comparison by ``plan`` and the benchmark).

"Consumed" epsilon of a unit (``filter_epsilon``) is the smallest budget under which this
filter would have admitted everything recorded so far: min over alpha of R(alpha) +
log(|ORDERS|/delta)/(alpha-1). It grows sub-linearly in the number of queries.

Called by the ledger backends (inside their one reservation transaction), by the policy
check and by the CLI. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import dp_accounting
from dp_accounting.rdp import rdp_privacy_accountant

from fdp_router.privacy.events import Event, to_dp_accounting

ORDERS: tuple[float, ...] = (
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    6.0,
    8.0,
    10.0,
    12.0,
    16.0,
    20.0,
    24.0,
    32.0,
    48.0,
    64.0,
    128.0,
    256.0,
)

_REL = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


@lru_cache(maxsize=4096)
def rdp_curve(event: Event) -> tuple[float, ...]:
    """RDP epsilon(alpha) of `event` at ``ORDERS`` (dp_accounting, add-or-remove-one)."""
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(ORDERS), neighboring_relation=_REL)
    acc.compose(to_dp_accounting(event))
    return tuple(float(x) for x in acc.rdp)


@lru_cache(maxsize=256)
def _slack(delta: float) -> tuple[float, ...]:
    log_term = math.log(len(ORDERS) / delta)
    return tuple(log_term / (a - 1.0) for a in ORDERS)


@lru_cache(maxsize=1024)
def budget_curve(epsilon: float, delta: float) -> tuple[float, ...]:
    """B(alpha) = epsilon - log(|ORDERS|/delta)/(alpha-1), per order."""
    return tuple(epsilon - s for s in _slack(delta))


def admits(spent: Sequence[float], cost: Sequence[float], epsilon: float, delta: float) -> bool:
    """True iff adding `cost` to `spent` keeps the unit within (epsilon, delta) at some order."""
    budget = budget_curve(epsilon, delta)
    return any(s + c <= b for s, c, b in zip(spent, cost, budget, strict=True))


def filter_epsilon(spent: Sequence[float], delta: float) -> float:
    """Smallest budget epsilon under which the filter admits the recorded spend `spent`."""
    if not any(s > 0 for s in spent):
        return 0.0
    return min(s + sl for s, sl in zip(spent, _slack(delta), strict=True))


def add(spent: Sequence[float], cost: Sequence[float]) -> tuple[float, ...]:
    return tuple(s + c for s, c in zip(spent, cost, strict=True))


def subtract(spent: Sequence[float], cost: Sequence[float]) -> tuple[float, ...]:
    """Refund (clamped at 0 against float rounding)."""
    return tuple(max(0.0, s - c) for s, c in zip(spent, cost, strict=True))


def zero() -> tuple[float, ...]:
    return tuple(0.0 for _ in ORDERS)


def admitted_count(event: Event, epsilon: float, delta: float, limit: int = 1_000_000) -> int:
    """How many repetitions of `event` the filter admits under (epsilon, delta)."""
    cost = rdp_curve(event)
    budget = budget_curve(epsilon, delta)
    best = 0
    for c, b in zip(cost, budget, strict=True):
        if b < 0:
            continue
        if c <= 0:
            return limit
        # k * c <= b; guard the float boundary by re-checking the product
        k = math.floor(b / c)
        while k > 0 and k * c > b:
            k -= 1
        best = max(best, k)
    return min(best, limit)
