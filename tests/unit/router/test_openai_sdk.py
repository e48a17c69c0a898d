"""The official `openai` SDK against the router (a live server), JWT as the API key: async,
sync and streaming, the privacy fields, and the right exception class for each refusal."""

from __future__ import annotations

import asyncio

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
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage is not None and completion.usage.completion_tokens > 0
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


async def test_openai_sdk_async_streaming(router: RouterFactory, demo_cluster: Cluster) -> None:
    client = await router()
    sdk = openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=token(), max_retries=0)
    try:
        stream = await sdk.chat.completions.create(
            model="patient-stats",
            messages=[{"role": "user", "content": q("stream", condition="type 2 diabetes")}],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"privacy_budget": 0.2},
        )
        chunks = [c async for c in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert any(t.casefold() in text.casefold() for t in DIABETES)
        assert chunks[0].choices[0].delta.role == "assistant"
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        last = chunks[-1]
        assert last.choices == [] and last.usage is not None and last.usage.total_tokens > 0
        assert abs(last.model_extra["privacy"]["epsilon"] - 0.2) < 1e-9
        assert last.model_extra["privacy"]["nodes"][0] in {"node-0", "node-1", "node-2"}
        assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-")
    finally:
        await sdk.close()


async def test_openai_sdk_sync_client_and_sync_stream(router: RouterFactory) -> None:
    client = await router()
    base = str(client.make_url("/v1"))

    def run() -> tuple[str, str, dict[str, object], list[str]]:
        with openai.OpenAI(base_url=base, api_key=token(user="sync"), max_retries=0) as sdk:
            whole = sdk.chat.completions.create(
                model="patient-stats", messages=[{"role": "user", "content": q("sync")}]
            )
            parts: list[str] = []
            privacy: dict[str, object] = {}
            with sdk.chat.completions.create(
                model="patient-stats",
                messages=[{"role": "user", "content": q("sync stream")}],
                stream=True,
            ) as stream:
                for chunk in stream:
                    if chunk.choices:
                        parts.append(chunk.choices[0].delta.content or "")
                    privacy = chunk.model_extra.get("privacy", privacy)
            models = [m.id for m in sdk.models.list()]
            return whole.choices[0].message.content or "", "".join(parts), privacy, models

    whole, streamed, privacy, models = await asyncio.to_thread(run)
    assert "hypertension" in whole.lower() or whole
    assert streamed and privacy["epsilon"] == pytest.approx(0.1)
    assert models == ["fdp-router", "patient-stats"]


async def test_openai_sdk_sees_the_right_error_classes(router: RouterFactory) -> None:
    client = await router()
    base = str(client.make_url("/v1"))
    bad = openai.AsyncOpenAI(base_url=base, api_key="not-a-jwt", max_retries=0)
    good = openai.AsyncOpenAI(base_url=base, api_key=token(user="spender"), max_retries=0)
    msgs = [{"role": "user", "content": q("fever?")}]
    try:
        with pytest.raises(openai.AuthenticationError) as auth_exc:
            await bad.chat.completions.create(model="patient-stats", messages=msgs)
        assert auth_exc.value.type == "authentication_error"
        with pytest.raises(openai.BadRequestError) as exc:
            await good.chat.completions.create(
                model="patient-stats",
                messages=msgs,
                stream=True,
                extra_body={"require_consensus": True, "options": ["a", "b"]},
            )
        assert exc.value.param == "stream" and "consensus cannot stream" in exc.value.message
        with pytest.raises(openai.BadRequestError) as exc:
            await good.chat.completions.create(model="patient-stats", messages=msgs, n=2)
        assert exc.value.param == "n" and "only n = 1" in exc.value.message
        tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        with pytest.raises(openai.BadRequestError) as exc:
            await good.chat.completions.create(model="patient-stats", messages=msgs, tools=[tool])
        assert exc.value.param == "tools" and "supported: model, messages" in exc.value.message
        with pytest.raises(openai.NotFoundError) as nf:
            await good.chat.completions.create(model="gpt-4o", messages=msgs)
        assert nf.value.code == "model_not_found" and nf.value.type == "invalid_request_error"
        with pytest.raises(openai.NotFoundError):
            await good.models.retrieve("gpt-4o")
        with pytest.raises(openai.BadRequestError) as exc:
            await good.chat.completions.create(
                model="patient-stats", messages=msgs, extra_body={"privacy_budget": 99}
            )
        assert exc.value.param == "privacy_budget" and exc.value.type == "invalid_request_error"
        with pytest.raises(openai.PermissionDeniedError) as denied:
            for i in range(50):
                await good.chat.completions.create(
                    model="patient-stats",
                    messages=[{"role": "user", "content": q(f"q{i}")}],
                    extra_body={"privacy_budget": 1.0},
                )
        body = denied.value.body
        assert isinstance(body, dict)
        assert body["type"] == "privacy_budget_exceeded" and body["code"] == "privacy_budget_exceeded"
        assert body["requested"] > body["available"]
        # A stream is refused the same way, before its first byte.
        with pytest.raises(openai.PermissionDeniedError):
            await good.chat.completions.create(
                model="patient-stats",
                messages=[{"role": "user", "content": q("one more")}],
                stream=True,
                extra_body={"privacy_budget": 1.0},
            )
    finally:
        await bad.close()
        await good.close()
