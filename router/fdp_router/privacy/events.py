"""Privacy events: frozen value objects that describe one release (or a composition of them).

In the spirit of dp_accounting's ``DpEvent``: an event says *what* was released (a Gaussian
with noise multiplier z = sigma / sensitivity, a Laplace with scale b, a GNMax consensus
vote, a node's epsilon-DP mechanism, compositions); accountants (``accounting.py``,
``filter.py``) turn it into epsilons. Unknown events are rejected, never ignored.

``PureDpEvent(epsilon)`` is *any* epsilon-DP mechanism (delta 0) run by a hospital node (a
``pure_dp`` node: Laplace, report-noisy-max, exponential...). We know nothing of it but its
epsilon, so it is accounted as the worst epsilon-DP mechanism, binary randomized response:
its Rényi curve ``pure_dp_rdp`` is the largest of any epsilon-DP mechanism at every order.
dp_accounting 0.6.0 has no event for that under add-or-remove-one (its
``RandomizedResponseDpEvent`` is refused by both accountants under that relation), so
``filter.rdp_curve`` and ``accounting`` handle it themselves.

Called by the router's request path (``event_for_node`` per request, ``gnmax_event`` for
consensus, ``check_epsilon`` on the client's epsilon), by the ledger (which stores the
event's RDP curve) and by the CLI. Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dp_accounting

from fdp_router.config import Mechanism, NodeMechanism, PrivacyConfig
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.mechanisms import check_positive, laplace_scale_for, sigma_for


def _positive_finite(name: str, value: float) -> None:
    check_positive(name, value)


@dataclass(frozen=True, slots=True)
class GaussianEvent:
    """Gaussian noise with std = noise_multiplier * L2 sensitivity."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        _positive_finite("noise_multiplier", self.noise_multiplier)


@dataclass(frozen=True, slots=True)
class LaplaceEvent:
    """Laplace noise with scale b on a query of L1 sensitivity `sensitivity`: (sensitivity/b)-DP."""

    scale: float
    sensitivity: float = 1.0

    def __post_init__(self) -> None:
        _positive_finite("scale", self.scale)
        _positive_finite("sensitivity", self.sensitivity)

    @property
    def noise_multiplier(self) -> float:
        return self.scale / self.sensitivity


@dataclass(frozen=True, slots=True)
class GNMaxEvent:
    """One GNMax consensus vote (PATE): Gaussian(sigma) on each vote count, argmax released.

    One hospital moving its vote changes two counts by 1 (L2 sensitivity sqrt 2), so this is a
    Gaussian mechanism with noise multiplier sigma/sqrt(2): RDP eps(alpha) = alpha / sigma^2.
    """

    sigma: float

    def __post_init__(self) -> None:
        _positive_finite("sigma", self.sigma)

    @property
    def noise_multiplier(self) -> float:
        return self.sigma / math.sqrt(2.0)


@dataclass(frozen=True, slots=True)
class PureDpEvent:
    """An epsilon-DP mechanism (delta 0) run by a node, of which only epsilon is known.

    Accounted as its worst case, binary randomized response at epsilon (``pure_dp_rdp``).
    """

    epsilon: float

    def __post_init__(self) -> None:
        _positive_finite("epsilon", self.epsilon)


@dataclass(frozen=True, slots=True)
class ComposedEvent:
    events: tuple[Event, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.events, tuple):
            raise InvalidPrivacyRequest("events", "must be a tuple of events")
        for e in self.events:
            _check_known(e)


@dataclass(frozen=True, slots=True)
class SelfComposedEvent:
    event: Event
    count: int

    def __post_init__(self) -> None:
        _check_known(self.event)
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise InvalidPrivacyRequest("count", f"must be an integer >= 0, got {self.count!r}")


Event = GaussianEvent | LaplaceEvent | GNMaxEvent | PureDpEvent | ComposedEvent | SelfComposedEvent
Atom = GaussianEvent | LaplaceEvent | GNMaxEvent | PureDpEvent
_ATOMS = (GaussianEvent, LaplaceEvent, GNMaxEvent, PureDpEvent)
_KNOWN = (*_ATOMS, ComposedEvent, SelfComposedEvent)


def _check_known(event: object) -> None:
    if not isinstance(event, _KNOWN):
        raise InvalidPrivacyRequest("event", f"unknown privacy event type {type(event).__name__}")


def to_dp_accounting(event: object) -> dp_accounting.DpEvent:
    """The dp_accounting DpEvent for `event` (noise multipliers already divided by sensitivity)."""
    if isinstance(event, GaussianEvent):
        return dp_accounting.GaussianDpEvent(event.noise_multiplier)
    if isinstance(event, GNMaxEvent):
        return dp_accounting.GaussianDpEvent(event.noise_multiplier)
    if isinstance(event, LaplaceEvent):
        return dp_accounting.LaplaceDpEvent(event.noise_multiplier)
    if isinstance(event, PureDpEvent):
        # Binary randomized response keeping the input with probability e^eps / (1 + e^eps):
        # the dominating pair of every eps-DP mechanism. dp_accounting accepts it only under
        # REPLACE_ONE / REPLACE_SPECIAL; our own accountants handle PureDpEvent directly.
        t = math.exp(-event.epsilon)  # 2 / (1 + e^eps), without overflow
        return dp_accounting.RandomizedResponseDpEvent(noise_parameter=2.0 * t / (1.0 + t), num_buckets=2)
    if isinstance(event, ComposedEvent):
        return dp_accounting.ComposedDpEvent([to_dp_accounting(e) for e in event.events])
    if isinstance(event, SelfComposedEvent):
        return dp_accounting.SelfComposedDpEvent(to_dp_accounting(event.event), event.count)
    raise InvalidPrivacyRequest("event", f"unknown privacy event type {type(event).__name__}")


def flatten(event: object, count: int = 1) -> list[tuple[Atom, int]]:
    """Atomic events with their multiplicities."""
    if isinstance(event, _ATOMS):
        return [(event, count)] if count > 0 else []
    if isinstance(event, ComposedEvent):
        out: list[tuple[Atom, int]] = []
        for e in event.events:
            out.extend(flatten(e, count))
        return out
    if isinstance(event, SelfComposedEvent):
        return flatten(event.event, count * event.count)
    raise InvalidPrivacyRequest("event", f"unknown privacy event type {type(event).__name__}")


def to_dict(event: object) -> dict[str, Any]:
    """JSON-friendly form, stored with each reservation."""
    if isinstance(event, GaussianEvent):
        return {"type": "gaussian", "noise_multiplier": event.noise_multiplier}
    if isinstance(event, LaplaceEvent):
        return {"type": "laplace", "scale": event.scale, "sensitivity": event.sensitivity}
    if isinstance(event, GNMaxEvent):
        return {"type": "gnmax", "sigma": event.sigma}
    if isinstance(event, PureDpEvent):
        return {"type": "pure_dp", "epsilon": event.epsilon}
    if isinstance(event, ComposedEvent):
        return {"type": "composed", "events": [to_dict(e) for e in event.events]}
    if isinstance(event, SelfComposedEvent):
        return {"type": "self_composed", "event": to_dict(event.event), "count": event.count}
    raise InvalidPrivacyRequest("event", f"unknown privacy event type {type(event).__name__}")


def from_dict(data: dict[str, Any]) -> Event:
    kind = data.get("type")
    if kind == "gaussian":
        return GaussianEvent(float(data["noise_multiplier"]))
    if kind == "laplace":
        return LaplaceEvent(float(data["scale"]), float(data.get("sensitivity", 1.0)))
    if kind == "gnmax":
        return GNMaxEvent(float(data["sigma"]))
    if kind == "pure_dp":
        return PureDpEvent(float(data["epsilon"]))
    if kind == "composed":
        return ComposedEvent(tuple(from_dict(e) for e in data["events"]))
    if kind == "self_composed":
        return SelfComposedEvent(from_dict(data["event"]), int(data["count"]))
    raise InvalidPrivacyRequest("event", f"unknown privacy event type {kind!r}")


def gnmax_event(sigma: float) -> GNMaxEvent:
    """The cost of one consensus vote with Gaussian noise std `sigma` on each count."""
    return GNMaxEvent(sigma)


def check_epsilon(
    epsilon: float | None, privacy_cfg: PrivacyConfig, field_name: str = "privacy_budget"
) -> float:
    """A request's epsilon: None -> the policy default; else a finite, normal float (no bool,
    string, NaN, infinity or subnormal) within [min_epsilon, max_epsilon_per_query]."""
    if epsilon is None:
        return float(privacy_cfg.default_epsilon_per_query)
    e = check_positive(field_name, epsilon)
    if e < privacy_cfg.min_epsilon:
        bound = "min_epsilon_per_query"
        if privacy_cfg.min_epsilon_per_query is None:
            bound += " (default: default_epsilon_per_query)"
        raise InvalidPrivacyRequest(
            field_name, f"{e:g} is below the policy's {bound} {privacy_cfg.min_epsilon:g}"
        )
    if e > privacy_cfg.max_epsilon_per_query:
        raise InvalidPrivacyRequest(
            field_name,
            f"{e:g} exceeds the policy's max_epsilon_per_query {privacy_cfg.max_epsilon_per_query:g}",
        )
    return e


def event_for_node(mechanism: NodeMechanism | str, epsilon: float, delta: float) -> Event:
    """What the router charges for a release by a node running `mechanism` at (epsilon, delta).

    ``pure_dp``: the node's epsilon-DP mechanism, ``PureDpEvent(epsilon)``; ``gaussian``: an
    L2-sensitivity-1 Gaussian with the analytic-Gaussian sigma for (epsilon, delta); ``none``
    releases nothing (InvalidPrivacyRequest: such a node is never used for a release).
    """
    try:  # the request path passes the member itself: skip the (slow) enum lookup
        mech = mechanism if isinstance(mechanism, NodeMechanism) else NodeMechanism(mechanism)
    except ValueError:
        raise InvalidPrivacyRequest("mechanism", f"unknown node mechanism {mechanism!r}") from None
    e = check_positive("epsilon", epsilon)
    if mech is NodeMechanism.PURE_DP:
        return PureDpEvent(e)
    if mech is NodeMechanism.GAUSSIAN:
        return GaussianEvent(sigma_for(e, delta))
    raise InvalidPrivacyRequest(
        "mechanism", "the node declares no DP mechanism (none): its answers are never released"
    )


def event_for_request(privacy_cfg: PrivacyConfig, epsilon: float | None) -> Event:
    """Calibrate the policy's (deprecated) mechanism to the request's epsilon at the policy's
    delta. Kept for callers that have no node yet (budget documents, benchmarks, tests);
    a node's release is charged by ``event_for_node``."""
    e = check_epsilon(epsilon, privacy_cfg)
    if privacy_cfg.mechanism == Mechanism.GAUSSIAN:
        return GaussianEvent(sigma_for(e, privacy_cfg.delta))
    if privacy_cfg.mechanism == Mechanism.LAPLACE:
        return LaplaceEvent(laplace_scale_for(e))
    raise InvalidPrivacyRequest("mechanism", f"unknown mechanism {privacy_cfg.mechanism!r}")


# --- the Rényi curve of an epsilon-DP mechanism ----------------------------------------------


def _log_expm1(x: float) -> float:
    """log(e^x - 1) for x > 0, without overflow."""
    return x + math.log1p(-math.exp(-x)) if x > 30.0 else math.log(math.expm1(x))


def _softplus(x: float) -> float:
    """log(1 + e^x), without overflow."""
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def pure_dp_rdp(epsilon: float, order: float) -> float:
    """Tight RDP epsilon(alpha) of an epsilon-DP mechanism.

    Every pair of output distributions with likelihood ratio in [e^-eps, e^eps] has Rényi
    divergence (Mironov 2017) at most that of binary randomized response at eps, which attains
    it (the tight pure-DP -> RDP conversion; T. Steinke, "Tight RDP & zCDP bounds from pure
    DP", differentialprivacy.org/pdp-to-zcdp, 2022):

        eps(alpha) = log((sinh(alpha eps) - sinh((alpha-1) eps)) / sinh(eps)) / (alpha - 1)
                   = log(1 + X) / (alpha - 1),
        X = (e^(alpha eps) - 1)(1 - e^(-(alpha-1) eps)) / (1 + e^eps)

    (the same number: multiply out). X is a product of positive factors, so it is computed in
    log space with no cancellation and no overflow for large alpha*eps. The result is rounded
    up by 1e-10 relative (float safety) and capped at min(eps, alpha eps^2 / 2) (pure DP;
    Bun & Steinke 2016, Prop. 3.3; the second rounded up by two ulps), both of which bound the
    exact value from above.
    """
    e = check_positive("epsilon", epsilon)
    a = float(order)
    if not a > 1.0:
        raise InvalidPrivacyRequest("order", f"must be > 1, got {order!r}")
    if math.isinf(a):
        return e
    log_x = _log_expm1(a * e) + math.log(-math.expm1(-(a - 1.0) * e)) - _softplus(e)
    rr = _softplus(log_x) / (a - 1.0)
    bun_steinke = math.nextafter(math.nextafter(a * e * e / 2.0, math.inf), math.inf)  # round up
    return min(e, bun_steinke, rr * (1.0 + 1e-10))
