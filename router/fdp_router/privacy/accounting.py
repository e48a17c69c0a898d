"""Reporting: the tightest valid (epsilon, delta) of a *fixed* ledger of events.

Three accountants, all with the add-or-remove-one neighbouring relation, and the minimum is
reported (each is a valid upper bound, so their minimum is too), plus the exact answer where
a closed form exists ("analytic": any composition of Gaussians is one Gaussian with
z = (sum 1/z_i^2)^(-1/2), priced by the analytic Gaussian; one Laplace has
epsilon(delta) = 1/b + 2 log(1 - delta); one pure-DP release is reported at its epsilon,
what the node was told to spend):

- PLD (dp_accounting's privacy loss distributions, pessimistic discretisation),
- RDP (dp_accounting's RDP accountant at its default orders, improved conversion),
- basic composition (sum of per-event epsilons; the delta is split evenly over the
  approximate-DP events, each Gaussian priced exactly by the analytic Gaussian).

A ``PureDpEvent`` (any epsilon-DP node mechanism) is priced as its worst case, binary
randomized response: dp_accounting's accountants refuse that event under add-or-remove-one,
so PLD uses ``from_privacy_parameters(epsilon, 0)`` (the same worst case, pessimistically
discretised) and RDP adds ``events.pure_dp_rdp`` to the accountant's curve before its
conversion.

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
import numpy as np
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp import rdp_privacy_accountant

from fdp_router.privacy.events import (
    Atom,
    Event,
    GaussianEvent,
    GNMaxEvent,
    LaplaceEvent,
    PureDpEvent,
    flatten,
    pure_dp_rdp,
    to_dp_accounting,
)
from fdp_router.privacy.mechanisms import check_delta, epsilon_for_sigma

_REL = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


@dataclass(frozen=True, slots=True)
class EpsilonReport:
    epsilon: float
    delta: float
    method: str  # "pld" | "rdp" | "basic"
    by_method: dict[str, float]


def _has_pure(atoms: list[tuple[Atom, int]]) -> bool:
    return any(isinstance(e, PureDpEvent) for e, _ in atoms)


def epsilon_pld(event: Event, delta: float, discretization: float = 1e-4) -> float:
    d = check_delta(delta)
    atoms = flatten(event)
    if not _has_pure(atoms):
        acc = pld_privacy_accountant.PLDAccountant(_REL, value_discretization_interval=discretization)
        acc.compose(to_dp_accounting(event))
        return float(acc.get_epsilon(d))
    pld = pld_lib.identity(value_discretization_interval=discretization)
    inv_z2 = sum(c / e.noise_multiplier**2 for e, c in atoms if isinstance(e, GaussianEvent | GNMaxEvent))
    if inv_z2 > 0:  # all Gaussians together are one Gaussian: exact, and one PLD
        pld = pld.compose(
            pld_lib.from_gaussian_mechanism(
                inv_z2**-0.5, value_discretization_interval=discretization, neighboring_relation=_REL
            )
        )
    for e, c in atoms:
        if isinstance(e, LaplaceEvent):
            one = pld_lib.from_laplace_mechanism(
                e.noise_multiplier, value_discretization_interval=discretization
            )
        elif isinstance(e, PureDpEvent):
            one = pld_lib.from_privacy_parameters(
                pld_common.DifferentialPrivacyParameters(e.epsilon, 0.0),
                value_discretization_interval=discretization,
            )
        else:
            continue
        pld = pld.compose(one.self_compose(c) if c > 1 else one)
    return float(pld.get_epsilon_for_delta(d))


def epsilon_rdp(event: Event, delta: float) -> float:
    d = check_delta(delta)
    atoms = flatten(event)
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=_REL)
    if not _has_pure(atoms):
        acc.compose(to_dp_accounting(event))
        return float(acc.get_epsilon(d))
    for e, c in atoms:
        if not isinstance(e, PureDpEvent):
            acc.compose(to_dp_accounting(e), c)
    rdp = acc.rdp
    for e, c in atoms:
        if isinstance(e, PureDpEvent):
            rdp = rdp + c * np.array([pure_dp_rdp(e.epsilon, a) for a in acc.orders])
    eps, _ = rdp_privacy_accountant.compute_epsilon(acc.orders, rdp, d)
    return float(eps)


def epsilon_basic(event: Event, delta: float) -> float:
    """Basic composition: sum of epsilons, delta split evenly over the approximate-DP events."""
    d = check_delta(delta)
    atoms = flatten(event)
    n_approx = sum(c for e, c in atoms if isinstance(e, GaussianEvent | GNMaxEvent))
    total = 0.0
    for e, c in atoms:
        if isinstance(e, LaplaceEvent):
            total += c / e.noise_multiplier
        elif isinstance(e, PureDpEvent):
            total += c * e.epsilon
        else:
            total += c * epsilon_for_sigma(e.noise_multiplier, d / n_approx)
    return total


def epsilon_exact(event: Event, delta: float) -> float | None:
    """The exact epsilon where a closed form exists (Gaussian compositions, one Laplace, one
    pure-DP release), else None."""
    d = check_delta(delta)
    atoms = flatten(event)
    if not atoms:
        return 0.0
    gaussians = [(e, c) for e, c in atoms if isinstance(e, GaussianEvent | GNMaxEvent)]
    if len(gaussians) == len(atoms):
        z = sum(c / (e.noise_multiplier**2) for e, c in gaussians) ** -0.5
        return epsilon_for_sigma(z, d)
    if len(atoms) == 1 and atoms[0][1] == 1:
        one = atoms[0][0]
        if isinstance(one, PureDpEvent):
            # What the node was told to spend and reports: the number the router checks the
            # node's report against (its worst case at delta > 0 is a hair lower).
            return float(one.epsilon)
        if isinstance(one, LaplaceEvent):
            return max(0.0, 1.0 / one.noise_multiplier + 2.0 * math.log1p(-d))
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
