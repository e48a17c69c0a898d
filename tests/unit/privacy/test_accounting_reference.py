"""Reference values: our accounting against closed forms and against dp-accounting itself.

Closed forms are computed here from their formulas (Balle & Wang's analytic Gaussian with
math.erfc; basic composition; the Gaussian RDP curve alpha/(2 z^2) and GNMax's alpha/sigma^2),
and dp-accounting's accountants are called directly in the test, independently of our code.
The admission filter's conversion is checked against dp-accounting's ``compute_epsilon`` and
its admitted counts against dp-accounting's fixed-sequence accountants.
"""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import gaussian_mechanism
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from fdp_router.config import PrivacyConfig
from fdp_router.privacy import filter as flt
from fdp_router.privacy.accounting import epsilon_basic, epsilon_of, epsilon_pld, epsilon_rdp, tightest
from fdp_router.privacy.events import (
    ComposedEvent,
    GaussianEvent,
    GNMaxEvent,
    LaplaceEvent,
    SelfComposedEvent,
    event_for_request,
    from_dict,
    to_dict,
    to_dp_accounting,
)
from fdp_router.privacy.mechanisms import epsilon_for_sigma, gaussian_delta, sigma_for

REL = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def phi(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2))


def analytic_delta(sigma: float, eps: float) -> float:
    """Balle & Wang 2018, Theorem 8, sensitivity 1."""
    return phi(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * phi(-1 / (2 * sigma) - eps * sigma)


@pytest.mark.parametrize(("sigma", "eps"), [(0.8, 0.5), (2.0, 1.0), (5.0, 0.2), (30.0, 0.05)])
def test_gaussian_delta_matches_the_closed_form(sigma: float, eps: float) -> None:
    assert gaussian_delta(sigma, eps) == pytest.approx(analytic_delta(sigma, eps), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(("eps", "delta"), [(0.1, 1e-5), (1.0, 1e-5), (3.0, 1e-6), (0.5, 1e-3)])
def test_sigma_calibration_round_trips_and_matches_dp_accounting(eps: float, delta: float) -> None:
    sigma = sigma_for(eps, delta)
    assert analytic_delta(sigma, eps) <= delta * (1 + 1e-9)  # valid side
    assert analytic_delta(sigma * 0.999, eps) > delta  # and tight
    assert sigma == pytest.approx(gaussian_mechanism.get_sigma_gaussian(eps, delta), rel=1e-6)
    assert epsilon_for_sigma(sigma, delta) == pytest.approx(eps, rel=1e-6)
    assert epsilon_for_sigma(sigma, delta) == pytest.approx(
        gaussian_mechanism.get_epsilon_gaussian(sigma, delta), rel=1e-6
    )


@pytest.mark.parametrize(("z", "k", "delta"), [(1.0, 4, 1e-5), (2.0, 10, 1e-5), (5.0, 100, 1e-6)])
def test_composed_gaussians_against_the_exact_answer(z: float, k: int, delta: float) -> None:
    """k Gaussians with multiplier z compose to one Gaussian with multiplier z/sqrt(k): exact."""
    event = SelfComposedEvent(GaussianEvent(z), k)
    exact = epsilon_for_sigma(z / math.sqrt(k), delta)
    rep = tightest(event, delta)
    assert rep.method == "analytic" and rep.epsilon == pytest.approx(exact, rel=1e-12)
    assert rep.by_method["pld"] >= exact * (1 - 1e-6)  # PLD never below the truth (valid)
    assert rep.by_method["pld"] == pytest.approx(exact, rel=0.01)  # and nearly tight
    assert rep.by_method["pld"] < rep.by_method["rdp"]
    # against dp-accounting, called directly
    pld = pld_privacy_accountant.PLDAccountant(REL)
    pld.compose(dp_accounting.GaussianDpEvent(z), k)
    assert epsilon_pld(event, delta) == pytest.approx(pld.get_epsilon(delta), rel=1e-9)
    rdp = rdp_privacy_accountant.RdpAccountant(neighboring_relation=REL)
    rdp.compose(dp_accounting.GaussianDpEvent(z), k)
    assert epsilon_rdp(event, delta) == pytest.approx(rdp.get_epsilon(delta), rel=1e-9)
    # basic composition: delta split over k, each priced by the analytic Gaussian
    assert epsilon_basic(event, delta) == pytest.approx(k * epsilon_for_sigma(z, delta / k), rel=1e-9)
    assert rep.epsilon == min(rep.by_method.values())


@pytest.mark.parametrize(("b", "k"), [(1.0, 1), (2.0, 10), (10.0, 50)])
def test_composed_laplace_against_basic_composition_and_dp_accounting(b: float, k: int) -> None:
    event = SelfComposedEvent(LaplaceEvent(b), k)
    assert epsilon_basic(event, 1e-5) == pytest.approx(k / b, rel=1e-12)  # closed form
    pld = pld_privacy_accountant.PLDAccountant(REL)
    pld.compose(dp_accounting.LaplaceDpEvent(b), k)
    assert epsilon_pld(event, 1e-5) == pytest.approx(pld.get_epsilon(1e-5), rel=1e-9)
    assert epsilon_of(event, 1e-5) <= k / b + 1e-9
    if k == 1:  # one Laplace: exact closed form 1/b + 2 log(1 - delta), which PLD approaches
        assert epsilon_of(event, 1e-5) == pytest.approx(1 / b + 2 * math.log1p(-1e-5), rel=1e-12)
        assert epsilon_pld(event, 1e-5, discretization=1e-6) == pytest.approx(
            epsilon_of(event, 1e-5), abs=1e-5
        )


def test_laplace_sensitivity_scales_the_noise_multiplier() -> None:
    assert epsilon_basic(LaplaceEvent(scale=4.0, sensitivity=2.0), 1e-5) == pytest.approx(0.5)


def test_rdp_curves_match_closed_forms() -> None:
    z, sigma = 3.0, 4.0
    g = flt.rdp_curve(GaussianEvent(z))
    gn = flt.rdp_curve(GNMaxEvent(sigma))
    for a, rg, rgn in zip(flt.ORDERS, g, gn, strict=True):
        assert rg == pytest.approx(a / (2 * z * z), rel=1e-9)
        assert rgn == pytest.approx(a / (sigma * sigma), rel=1e-9)  # PATE's GNMax
    comp = flt.rdp_curve(ComposedEvent((GaussianEvent(z), SelfComposedEvent(GNMaxEvent(sigma), 3))))
    for a, r in zip(flt.ORDERS, comp, strict=True):
        assert r == pytest.approx(a / (2 * z * z) + 3 * a / (sigma * sigma), rel=1e-9)


def improved_budget(eps: float, delta: float, alpha: float) -> float:
    """B(alpha) of the filter: the improved RDP -> DP conversion at delta/|ORDERS|."""
    n = len(flt.ORDERS)
    return eps + (math.log(delta / n) + math.log(alpha)) / (alpha - 1) - math.log(1 - 1 / alpha)


@pytest.mark.parametrize("z", [1.0, 2.0, 5.0])
def test_filter_admitted_count_matches_a_brute_force_of_the_rule(z: float) -> None:
    eps, delta = 10.0, 1e-5

    def fits(k: int) -> bool:
        return any(k * a / (2 * z * z) <= improved_budget(eps, delta, a) for a in flt.ORDERS)

    expected = 0
    while fits(expected + 1):
        expected += 1
    assert flt.admitted_count(GaussianEvent(z), eps, delta) == expected
    # and the sequential rule the ledger applies gives the same count
    spent, admitted = flt.zero(), 0
    cost = flt.rdp_curve(GaussianEvent(z))
    while flt.admits(spent, cost, eps, delta):
        spent, admitted = flt.add(spent, cost), admitted + 1
    assert admitted == expected


@pytest.mark.parametrize(("eps", "delta"), [(10.0, 1e-5), (1.0, 1e-6), (3.0, 1e-3)])
def test_filter_budget_is_dp_accountings_improved_conversion_at_delta_over_the_orders(
    eps: float, delta: float
) -> None:
    """At each order, an RDP spend of exactly B(alpha) converts back to epsilon at
    delta/|ORDERS| by dp-accounting's own (improved) conversion."""
    per_order = delta / len(flt.ORDERS)
    checked = 0
    for a, b in zip(flt.ORDERS, flt.budget_curve(eps, delta), strict=True):
        assert b == pytest.approx(improved_budget(eps, delta, a), rel=1e-12)
        if b <= 0:  # this order admits nothing (compute_epsilon refuses a negative divergence)
            continue
        back, _ = rdp_privacy_accountant.compute_epsilon([a], [b], per_order)
        assert back == pytest.approx(eps, rel=1e-9)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("alpha", [1.25, 2.0, 8.0, 64.0, 256.0])
def test_the_hockey_stick_bound_per_order_is_delta_over_the_orders(alpha: float) -> None:
    """Step 3 of the filter's proof: sup_x (1 - e^(eps-x)) e^(-(alpha-1)(x-B)) = delta/|A|."""
    eps, delta = 10.0, 1e-5
    b = improved_budget(eps, delta, alpha)

    def term(x: float) -> float:
        return (1 - math.exp(eps - x)) * math.exp(-(alpha - 1) * (x - b))

    x_star = eps - math.log(1 - 1 / alpha)  # where the derivative vanishes
    assert term(x_star) == pytest.approx(delta / len(flt.ORDERS), rel=1e-9)
    grid = [eps + i * 1e-3 for i in range(1, 20000)]
    assert max(term(x) for x in grid) <= term(x_star) * (1 + 1e-12)


def test_filter_admits_what_issue_10_asks_and_more_than_the_classic_conversion() -> None:
    eps, delta = 10.0, 1e-5
    n = len(flt.ORDERS)

    def classic(z: float) -> int:
        return max(math.floor((eps - math.log(n / delta) / (a - 1)) / (a / (2 * z * z))) for a in flt.ORDERS)

    assert (classic(5.0), classic(2.0)) == (64, 10)  # the old rule, for the record
    assert flt.admitted_count(GaussianEvent(5.0), eps, delta) >= 72
    assert flt.admitted_count(GaussianEvent(2.0), eps, delta) >= 11


@pytest.mark.parametrize(
    "single",
    [GaussianEvent(1.0), GaussianEvent(2.0), GaussianEvent(5.0), GNMaxEvent(3.0), LaplaceEvent(10.0)],
)
def test_the_filter_never_admits_more_than_a_fixed_sequence_accountant_allows(single: object) -> None:
    """Sanity check against over-admission: the k events the filter admits under (10, 1e-5),
    taken as a fixed sequence, are (10, 1e-5)-DP by dp-accounting's RDP and PLD accountants
    (which, for a fixed sequence, need no delta split and so are never stricter)."""
    eps, delta = 10.0, 1e-5
    k = flt.admitted_count(single, eps, delta)  # type: ignore[arg-type]
    assert k >= 1
    dp_event = dp_accounting.SelfComposedDpEvent(to_dp_accounting(single), k)
    rdp = rdp_privacy_accountant.RdpAccountant(neighboring_relation=REL)
    rdp.compose(dp_event)
    assert rdp.get_epsilon(delta) <= eps
    pld = pld_privacy_accountant.PLDAccountant(REL)
    pld.compose(dp_event)
    assert pld.get_epsilon(delta) <= eps


def test_filter_admits_several_times_more_than_basic_composition() -> None:
    from fdp_router.privacy.cli import basic_count

    for z, factor in ((2.0, 2), (5.0, 4)):
        admitted = flt.admitted_count(GaussianEvent(z), 10.0, 1e-5)
        basic = basic_count(GaussianEvent(z), 10.0, 1e-5)
        assert admitted >= factor * basic, (z, admitted, basic)


def test_consumed_epsilon_is_the_smallest_budget_that_admits_the_spend() -> None:
    cost = flt.rdp_curve(GaussianEvent(3.0))
    spent = flt.add(flt.add(flt.zero(), cost), cost)
    consumed = flt.filter_epsilon(spent, 1e-5)
    assert flt.admits(flt.zero(), spent, consumed + 1e-9, 1e-5)
    assert not flt.admits(flt.zero(), spent, consumed - 1e-6, 1e-5)


def test_event_for_request_calibrates_the_policy_mechanism() -> None:
    gauss = PrivacyConfig()
    ev = event_for_request(gauss, 0.5)
    assert isinstance(ev, GaussianEvent)
    assert ev.noise_multiplier == pytest.approx(gaussian_mechanism.get_sigma_gaussian(0.5, 1e-5), rel=1e-6)
    assert epsilon_of(ev, gauss.delta) == pytest.approx(0.5, rel=1e-3)
    lap = PrivacyConfig(mechanism="laplace")
    ev2 = event_for_request(lap, None)
    assert ev2 == LaplaceEvent(1 / lap.default_epsilon_per_query)


def test_events_round_trip_through_dicts() -> None:
    ev = ComposedEvent((GaussianEvent(2.0), SelfComposedEvent(LaplaceEvent(3.0, 2.0), 4), GNMaxEvent(1.5)))
    assert from_dict(to_dict(ev)) == ev
