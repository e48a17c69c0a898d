"""The PrivacyPolicy's guarantee and validity come from the router's own code, in process."""

from __future__ import annotations

import pytest
from fdp_operator.guarantee import PolicyRefused, assess
from fdp_router.config import PrivacyConfig
from fdp_router.privacy.policy import guarantee


def test_the_guarantee_is_the_privacy_cores_statement() -> None:
    cfg = PrivacyConfig(window={"kind": "period", "period_seconds": 7 * 86400})
    view = assess(cfg)
    assert view.text == guarantee(cfg).text  # one wording, whichever path (was "168h" vs "7d")
    assert (view.epsilon, view.delta) == (10.0, 1e-5)


def test_a_policy_the_router_would_refuse_raises_with_the_crd_field_names() -> None:
    cfg = PrivacyConfig(default_epsilon_per_query=1, max_epsilon_per_query=1, budgets={"per_user": 1})
    with pytest.raises(PolicyRefused) as exc:
        assess(cfg)
    msg = str(exc.value)
    assert msg.startswith("the router refuses this policy: spec.budgets.perUser: a budget of 1")
    assert "max_epsilon_per_query" not in msg and "maxEpsilonPerQuery=1" in msg
