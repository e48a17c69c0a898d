"""Node mechanisms: how a pure-DP node's release is charged, and the events the router builds.

``PureDpEvent(eps)`` is any eps-DP mechanism, accounted as its worst case, binary randomized
response. Its Rényi curve is checked against dp-accounting's randomized response (called
directly, under REPLACE_ONE, the only relation dp-accounting accepts it under; the curve of a
pair of distributions does not depend on which relation produced it), against a 400-digit
evaluation of the closed form, and against the pure-DP caps; compositions against
dp-accounting's accountants on the same randomized response and against the exact
binomial answer.
"""

from __future__ import annotations

import math

import dp_accounting
import mpmath
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant
from fdp_router.config import NodeMechanism
from fdp_router.privacy import filter as flt
from fdp_router.privacy.accounting import (
    epsilon_basic,
    epsilon_of,
    epsilon_pld,
    epsilon_rdp,
    fast_epsilon,
    tightest,
)
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.events import (
    ComposedEvent,
    GaussianEvent,
    PureDpEvent,
    SelfComposedEvent,
    event_for_node,
    flatten,
    from_dict,
    pure_dp_rdp,
    to_dict,
    to_dp_accounting,
)
from fdp_router.privacy.mechanisms import sigma_for

REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
EPSILONS = (0.05, 0.1, 0.3, 1.0, 3.0, 8.0)


def rr_event(eps: float) -> dp_accounting.RandomizedResponseDpEvent:
    """Binary randomized response that is exactly eps-DP: keeps its input w.p. e^eps/(1+e^eps)."""
    return dp_accounting.RandomizedResponseDpEvent(noise_parameter=2 / (1 + math.exp(eps)), num_buckets=2)


def rr_curve(eps: float, orders: list[float], count: int = 1) -> list[float]:
    acc = rdp_privacy_accountant.RdpAccountant(orders=orders, neighboring_relation=REPLACE_ONE)
    acc.compose(rr_event(eps), count)
    return [float(x) for x in acc.rdp]


def exact_curve(eps: float, alpha: float) -> mpmath.mpf:
    mpmath.mp.dps = 400
    e, a = mpmath.mpf(eps), mpmath.mpf(alpha)
    return mpmath.log((mpmath.sinh(a * e) - mpmath.sinh((a - 1) * e)) / mpmath.sinh(e)) / (a - 1)


# --- the Rényi curve of an eps-DP mechanism -------------------------------------------------------


@pytest.mark.parametrize("eps", EPSILONS)
def test_pure_dp_curve_is_never_below_randomized_response(eps: float) -> None:
    """Randomized response is an eps-DP mechanism: a curve below its curve would under-charge."""
    ours = flt.rdp_curve(PureDpEvent(eps))
    for a, mine, rr in zip(flt.ORDERS, ours, rr_curve(eps, list(flt.ORDERS)), strict=True):
        assert mine >= rr * (1 - 1e-9), (eps, a, mine, rr)
        assert mine <= rr * (1 + 1e-6), (eps, a, mine, rr)  # and tight: RR attains the bound


@pytest.mark.parametrize("eps", EPSILONS)
def test_pure_dp_curve_is_above_laplace_of_the_same_epsilon(eps: float) -> None:
    acc = rdp_privacy_accountant.RdpAccountant(orders=list(flt.ORDERS), neighboring_relation=ADD_OR_REMOVE)
    acc.compose(dp_accounting.LaplaceDpEvent(1 / eps))
    for mine, lap in zip(flt.rdp_curve(PureDpEvent(eps)), acc.rdp, strict=True):
        assert mine >= lap * (1 - 1e-12)


@pytest.mark.parametrize("eps", [1e-150, 1e-8, 1e-4, 0.01, 0.1, 1.0, 10.0, 50.0, 200.0])
@pytest.mark.parametrize("alpha", [1.01, 1.25, 2.0, 16.0, 256.0, 1e4, 1e6])
def test_pure_dp_curve_is_stable_valid_and_capped(eps: float, alpha: float) -> None:
    """Against 400 digits: never below the exact value, at most 1e-10 above it, finite for huge
    alpha*eps (no overflow), and never above min(eps, alpha eps^2/2)."""
    got = pure_dp_rdp(eps, alpha)
    exact = exact_curve(eps, alpha)
    assert math.isfinite(got)
    assert mpmath.mpf(got) >= exact
    assert mpmath.mpf(got) <= exact * (1 + mpmath.mpf("1.1e-10"))
    assert got <= eps
    assert got <= alpha * eps * eps / 2 * (1 + 1e-15)


def test_pure_dp_curve_refuses_bad_orders_and_epsilons() -> None:
    for bad in (1.0, 0.5, math.nan):
        with pytest.raises(InvalidPrivacyRequest):
            pure_dp_rdp(0.1, bad)
    for bad_eps in (0.0, -1.0, math.nan, math.inf, 1e-310):
        with pytest.raises(InvalidPrivacyRequest):
            PureDpEvent(bad_eps)
    assert pure_dp_rdp(0.7, math.inf) == 0.7


def test_to_dp_accounting_gives_the_eps_dp_randomized_response() -> None:
    ev = to_dp_accounting(PureDpEvent(0.7))
    assert isinstance(ev, dp_accounting.RandomizedResponseDpEvent) and ev.num_buckets == 2
    assert math.log(2 / ev.noise_parameter - 1) == pytest.approx(0.7, rel=1e-12)  # its pure epsilon


def test_pure_dp_events_round_trip_and_flatten() -> None:
    ev = ComposedEvent((PureDpEvent(0.3), SelfComposedEvent(PureDpEvent(0.1), 4), GaussianEvent(2.0)))
    assert to_dict(PureDpEvent(0.3)) == {"type": "pure_dp", "epsilon": 0.3}
    assert from_dict(to_dict(ev)) == ev
    assert flatten(ev) == [(PureDpEvent(0.3), 1), (PureDpEvent(0.1), 4), (GaussianEvent(2.0), 1)]


# --- reporting -----------------------------------------------------------------------------------


def test_one_pure_dp_release_reports_exactly_its_epsilon() -> None:
    """The ledger's Reservation.epsilon comes from fast_epsilon; the node is checked against it."""
    assert fast_epsilon(PureDpEvent(0.3), 1e-5) == 0.3
    assert epsilon_of(PureDpEvent(0.3), 1e-5) == 0.3
    assert fast_epsilon(SelfComposedEvent(PureDpEvent(0.3), 1), 1e-5) == 0.3
    rep = tightest(PureDpEvent(0.3), 1e-5)
    assert rep.epsilon <= 0.3 and rep.by_method["basic"] == 0.3


def exact_rr_delta(eps: float, k: int, eps_total: float) -> float:
    """Hockey-stick delta(eps_total) of k-fold eps randomized response: loss eps(2X - k)."""
    q = math.exp(eps) / (1 + math.exp(eps))
    total = 0.0
    for i in range(k + 1):
        loss = eps * (2 * i - k)
        if loss > eps_total:
            log_p = math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1)
            log_p += i * math.log(q) + (k - i) * math.log1p(-q)
            total += math.exp(log_p) * -math.expm1(eps_total - loss)
    return total


def exact_rr_epsilon(eps: float, k: int, delta: float) -> float:
    lo, hi = 0.0, eps * k
    for _ in range(100):  # delta(eps_total) decreases in eps_total
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if exact_rr_delta(eps, k, mid) > delta else (lo, mid)
    return hi


@pytest.mark.parametrize(("eps", "k"), [(0.1, 100), (0.3, 30), (1.0, 10)])
def test_composed_pure_dp_against_dp_accounting_and_the_exact_answer(eps: float, k: int) -> None:
    delta = 1e-5
    event = SelfComposedEvent(PureDpEvent(eps), k)
    # PLD: valid (the exact delta at our epsilon is within delta), nearly exact, and no looser
    # than dp-accounting's PLD of the same randomized response
    ours = epsilon_pld(event, delta)
    assert exact_rr_delta(eps, k, ours) <= delta * (1 + 1e-9)
    assert ours <= exact_rr_epsilon(eps, k, delta) + 1e-3
    pld = pld_privacy_accountant.PLDAccountant(REPLACE_ONE)
    for _ in range(k):  # not compose(event, k): dp-accounting 0.6.0's PLD drops `count` for RR
        pld.compose(rr_event(eps))
    assert ours <= pld.get_epsilon(delta) + 1e-9
    # RDP: dp-accounting's RR curve at its default orders, its own conversion
    acc = rdp_privacy_accountant.RdpAccountant(neighboring_relation=REPLACE_ONE)
    acc.compose(rr_event(eps), k)
    assert epsilon_rdp(event, delta) == pytest.approx(acc.get_epsilon(delta), rel=1e-6)
    assert epsilon_rdp(event, delta) >= acc.get_epsilon(delta) * (1 - 1e-9)
    # basic composition, and the tightest is their minimum
    assert epsilon_basic(event, delta) == pytest.approx(k * eps, rel=1e-12)
    rep = tightest(event, delta)
    assert rep.epsilon == min(rep.by_method.values()) < k * eps


def test_mixed_pure_dp_and_gaussian_composition() -> None:
    """RDP of the mix = dp-accounting's Gaussian curve + its RR curve, converted by
    dp-accounting; PLD is at most the RDP answer and basic composition."""
    delta, eps, z = 1e-5, 0.2, 4.0
    event = ComposedEvent((SelfComposedEvent(PureDpEvent(eps), 20), SelfComposedEvent(GaussianEvent(z), 10)))
    orders = list(rdp_privacy_accountant.DEFAULT_RDP_ORDERS)
    g = rdp_privacy_accountant.RdpAccountant(orders=orders, neighboring_relation=ADD_OR_REMOVE)
    g.compose(dp_accounting.GaussianDpEvent(z), 10)
    curve = [a + b for a, b in zip(g.rdp, rr_curve(eps, orders, 20), strict=True)]
    expected, _ = rdp_privacy_accountant.compute_epsilon(orders, curve, delta)
    assert epsilon_rdp(event, delta) == pytest.approx(expected, rel=1e-6)
    rep = tightest(event, delta)
    assert rep.by_method["pld"] <= rep.by_method["rdp"] <= rep.by_method["basic"]
    assert fast_epsilon(event, delta) == min(rep.by_method["rdp"], rep.by_method["basic"])


# --- admission ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_filter_admission_of_pure_dp_releases_is_never_more_than_the_exact_answer_allows(eps: float) -> None:
    budget, delta = 10.0, 1e-5
    k = flt.admitted_count(PureDpEvent(eps), budget, delta)
    assert exact_rr_delta(eps, k, budget) <= delta  # k releases are (10, 1e-5)-DP: not over-admitted
    assert epsilon_pld(SelfComposedEvent(PureDpEvent(eps), k), delta) <= budget
    basic = math.floor(budget / eps + 1e-9)
    assert k >= (3 * basic if eps == 0.1 else basic - 1)  # many small releases: far beyond basic


# --- the event the router charges for a node --------------------------------------------------


def test_event_for_node_follows_the_declared_mechanism() -> None:
    assert event_for_node(NodeMechanism.PURE_DP, 0.3, 1e-5) == PureDpEvent(0.3)
    assert event_for_node("pure_dp", 0.3, 1e-5) == PureDpEvent(0.3)
    g = event_for_node(NodeMechanism.GAUSSIAN, 0.5, 1e-5)
    assert g == GaussianEvent(sigma_for(0.5, 1e-5))
    assert fast_epsilon(g, 1e-5) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("mechanism", [NodeMechanism.NONE, "none", "laplace", "", 3])
def test_event_for_node_refuses_nodes_without_a_mechanism(mechanism: object) -> None:
    with pytest.raises(InvalidPrivacyRequest) as info:
        event_for_node(mechanism, 0.3, 1e-5)  # type: ignore[arg-type]
    assert info.value.field == "mechanism"


@pytest.mark.parametrize(("eps", "delta"), [(math.nan, 1e-5), (0.0, 1e-5), (True, 1e-5), (0.3, 0.0)])
def test_event_for_node_refuses_bad_numbers(eps: float, delta: float) -> None:
    with pytest.raises(InvalidPrivacyRequest):
        event_for_node(NodeMechanism.GAUSSIAN, eps, delta)
    if delta > 0:
        with pytest.raises(InvalidPrivacyRequest):
            event_for_node(NodeMechanism.PURE_DP, eps, delta)
