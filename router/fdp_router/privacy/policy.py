"""A privacy policy turned into what it guarantees, and into budget windows.

``guarantee(cfg)`` states, in words and numbers, the DP guarantee a policy actually gives
(the operator writes it on PrivacyPolicy status; the router shows it in budget documents),
and what it protects (DESIGN section 5): a patient record at a hospital for node-side
mechanisms, a hospital's whole data for consensus votes. With a refreshing window the
guarantee is per (unit, window), not per person forever; per-user budgets assume clinicians
do not collude, and the per-hospital budget is what bounds all clinicians together: all of
it is said, not hidden.

``window_of(cfg, t)`` maps a time to its window (window id = floor(t / period); one window
for a lifetime budget). ``check_policy(cfg)`` refuses a policy whose budgets cannot admit
even one query at ``max_epsilon_per_query`` from a node running either supported mechanism.

Called by the ledger, the router and the operator. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from fdp_router.config import NodeMechanism, PrivacyConfig
from fdp_router.privacy.accounting import fast_epsilon
from fdp_router.privacy.api import InvalidPrivacyRequest, Scope
from fdp_router.privacy.events import event_for_node, gnmax_event
from fdp_router.privacy.filter import admits, rdp_curve, zero

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def budget_of(cfg: PrivacyConfig, scope: Scope) -> float:
    return {
        Scope.USER: cfg.budgets.per_user,
        Scope.DEPARTMENT: cfg.budgets.per_department,
        Scope.HOSPITAL: cfg.budgets.per_hospital,
    }[scope]


def _budget_field(scope: Scope) -> str:
    return {
        Scope.USER: "budgets.per_user",
        Scope.DEPARTMENT: "budgets.per_department",
        Scope.HOSPITAL: "budgets.per_hospital",
    }[scope]


def format_period(seconds: int) -> str:
    """86400 -> "24h", 604800 -> "7d", 1800 -> "30m" (hours up to two days, as people say it)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and not (unit == "d" and seconds <= 2 * 86400):
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


PROTECTS = (
    "a patient record at a hospital (record-level DP) for answers from a node-side mechanism; "
    "a hospital's whole data for consensus votes (one vote per hospital)"
)


def _consensus_epsilon(cfg: PrivacyConfig) -> float:
    """What one consensus request costs alone, as the ledger reports it."""
    return fast_epsilon(gnmax_event(cfg.consensus.sigma), cfg.delta)


@dataclass(frozen=True, slots=True)
class Guarantee:
    epsilon: float  # per-user budget
    delta: float
    unit: str  # "user": whose budget the headline epsilon is
    window: str  # "lifetime" or e.g. "24h"
    window_seconds: int | None
    text: str
    budgets: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    protects: str = PROTECTS  # what one DP unit (neighbouring data sets) is


def guarantee(cfg: PrivacyConfig) -> Guarantee:
    """The guarantee `cfg` gives, e.g. "(10, 1e-05)-DP per user per 24h window"."""
    eps, delta = cfg.budgets.per_user, cfg.delta
    if cfg.window.kind == "period":
        assert cfg.window.period_seconds is not None
        window = format_period(cfg.window.period_seconds)
        where = f"per {window} window"
        seconds: int | None = cfg.window.period_seconds
    else:
        window, where, seconds = "lifetime", "over the lifetime of the ledger", None
    text = f"({eps:g}, {delta:g})-DP per user {where}"
    notes = [
        f"protects {PROTECTS}",
        "admission by a Rényi-DP filter valid for adaptively chosen per-query epsilon",
        f"also ({cfg.budgets.per_department:g}, {delta:g})-DP per department and "
        f"({cfg.budgets.per_hospital:g}, {delta:g})-DP per hospital (data source) {where}",
        "per-user budgets bound what one clinician learns and assume clinicians do not collude; "
        "the per-hospital budget bounds what all clinicians together learn about one hospital's patients",
        "answers of Public nodes cost 0 epsilon: they hold no patient data",
        f"each single-node query spends between {cfg.min_epsilon:g} and {cfg.max_epsilon_per_query:g} "
        f"epsilon; a consensus spends one GNMax vote at sigma {cfg.consensus.sigma:g} "
        f"(about {_consensus_epsilon(cfg):.3g} epsilon at delta {delta:g}), whatever that range",
    ]
    if seconds is not None:
        notes.append(
            "budgets refresh each window: the guarantee is per (person, window), not per person forever"
        )
    return Guarantee(
        epsilon=eps,
        delta=delta,
        unit="user",
        window=window,
        window_seconds=seconds,
        text=text,
        budgets={s.value: budget_of(cfg, s) for s in Scope},
        notes=tuple(notes),
    )


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    start: datetime | None
    end: datetime | None


_LIFETIME = Window(0, None, None)
# The last period window computed, by period length: the ledger asks for the window on every
# reservation, and it changes once a period (one tuple, replaced whole: safe across threads).
_last: tuple[int, Window] = (0, _LIFETIME)


def window_of(cfg: PrivacyConfig, now: datetime) -> Window:
    global _last
    if cfg.window.kind != "period":
        return _LIFETIME
    assert cfg.window.period_seconds is not None
    period = cfg.window.period_seconds
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    wid = int(now.timestamp()) // period  # timestamp(): (now - epoch).total_seconds()
    last_period, last = _last
    if last_period == period and last.id == wid:
        return last
    start = _EPOCH + timedelta(seconds=wid * period)
    window = Window(wid, start, start + timedelta(seconds=period))
    _last = (period, window)
    return window


def check_policy(cfg: PrivacyConfig) -> None:
    """Refuse a policy whose budgets cannot admit even one query at max_epsilon_per_query,
    whichever supported node mechanism answers it (``gaussian`` at the policy delta, or
    ``pure_dp``); the message names the scope's budget and the mechanism."""
    for mechanism in (NodeMechanism.GAUSSIAN, NodeMechanism.PURE_DP):
        cost = rdp_curve(event_for_node(mechanism, cfg.max_epsilon_per_query, cfg.delta))
        for scope in Scope:
            if not admits(zero(), cost, budget_of(cfg, scope), cfg.delta):
                raise InvalidPrivacyRequest(
                    _budget_field(scope),
                    f"a budget of {budget_of(cfg, scope):g} cannot admit even one query at "
                    f"max_epsilon_per_query={cfg.max_epsilon_per_query:g} from a {mechanism.value} node "
                    f"(delta {cfg.delta:g}) under the Rényi filter; raise the budget or lower "
                    "max_epsilon_per_query",
                )
