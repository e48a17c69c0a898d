"""Reconcile one PrivacyPolicy: validate it, state its guarantee, list the routers using it.

Called by handlers.py on create/update/resume and on the resync timer (``usedBy`` changes
when routers come and go). Valid means what the router decides: the spec parses into the
router's config model (models.py) and passes the router's own policy check (guarantee.py);
otherwise ``Ready=False`` with reason ``PolicyInvalid`` and the router's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from fdp_router.config import PrivacyConfig

from fdp_operator import conditions as cond
from fdp_operator.apply import write_status
from fdp_operator.guarantee import GuaranteeView, PolicyRefused, assess
from fdp_operator.kube import Kube
from fdp_operator.models import SpecError, parse_policy

KIND = "PrivacyPolicy"


def policy_status(
    body: Mapping[str, Any],
    used_by: Sequence[str],
    now: datetime,
    assess_policy: Callable[[PrivacyConfig], GuaranteeView] = assess,
) -> dict[str, Any]:
    """The policy's status from its spec and the routers referencing it (no I/O)."""
    meta = body["metadata"]
    gen = int(meta.get("generation", 1))
    old = dict(body.get("status") or {})
    status: dict[str, Any] = {"observedGeneration": gen, "usedBy": sorted(used_by)}
    try:
        policy = parse_policy(dict(body))
        view = assess_policy(policy.spec.config(policy.ref.name))
    except (SpecError, PolicyRefused) as exc:
        verdict = cond.Verdict(cond.Reason.POLICY_INVALID, str(exc), True)
        status["conditions"] = cond.merge(old.get("conditions"), cond.summary(verdict, ""), now, gen)
        return status
    status.update(guarantee=view.text, epsilonPerUser=view.epsilon, delta=view.delta)
    if view.protects:
        status["protects"] = view.protects
    status["conditions"] = cond.merge(old.get("conditions"), cond.summary(None, view.text), now, gen)
    return status


async def reconcile_policy(
    kube: Kube, body: Mapping[str, Any], used_by: Sequence[str], now: datetime
) -> dict[str, Any]:
    meta = body["metadata"]
    # in a thread: the first call imports the privacy core (about a second), later ones hit its cache
    status = await asyncio.to_thread(policy_status, body, used_by, now)
    await write_status(kube, KIND, meta["namespace"], meta["name"], dict(body.get("status") or {}), status)
    return status
