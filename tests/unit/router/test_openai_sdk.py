"""The official `openai` SDK against the router (a live server), JWT as the API key."""

from __future__ import annotations

import openai
import pytest
from fdp_router.demo_data import CONDITIONS

from .conftest import Cluster, RouterFactory, q, token

DIABETES = next(c for c in CONDITIONS if c.name == "type 2 diabetes").treatments


async def test_openai_sdk_chat_completion_with_privacy_fields(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=token(), max_retries=0)
    try:
        raw = await sdk.chat.completions.with_raw_response.create(
            model="patient-stats",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": q(condition="type 2 diabetes")},
            ],
            extra_body={"privacy_budget": 0.25},
        )
        completion = raw.parse()
        assert completion.object == "chat.completion"
        assert any(t.casefold() in completion.choices[0].message.content.casefold() for t in DIABETES)
        privacy = completion.model_extra["privacy"]
        assert abs(privacy["epsilon"] - 0.25) < 1e-6
        assert privacy["cached"] is False
        assert 0 < privacy["remaining_budget"] < 2.0
        assert raw.headers["x-fdp-privacy-cost"].startswith("0.25")
        assert raw.headers["x-fdp-node"] in {"node-0", "node-1", "node-2"}

        again = await sdk.chat.completions.create(
            model="patient-stats",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": q(condition="type 2 diabetes")},
            ],
            extra_body={"privacy_budget": 0.25},
        )
        assert again.model_extra["privacy"]["cached"] is True
        assert again.model_extra["privacy"]["epsilon"] == 0.0
        assert sum(n.state.completions for n in demo_cluster.nodes) == 1
    finally:
        await sdk.close()


async def test_openai_sdk_sees_the_right_error_classes(router: RouterFactory) -> None:
    client = await router()
    base = str(client.make_url("/v1"))
    bad = openai.AsyncOpenAI(base_url=base, api_key="not-a-jwt", max_retries=0)
    good = openai.AsyncOpenAI(base_url=base, api_key=token(user="spender"), max_retries=0)
    msgs = [{"role": "user", "content": q("fever?")}]
    try:
        with pytest.raises(openai.AuthenticationError):
            await bad.chat.completions.create(model="patient-stats", messages=msgs)
        with pytest.raises(openai.BadRequestError) as exc:
            await good.chat.completions.create(model="patient-stats", messages=msgs, stream=True)
        assert "stream" in str(exc.value)
        with pytest.raises(openai.BadRequestError) as exc:
            await good.chat.completions.create(
                model="patient-stats", messages=msgs, extra_body={"privacy_budget": 99}
            )
        assert "privacy_budget" in str(exc.value)
        with pytest.raises(openai.PermissionDeniedError) as exc:
            for i in range(50):
                await good.chat.completions.create(
                    model="patient-stats",
                    messages=[{"role": "user", "content": q(f"q{i}")}],
                    extra_body={"privacy_budget": 1.0},
                )
        body = exc.value.body
        assert isinstance(body, dict)
        err = body.get("error", body)
        assert err["type"] == "privacy_budget_exceeded"
    finally:
        await bad.close()
        await good.close()
