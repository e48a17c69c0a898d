"""The guarantee a PrivacyPolicy gives, for its status.

Uses the privacy core's ``fdp_router.privacy.policy.guarantee(privacy_cfg)`` when it is
installed (it owns the accounting); until then, ``local_guarantee`` states the same
contract from the policy numbers alone: the per-user budget is an (ε, δ) bound for one
user per window under the filter the router enforces. Called by reconcile/policy.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fdp_router.config import PrivacyConfig


@dataclass(frozen=True)
class GuaranteeView:
    text: str
    epsilon: float
    delta: float


def _window_words(cfg: PrivacyConfig) -> str:
    if cfg.window.kind == "lifetime" or cfg.window.period_seconds is None:
        return "over its lifetime (budgets never refresh)"
    secs = cfg.window.period_seconds
    if secs % 86400 == 0:
        return f"per {secs // 86400 * 24} h window"
    if secs % 3600 == 0:
        return f"per {secs // 3600} h window"
    if secs % 60 == 0:
        return f"per {secs // 60} min window"
    return f"per {secs} s window"


def local_guarantee(cfg: PrivacyConfig) -> GuaranteeView:
    b = cfg.budgets
    text = (
        f"({b.per_user:g}, {cfg.delta:g})-DP per user {_window_words(cfg)}; "
        f"at most ε={b.per_department:g} per department and ε={b.per_hospital:g} per hospital; "
        f"≤ {cfg.max_epsilon_per_query:g} ε per query ({cfg.mechanism.value} noise). "
        "Per-user budgets assume users do not collude."
    )
    return GuaranteeView(text=text, epsilon=b.per_user, delta=cfg.delta)


def guarantee(cfg: PrivacyConfig) -> GuaranteeView:
    """The privacy core's statement when available, else the local one."""
    try:
        from fdp_router.privacy.policy import guarantee as core_guarantee
    except ImportError:
        return local_guarantee(cfg)
    result: Any = core_guarantee(cfg)
    return GuaranteeView(
        text=str(result.text),
        epsilon=float(getattr(result, "epsilon", cfg.budgets.per_user)),
        delta=float(getattr(result, "delta", cfg.delta)),
    )
