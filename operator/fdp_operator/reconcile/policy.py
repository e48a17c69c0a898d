"""Reconcile one PrivacyPolicy: validate it, state its guarantee, list the routers using it.

Called by handlers.py on create/update/resume and on the resync timer (``usedBy`` changes
when routers come and go). The guarantee text comes from the privacy core when installed
(see guarantee.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from fdp_operator import conditions as cond
from fdp_operator.apply import write_status
from fdp_operator.guarantee import GuaranteeView, guarantee, guarantee_out_of_process, local_guarantee
from fdp_operator.kube import Kube
from fdp_operator.models import SpecError, parse_policy
from fdp_operator.render.config import privacy_config

KIND = "PrivacyPolicy"


def policy_status(
    body: Mapping[str, Any],
    used_by: Sequence[str],
    now: datetime,
    guarantee_of: Callable[[Any], GuaranteeView] = guarantee,
) -> dict[str, Any]:
    """Pure: the policy's status from its spec and the routers referencing it."""
    meta = body["metadata"]
    gen = int(meta.get("generation", 1))
    old = dict(body.get("status") or {})
    status: dict[str, Any] = {"observedGeneration": gen, "usedBy": sorted(used_by)}
    try:
        policy = parse_policy(dict(body))
        view = guarantee_of(privacy_config(policy))
    except (SpecError, ValueError) as exc:
        verdict = cond.Verdict(cond.Reason.POLICY_INVALID, str(exc), True)
        status["conditions"] = cond.merge(old.get("conditions"), cond.summary(verdict, ""), now, gen)
        return status
    status.update(guarantee=view.text, epsilonPerUser=view.epsilon, delta=view.delta)
    status["conditions"] = cond.merge(old.get("conditions"), cond.summary(None, view.text), now, gen)
    return status


def _constant(view: GuaranteeView) -> Callable[[Any], GuaranteeView]:
    return lambda _cfg: view


async def reconcile_policy(
    kube: Kube, body: Mapping[str, Any], used_by: Sequence[str], now: datetime
) -> dict[str, Any]:
    meta = body["metadata"]
    guarantee_of: Callable[[Any], GuaranteeView] = local_guarantee  # used only if the core is unreachable
    try:
        view = await guarantee_out_of_process(privacy_config(parse_policy(dict(body))))
        guarantee_of = _constant(view)
    except (SpecError, ValueError):
        pass  # policy_status reports the validation error, naming the field
    status = policy_status(body, used_by, now, guarantee_of)
    await write_status(kube, KIND, meta["namespace"], meta["name"], dict(body.get("status") or {}), status)
    return status
