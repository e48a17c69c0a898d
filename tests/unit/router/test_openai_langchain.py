"""LangChain's `ChatOpenAI` against the router (a live server), JWT as the API key: invoke and
stream, sync and async, the privacy headers in the response metadata, and OpenAI's exception
classes on refusals."""

from __future__ import annotations

import asyncio
from functools import reduce
from typing import Any

import openai
import pytest
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from .conftest import PHI_MODEL, RouterFactory, q, token


def llm(base: str, tok: str, **kw: Any) -> ChatOpenAI:
    kw.setdefault("model", PHI_MODEL)
    return ChatOpenAI(base_url=base, api_key=tok, max_retries=0, include_response_headers=True, **kw)


async def test_langchain_invoke_and_stream(router: RouterFactory) -> None:
    client = await router()
    base = str(client.make_url("/v1"))
    chat = llm(base, token(), extra_body={"privacy_budget": 0.2}, stream_usage=True)
    msg = await chat.ainvoke([SystemMessage("Be terse."), HumanMessage(q("langchain"))])
    assert "hypertension" in str(msg.content).lower()
    meta = msg.response_metadata
    assert meta["finish_reason"] == "stop" and meta["model_name"] == PHI_MODEL
    assert meta["headers"]["x-fdp-privacy-cost"] == "0.2" and meta["headers"]["x-fdp-cache"] == "miss"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] > 0

    chunks = [c async for c in chat.astream(q("langchain stream"))]
    assert len(chunks) > 3 and all(isinstance(c, AIMessageChunk) for c in chunks)
    whole = reduce(lambda a, b: a + b, chunks)
    assert "hypertension" in str(whole.content).lower()
    assert whole.usage_metadata is not None and whole.usage_metadata["total_tokens"] > 0
    assert whole.response_metadata["headers"]["x-fdp-privacy-cost"] == "0.2"

    def sync() -> tuple[str, str]:
        c = llm(base, token(user="sync"))
        return str(c.invoke(q("lc sync")).content), "".join(str(x.content) for x in c.stream(q("lc sync s")))

    invoked, streamed = await asyncio.to_thread(sync)
    assert "hypertension" in invoked.lower() and "hypertension" in streamed.lower()


async def test_langchain_sees_openai_exceptions(router: RouterFactory) -> None:
    client = await router()
    base = str(client.make_url("/v1"))
    with pytest.raises(openai.AuthenticationError):
        await llm(base, "not-a-jwt").ainvoke(q("x"))
    with pytest.raises(openai.NotFoundError):
        await llm(base, token(), model="gpt-4o").ainvoke(q("x"))
    spender = llm(base, token(user="lc-spender"), extra_body={"privacy_budget": 1.0})
    with pytest.raises(openai.PermissionDeniedError) as exc:
        for i in range(10):
            async for _ in spender.astream(q(f"spend {i}")):
                pass
    assert isinstance(exc.value.body, dict) and exc.value.body["type"] == "privacy_budget_exceeded"
