"""Privacy events: frozen value objects that describe one release (or a composition of them).

In the spirit of dp_accounting's ``DpEvent``: an event says *what* was released (a Gaussian
with noise multiplier z = sigma / sensitivity, a Laplace with scale b, a GNMax consensus
vote, compositions); accountants (``accounting.py``, ``filter.py``) turn it into epsilons.
Unknown events are rejected, never ignored.

Called by the router's request path (``event_for_request`` per request, ``gnmax_event`` for
consensus), by the ledger (which stores the event's RDP curve) and by the CLI.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dp_accounting

from fdp_router.config import Mechanism, PrivacyConfig
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.mechanisms import check_positive, laplace_scale_for, sigma_for


def _positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPrivacyRequest(name, f"must be a number, got {type(value).__name__}")
    if math.isnan(value) or math.isinf(value) or value <= 0:
        raise InvalidPrivacyRequest(name, f"must be a finite number > 0, got {value!r}")


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


Event = GaussianEvent | LaplaceEvent | GNMaxEvent | ComposedEvent | SelfComposedEvent
_KNOWN = (GaussianEvent, LaplaceEvent, GNMaxEvent, ComposedEvent, SelfComposedEvent)


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
    if isinstance(event, ComposedEvent):
        return dp_accounting.ComposedDpEvent([to_dp_accounting(e) for e in event.events])
    if isinstance(event, SelfComposedEvent):
        return dp_accounting.SelfComposedDpEvent(to_dp_accounting(event.event), event.count)
    raise InvalidPrivacyRequest("event", f"unknown privacy event type {type(event).__name__}")


def flatten(event: object, count: int = 1) -> list[tuple[GaussianEvent | LaplaceEvent | GNMaxEvent, int]]:
    """Atomic events with their multiplicities."""
    if isinstance(event, GaussianEvent | LaplaceEvent | GNMaxEvent):
        return [(event, count)] if count > 0 else []
    if isinstance(event, ComposedEvent):
        out: list[tuple[GaussianEvent | LaplaceEvent | GNMaxEvent, int]] = []
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
    """A request's epsilon: None -> the policy default; must be finite, > 0 and <= the policy max."""
    if epsilon is None:
        return float(privacy_cfg.default_epsilon_per_query)
    e = check_positive(field_name, epsilon)
    if e > privacy_cfg.max_epsilon_per_query:
        raise InvalidPrivacyRequest(
            field_name,
            f"{e:g} exceeds the policy's max_epsilon_per_query {privacy_cfg.max_epsilon_per_query:g}",
        )
    return e


def event_for_request(privacy_cfg: PrivacyConfig, epsilon: float | None) -> Event:
    """Calibrate the policy's mechanism to the request's epsilon (at the policy's delta)."""
    e = check_epsilon(epsilon, privacy_cfg)
    if privacy_cfg.mechanism == Mechanism.GAUSSIAN:
        return GaussianEvent(sigma_for(e, privacy_cfg.delta))
    if privacy_cfg.mechanism == Mechanism.LAPLACE:
        return LaplaceEvent(laplace_scale_for(e))
    raise InvalidPrivacyRequest("mechanism", f"unknown mechanism {privacy_cfg.mechanism!r}")
