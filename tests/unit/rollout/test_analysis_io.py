"""fetch_analysis against a real HTTP server speaking the Prometheus query API."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from fdp_operator.analysis import fetch_analysis
from fdp_operator.models import parse_router
from fdp_operator.rollout.types import AnalysisVerdict, RolloutStatus

ROLLING = RolloutStatus(stable_revision="a", current_revision="b", preview_color="green")


def router(url: str | None, strategy: str = "Canary") -> Any:
    rollout: dict[str, Any] = {"strategy": strategy}
    if strategy == "Canary":
        rollout["steps"] = [{"setWeight": 50}]
    if url is not None:
        rollout["analysis"] = {"prometheusUrl": url, "maxErrorRate": 0.05}
    return parse_router(
        {
            "metadata": {"name": "fr", "namespace": "ns"},
            "spec": {
                "policyRef": {"name": "p"},
                "rollout": rollout,
                # Canary and BlueGreen run two versions side by side: a shared ledger.
                "ledger": {"backend": "postgres", "dsnSecretRef": {"name": "dsn"}},
            },
        }
    )


async def prometheus(aiohttp_server, rate: str) -> tuple[str, list[str]]:
    queries: list[str] = []

    async def query(request: web.Request) -> web.Response:
        queries.append(request.query["query"])
        return web.json_response(
            {
                "status": "success",
                "data": {"resultType": "vector", "result": [{"metric": {}, "value": [0, rate]}]},
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    server = await aiohttp_server(app)
    return str(server.make_url("/")), queries


async def test_a_high_error_rate_on_the_canary_fails_the_analysis(aiohttp_server) -> None:
    url, queries = await prometheus(aiohttp_server, "0.4")
    result = await fetch_analysis(router(url), ROLLING)
    assert result is not None and result.verdict == AnalysisVerdict.FAILED
    assert "0.400" in result.message
    assert len(queries) == 1 and 'pod=~"fr-canary-' in queries[0]


async def test_blue_green_analyses_the_preview_color(aiohttp_server) -> None:
    url, queries = await prometheus(aiohttp_server, "0.0")
    result = await fetch_analysis(router(url, "BlueGreen"), ROLLING)
    assert result is not None and result.verdict == AnalysisVerdict.PASSED
    assert 'pod=~"fr-green-' in queries[0]


async def test_no_query_without_a_rollout_in_progress_or_without_a_url(aiohttp_server) -> None:
    url, queries = await prometheus(aiohttp_server, "0.9")
    assert await fetch_analysis(router(url), RolloutStatus(stable_revision="a", current_revision="a")) is None
    assert await fetch_analysis(router(None), ROLLING) is None
    assert queries == []


async def test_an_unreachable_prometheus_is_inconclusive_not_a_rollback(unused_tcp_port) -> None:
    result = await fetch_analysis(router(f"http://127.0.0.1:{unused_tcp_port}"), ROLLING)
    assert result is not None and result.verdict == AnalysisVerdict.INCONCLUSIVE
    assert "unreachable" in result.message
