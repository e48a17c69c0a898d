"""Reporting: the tightest valid (epsilon, delta) of a *fixed* ledger of events.

Three accountants, all with the add-or-remove-one neighbouring relation, and the minimum is
reported (each is a valid upper bound, so their minimum is too):

- PLD (dp_accounting's privacy loss distributions, pessimistic discretisation),
- RDP (dp_accounting's RDP accountant at its default orders, improved conversion),
- basic composition (sum of per-event epsilons; the delta is split evenly over the
  approximate-DP events, each Gaussian priced exactly by the analytic Gaussian).

This is *not* the admission rule: reporting epsilon of a fixed sequence after the fact is
not valid when each query's epsilon was chosen adaptively. Admission is ``filter.py``.

Called by the CLI (``privacy epsilon``), by ``events``' callers to tell clients a request's
epsilon, and by the ledger for reservations. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fdp_router.privacy.events import Event, LaplaceEvent, flatten, to_dp_accounting
from fdp_router.privacy.mechanisms import check_delta, epsilon_for_sigma

_REL = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


@dataclass(frozen=True, slots=True)
class EpsilonReport:
    epsilon: float
    delta: float
    method: str  # "pld" | "rdp" | "basic"
    by_method: dict[str, float]


def epsilon_pld(event: Event, delta: float, discretization: float = 1e-4) -> float:
    acc = pld_privacy_accountant.PLDAccountant(_REL, value_discretization_interval=discretization)
    acc.compose(to_dp_accounting(event))
    return float(acc.get_epsilon(check_delta(delta)))


def epsilon_rdp(event: Event, delta: float) -> float:
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=_REL)
    acc.compose(to_dp_accounting(event))
    return float(acc.get_epsilon(check_delta(delta)))


def epsilon_basic(event: Event, delta: float) -> float:
    """Basic composition: sum of epsilons, delta split evenly over the approximate-DP events."""
    d = check_delta(delta)
    atoms = flatten(event)
    n_approx = sum(c for e, c in atoms if not isinstance(e, LaplaceEvent))
    total = 0.0
    for e, c in atoms:
        if isinstance(e, LaplaceEvent):
            total += c / e.noise_multiplier
        else:
            total += c * epsilon_for_sigma(e.noise_multiplier, d / n_approx)
    return total


def tightest(event: Event, delta: float) -> EpsilonReport:
    """The minimum of the PLD, RDP and basic-composition epsilons at `delta`."""
    d = check_delta(delta)
    by = {"pld": epsilon_pld(event, d), "rdp": epsilon_rdp(event, d), "basic": epsilon_basic(event, d)}
    by = {k: (v if math.isfinite(v) else math.inf) for k, v in by.items()}
    method = min(by, key=lambda k: by[k])
    return EpsilonReport(epsilon=by[method], delta=d, method=method, by_method=by)


@lru_cache(maxsize=4096)
def epsilon_of(event: Event, delta: float) -> float:
    """Tightest valid epsilon of `event` (a fixed ledger) at `delta`."""
    return tightest(event, delta).epsilon
