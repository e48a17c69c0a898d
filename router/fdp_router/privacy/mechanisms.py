"""Noise mechanisms with secure samplers, and their calibration.

Called by the router's consensus (``noisy_counts``: GNMax over the integer vote
histogram), by node-side mechanisms (``noisy_counts`` on counts of
records), by ``events.py`` (calibrating a mechanism to a per-query epsilon, checking
numbers) and by the ledger and CLI (``check_positive``, ``check_delta``).

Sampling: every noise draw comes from OpenDP's samplers, which sample exactly on a discrete
grid (discrete Gaussian / discrete Laplace scaled by 2^k) using OS randomness, so they are
not vulnerable to Mironov's floating-point attack on textbook ``random``/``numpy.random``
float samplers. This module never uses ``random`` or ``numpy.random``.

Calibration: the analytic Gaussian mechanism of Balle & Wang (ICML 2018, Theorem 8): with
sensitivity 1 and standard deviation sigma, the mechanism is (eps, delta)-DP iff
``Phi(1/(2 sigma) - eps sigma) - e^eps Phi(-1/(2 sigma) - eps sigma) <= delta``.
Everything here is pure math except the samplers (which only read OS randomness).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from scipy.special import log_ndtr

from fdp_router.privacy.api import InvalidPrivacyRequest

_opendp_ready = False


def opendp() -> Any:
    """OpenDP with the `contrib` features enabled (imported lazily: it loads a native library).
    The one place that enables them: the demo node's mechanisms use it too."""
    global _opendp_ready
    import opendp.prelude as dp

    if not _opendp_ready:
        dp.enable_features("contrib")
        _opendp_ready = True
    return dp


def check_positive(name: str, value: float) -> float:
    """A finite, normal float > 0, else InvalidPrivacyRequest naming the field and why.

    Refused: bool (JSON ``true``), strings and other non-numbers, NaN, +-inf, integers too
    large for a float, values <= 0 and subnormal floats (below 2.2e-308: they have lost
    precision, and nothing calibrated to them means anything).
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyRequest(name, f"must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:
        raise InvalidPrivacyRequest(name, "must be finite") from None
    if math.isnan(v):
        raise InvalidPrivacyRequest(name, "must be a number, got NaN")
    if math.isinf(v):
        raise InvalidPrivacyRequest(name, "must be finite")
    if v <= 0:
        raise InvalidPrivacyRequest(name, f"must be > 0, got {v:g}")
    if v < sys.float_info.min:
        raise InvalidPrivacyRequest(name, f"must be a normal floating-point number, got subnormal {v!r}")
    return v


def check_delta(delta: float, name: str = "delta") -> float:
    """delta must lie strictly between 0 and 1."""
    if isinstance(delta, bool) or not isinstance(delta, int | float):
        raise InvalidPrivacyRequest(name, f"must be a number, got {type(delta).__name__}")
    d = float(delta)
    if math.isnan(d) or math.isinf(d) or not 0.0 < d < 1.0:
        raise InvalidPrivacyRequest(name, f"must be in (0, 1), got {d!r}")
    return d


# --- analytic Gaussian (Balle & Wang 2018) -------------------------------------------------


def _log_sub_exp(a: float, b: float) -> float:
    """log(e^a - e^b) for a >= b."""
    if b == -math.inf:
        return a
    if b >= a:
        return -math.inf
    return a + math.log1p(-math.exp(b - a))


def gaussian_delta(sigma: float, epsilon: float, sensitivity: float = 1.0) -> float:
    """Exact delta of the Gaussian mechanism (std sigma, L2 sensitivity) at epsilon."""
    s = check_positive("sigma", sigma) / check_positive("sensitivity", sensitivity)
    if epsilon < 0:
        raise InvalidPrivacyRequest("epsilon", f"must be >= 0, got {epsilon:g}")
    a = float(log_ndtr(1.0 / (2.0 * s) - epsilon * s))
    b = epsilon + float(log_ndtr(-1.0 / (2.0 * s) - epsilon * s))
    return max(0.0, math.exp(_log_sub_exp(a, b)))


def epsilon_for_sigma(sigma: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest epsilon such that the Gaussian mechanism with std `sigma` is (epsilon, delta)-DP."""
    d = check_delta(delta)
    s = check_positive("sigma", sigma)
    if gaussian_delta(s, 0.0, sensitivity) <= d:
        return 0.0
    lo, hi = 0.0, 1.0
    while gaussian_delta(s, hi, sensitivity) > d:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            raise InvalidPrivacyRequest("sigma", "too small: epsilon exceeds 1e6")
    for _ in range(200):  # bisection: delta(eps) is decreasing in eps
        mid = (lo + hi) / 2.0
        if gaussian_delta(s, mid, sensitivity) > d:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return hi  # the upper end is the valid (conservative) side


def sigma_for(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Smallest std such that the Gaussian mechanism is (epsilon, delta)-DP (analytic Gaussian)."""
    e = check_positive("epsilon", epsilon)
    d = check_delta(delta)
    sens = check_positive("sensitivity", sensitivity)
    return _sigma_for_cached(e, d) * sens


@lru_cache(maxsize=256)
def _sigma_for_cached(epsilon: float, delta: float) -> float:
    lo, hi = 1e-6, 1.0
    while gaussian_delta(hi, epsilon) > delta:
        lo, hi = hi, hi * 2.0
    for _ in range(200):  # delta(sigma) is decreasing in sigma
        mid = (lo + hi) / 2.0
        if gaussian_delta(mid, epsilon) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return hi  # conservative side: more noise


def laplace_scale_for(epsilon: float, sensitivity: float = 1.0) -> float:
    """Laplace scale b = sensitivity / epsilon gives epsilon-DP."""
    return check_positive("sensitivity", sensitivity) / check_positive("epsilon", epsilon)


# --- secure samplers (OpenDP) -------------------------------------------------------------


def gaussian_noise(sigma: float) -> float:
    """One draw of N(0, sigma^2), sampled exactly on a fine grid by OpenDP."""
    s = check_positive("sigma", sigma)
    return float(_gaussian_measurement(s)(0.0))


def laplace_noise(scale: float) -> float:
    """One draw of Laplace(0, scale), sampled exactly on a fine grid by OpenDP."""
    b = check_positive("scale", scale)
    return float(_laplace_measurement(b)(0.0))


def noisy_counts(counts: Sequence[int], sigma: float) -> list[int]:
    """The integer vector `counts` plus independent discrete Gaussian noise N_Z(0, sigma^2) on
    each entry (OpenDP's exact sampler on integers: no floating point anywhere).

    On a vector whose entries one unit moves by at most Delta_2 in L2 norm this is the
    discrete Gaussian mechanism (Canonne, Kamath & Steinke 2020): the same RDP bound as the
    continuous Gaussian with that sigma, eps(alpha) <= alpha Delta_2^2 / (2 sigma^2).
    """
    s = check_positive("sigma", sigma)
    if len(counts) == 0:
        raise InvalidPrivacyRequest("counts", "must not be empty")
    ints: list[int] = []
    for c in counts:
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise InvalidPrivacyRequest("counts", f"must be non-negative integers, got {c!r}")
        ints.append(c)
    return [int(v) for v in _int_vector_gaussian(s)(ints)]


@lru_cache(maxsize=256)
def _gaussian_measurement(sigma: float) -> Any:
    dp = opendp()
    return dp.m.make_gaussian(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=sigma)


@lru_cache(maxsize=256)
def _laplace_measurement(scale: float) -> Any:
    dp = opendp()
    return dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=scale)


@lru_cache(maxsize=256)
def _int_vector_gaussian(sigma: float) -> Any:
    dp = opendp()
    return dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=int)), dp.l2_distance(T=int), scale=sigma)
