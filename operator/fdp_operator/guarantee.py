"""Would the router run this PrivacyPolicy, and what does it guarantee? The router's own answer.

``assess(cfg)`` runs the router's code in this process: ``check_policy`` (the check every
router pod makes when it opens its ledger; a policy it refuses stops the pods) and
``guarantee`` (the words and numbers the status shows). A refused policy raises
``PolicyRefused`` naming the field in the CRD's words. Called by reconcile/policy.py (the
PrivacyPolicy status) and reconcile/router.py (a router keeps its last good config rather
than roll pods onto a policy they would refuse).

The privacy core imports dp-accounting and SciPy (~90 MiB resident), which the operator
needs for nothing else: they are imported on the first call, not with this module, and
answers are cached per policy content (reconciles repeat every resync).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from fdp_router.config import PrivacyConfig

from fdp_operator.models import in_crd_words


@dataclass(frozen=True)
class GuaranteeView:
    text: str
    epsilon: float
    delta: float
    protects: str = ""


class PolicyRefused(ValueError):
    """The router's own check refuses the policy; the message names the field and why."""


def assess(cfg: PrivacyConfig) -> GuaranteeView:
    """The guarantee ``cfg`` gives, or ``PolicyRefused`` if a router would refuse it."""
    return _assess(cfg.model_dump_json())


@lru_cache(maxsize=256)
def _assess(cfg_json: str) -> GuaranteeView:
    from fdp_router.privacy.api import InvalidPrivacyRequest
    from fdp_router.privacy.policy import check_policy, guarantee

    cfg = PrivacyConfig.model_validate_json(cfg_json)
    try:
        check_policy(cfg)
    except InvalidPrivacyRequest as exc:
        raise PolicyRefused(
            f"the router refuses this policy: spec.{in_crd_words(exc.field)}: {in_crd_words(exc.reason)}"
        ) from None
    g = guarantee(cfg)
    # `protects` (what one DP unit is) arrives with issue 10's privacy core
    return GuaranteeView(text=g.text, epsilon=g.epsilon, delta=g.delta, protects=getattr(g, "protects", ""))
