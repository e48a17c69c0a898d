"""Reporting: the tightest valid (epsilon, delta) of a *fixed* ledger of events.

Three accountants, all with the add-or-remove-one neighbouring relation, and the minimum is
reported (each is a valid upper bound, so their minimum is too), plus the exact answer where
a closed form exists ("analytic": any composition of Gaussians is one Gaussian with
z = (sum 1/z_i^2)^(-1/2), priced by the analytic Gaussian; one Laplace has
epsilon(delta) = 1/b + 2 log(1 - delta)):

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


def epsilon_exact(event: Event, delta: float) -> float | None:
    """The exact epsilon when a closed form exists (Gaussian compositions, one Laplace), else None."""
    d = check_delta(delta)
    atoms = flatten(event)
    if not atoms:
        return 0.0
    if all(not isinstance(e, LaplaceEvent) for e, _ in atoms):
        z = sum(c / (e.noise_multiplier**2) for e, c in atoms) ** -0.5
        return epsilon_for_sigma(z, d)
    if len(atoms) == 1 and atoms[0][1] == 1:
        lap = atoms[0][0]
        return max(0.0, 1.0 / lap.noise_multiplier + 2.0 * math.log1p(-d))
    return None


def tightest(event: Event, delta: float) -> EpsilonReport:
    """The minimum of the PLD, RDP, basic-composition (and, where one exists, exact) epsilons."""
    d = check_delta(delta)
    by = {"pld": epsilon_pld(event, d), "rdp": epsilon_rdp(event, d), "basic": epsilon_basic(event, d)}
    exact = epsilon_exact(event, d)
    if exact is not None:
        by["analytic"] = exact
    by = {k: (v if math.isfinite(v) else math.inf) for k, v in by.items()}
    method = min(by, key=lambda k: by[k])
    return EpsilonReport(epsilon=by[method], delta=d, method=method, by_method=by)


@lru_cache(maxsize=4096)
def epsilon_of(event: Event, delta: float) -> float:
    """Tightest valid epsilon of `event` (a fixed ledger) at `delta`.

    Exact (and fast) where a closed form exists, which covers every single request; otherwise
    the minimum of PLD, RDP and basic composition (PLD can take a second for long ledgers).
    """
    exact = epsilon_exact(event, delta)
    return exact if exact is not None else tightest(event, delta).epsilon


@lru_cache(maxsize=4096)
def fast_epsilon(event: Event, delta: float) -> float:
    """A valid epsilon cheap enough for the request path: exact where a closed form exists,
    else the minimum of RDP and basic composition (milliseconds, no PLD)."""
    exact = epsilon_exact(event, delta)
    if exact is not None:
        return exact
    return min(epsilon_rdp(event, delta), epsilon_basic(event, delta))
