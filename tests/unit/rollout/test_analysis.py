"""Analysis: the PromQL for the new revision's pods and the verdict on Prometheus' answer."""

from __future__ import annotations

import pytest
from fdp_operator.rollout.analysis import error_rate_query, judge
from fdp_operator.rollout.types import AnalysisVerdict


def answer(value: str) -> dict:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, value]}]},
    }


@pytest.mark.parametrize(
    ("response", "verdict"),
    [
        pytest.param(answer("0.01"), AnalysisVerdict.PASSED, id="1% errors under a 5% threshold pass"),
        pytest.param(answer("0.05"), AnalysisVerdict.PASSED, id="exactly the threshold passes"),
        pytest.param(answer("0.2"), AnalysisVerdict.FAILED, id="20% errors fail"),
        pytest.param(
            answer("NaN"), AnalysisVerdict.INCONCLUSIVE, id="no requests in the window is inconclusive"
        ),
        pytest.param(
            {"status": "success", "data": {"result": []}}, AnalysisVerdict.INCONCLUSIVE, id="no series"
        ),
        pytest.param(
            {"status": "error", "error": "bad query"}, AnalysisVerdict.INCONCLUSIVE, id="query error"
        ),
        pytest.param(
            {"status": "success", "data": {"result": [{}]}}, AnalysisVerdict.INCONCLUSIVE, id="garbage"
        ),
    ],
)
def test_judge(response: dict, verdict: AnalysisVerdict) -> None:
    assert judge(response, 0.05).verdict == verdict


def test_a_failure_names_the_rate_and_the_threshold() -> None:
    assert judge(answer("0.31"), 0.05).message == "error rate 0.310 > maxErrorRate 0.05"


def test_the_query_selects_only_the_new_revisions_pods_and_counts_only_5xx() -> None:
    q = error_rate_query("ns", "fr-canary")
    assert 'pod=~"fr-canary-[a-z0-9]+-[a-z0-9]+"' in q and 'namespace="ns"' in q
    assert 'status=~"5.."' in q and q.count("fdp_requests_total") == 2
