"""The OpenAI chat request as the router accepts it: `ChatRequest` plus OpenAI's streaming and
sampling fields, and a clear 400 for what the router does not do.

Parsed once by the chat handler (``handlers.py``); its schema is the one in ``/openapi.json``.
Supported, beyond the messages and the privacy fields of `ChatRequest`: ``stream`` with
``stream_options.include_usage``, ``logprobs`` / ``top_logprobs``, ``top_p``, ``stop``,
``seed``, and ``n = 1``. Refused with a 400 that names the field and lists what is
supported: ``n > 1`` (every answer is one release, charged once) and tools / function calling
(hospital nodes answer text; no node declares tool support). Other OpenAI fields are ignored,
as before.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, model_validator

from fdp_router.models import ChatRequest, Number

SUPPORTED = (
    "supported: model, messages (text content), max_tokens / max_completion_tokens, temperature, "
    "top_p, stop, seed, logprobs / top_logprobs, stream with stream_options.include_usage, n = 1, "
    "and the privacy fields (privacy_budget, require_consensus, options, candidate_set, priority, "
    "department)"
)
# Sampling fields passed to the node as they are (validated here; part of the cache key).
NODE_PARAMS = ("top_p", "stop", "seed", "logprobs", "top_logprobs")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = Field(False, description="a last chunk with `usage` and empty `choices`")


class OpenAIChatRequest(ChatRequest):
    """OpenAI chat completion request (unknown OpenAI fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    stream: StrictBool = Field(
        False,
        description="server-sent events as OpenAI sends them; single-node answers only (not with "
        "require_consensus). The privacy summary rides in the final chunk",
    )
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(  # type: ignore[assignment]  # widened: n > 1 gets its own 400
        None, description="only 1: each answer is one release, charged once"
    )
    logprobs: StrictBool | None = Field(
        None, description="token log-probabilities; returned by Public nodes only (a PHI answer is text)"
    )
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    top_p: Number | None = Field(None, ge=0, le=1)
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences")
    seed: StrictInt | None = Field(None, ge=-(2**63), le=2**63 - 1)
    tools: Any = Field(None, description="not supported (400)")
    tool_choice: Any = Field(None, description="not supported (400) unless 'none'")
    functions: Any = Field(None, description="not supported (400)")
    function_call: Any = Field(None, description="not supported (400) unless 'none'")

    @model_validator(mode="after")
    def _supported(self) -> OpenAIChatRequest:
        for name in ("tools", "functions"):
            if getattr(self, name):
                raise ValueError(
                    f"{name}: tools and function calling are not supported: hospital nodes answer "
                    f"text only ({SUPPORTED})"
                )
        for name in ("tool_choice", "function_call"):
            if getattr(self, name) not in (None, "none"):
                raise ValueError(f"{name}: tools and function calling are not supported ({SUPPORTED})")
        if self.n is not None and self.n != 1:
            raise ValueError(
                f"n: only n = 1 is supported: each answer is one release under the privacy budget, "
                f"charged once; ask again for another answer ({SUPPORTED})"
            )
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: needs logprobs: true")
        if isinstance(self.stop, list) and (
            len(self.stop) > 4 or not all(isinstance(s, str) for s in self.stop)
        ):
            raise ValueError("stop: at most 4 strings")
        if self.stream and self.require_consensus:
            raise ValueError(
                "stream: a consensus cannot stream: its answer is the noisy winner among the "
                "options, known only when every hospital has voted; send stream: false"
            )
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def node_params(self) -> tuple[tuple[str, Any], ...]:
        """The sampling fields the client set, to pass to the node (sorted, hashable)."""
        out = []
        for name in NODE_PARAMS:
            value = getattr(self, name)
            if value is not None:
                out.append((name, tuple(value) if isinstance(value, list) else value))
        return tuple(out)
