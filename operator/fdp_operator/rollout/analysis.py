"""Canary / preview analysis: the router's own error rate, judged against a threshold.

Pure: builds the PromQL query and judges Prometheus' answer; ``fdp_operator.analysis``
does the HTTP call and ``render/workloads.py`` hands the verdict to the state machines,
which roll back on ``Failed`` and carry on otherwise. The readiness part of the analysis
is built into the state machines (a step only advances once its pods are Available).

The query reads the router's ``fdp_requests_total`` counter (router/fdp_router/metrics.py)
for the new revision's pods only, assuming the usual Kubernetes scrape config that adds
``namespace`` and ``pod`` labels (the pods carry ``prometheus.io/*`` annotations). Only 5xx
answers count as errors: a 403 for an exhausted privacy budget is the router working.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fdp_operator.rollout.types import Analysis, AnalysisVerdict

WINDOW = "2m"


def error_rate_query(namespace: str, deployment: str, window: str = WINDOW) -> str:
    """PromQL: the share of 5xx answers among all answers of one Deployment's pods."""
    pods = f'namespace="{namespace}",pod=~"{deployment}-[a-z0-9]+-[a-z0-9]+"'
    total = f"sum(rate(fdp_requests_total{{{pods}}}[{window}]))"
    errors = f'sum(rate(fdp_requests_total{{{pods},status=~"5.."}}[{window}]))'
    return f"({errors} or vector(0)) / {total}"


def judge(response: Mapping[str, Any], max_error_rate: float) -> Analysis:
    """Verdict from a Prometheus ``/api/v1/query`` answer (instant vector)."""
    if response.get("status") != "success":
        return Analysis(AnalysisVerdict.INCONCLUSIVE, f"Prometheus error: {response.get('error', 'unknown')}")
    result = (response.get("data") or {}).get("result") or []
    if not result:
        return Analysis(AnalysisVerdict.INCONCLUSIVE, "no traffic to the new revision yet")
    try:
        rate = float(result[0]["value"][1])
    except (KeyError, IndexError, TypeError, ValueError):
        return Analysis(AnalysisVerdict.INCONCLUSIVE, "unreadable Prometheus answer")
    if rate != rate:  # NaN: no requests in the window
        return Analysis(AnalysisVerdict.INCONCLUSIVE, "no traffic to the new revision yet")
    if rate > max_error_rate:
        return Analysis(AnalysisVerdict.FAILED, f"error rate {rate:.3f} > maxErrorRate {max_error_rate:g}")
    return Analysis(AnalysisVerdict.PASSED, f"error rate {rate:.3f} <= maxErrorRate {max_error_rate:g}")
