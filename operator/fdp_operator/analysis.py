"""Rollout analysis I/O: ask Prometheus for the new revision's error rate.

Called by ``reconcile/router.py`` before rendering the workloads, only when
``spec.rollout.analysis.prometheusUrl`` is set and a rollout is in progress. The query and
the verdict are pure (``rollout/analysis.py``); this module only does the HTTP call. Any
failure to ask (unreachable, timeout, bad answer) is ``Inconclusive``: it never rolls a
revision back by itself, and the progress deadline still bounds a stuck rollout.
"""

from __future__ import annotations

import aiohttp

from fdp_operator.models import FederatedRouter, RolloutStrategy
from fdp_operator.render.workloads import role_deployment
from fdp_operator.rollout.analysis import error_rate_query, judge
from fdp_operator.rollout.canary import CANARY
from fdp_operator.rollout.types import Analysis, AnalysisVerdict, RolloutStatus

TIMEOUT_SECONDS = 5.0


def analysed_deployment(router: FederatedRouter, rollout: RolloutStatus) -> str | None:
    """The Deployment running the new revision, if a rollout is in progress."""
    if rollout.stable_revision == rollout.current_revision:
        return None
    if router.spec.rollout.strategy == RolloutStrategy.CANARY:
        return role_deployment(router.ref.name, CANARY)
    if router.spec.rollout.strategy == RolloutStrategy.BLUE_GREEN and rollout.preview_color:
        return role_deployment(router.ref.name, rollout.preview_color)
    return None


async def fetch_analysis(
    router: FederatedRouter, rollout: RolloutStatus, session: aiohttp.ClientSession | None = None
) -> Analysis | None:
    spec = router.spec.rollout.analysis
    if spec is None or not spec.prometheus_url:
        return None
    deployment = analysed_deployment(router, rollout)
    if deployment is None:
        return None
    url = spec.prometheus_url.rstrip("/") + "/api/v1/query"
    query = error_rate_query(router.ref.namespace, deployment)
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(
            url, params={"query": query}, timeout=aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
        ) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Analysis(AnalysisVerdict.INCONCLUSIVE, f"Prometheus at {url} unreachable: {exc}")
    finally:
        if own:
            await session.close()
    if not isinstance(body, dict):
        return Analysis(AnalysisVerdict.INCONCLUSIVE, "unreadable Prometheus answer")
    return judge(body, spec.max_error_rate)
