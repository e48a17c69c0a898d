"""Request bodies of the public API, parsed once at the edge into typed models.

Used by ``app.py``. `parse(model, data)` turns pydantic errors into `InvalidRequest` naming
the field and the reason (400). Privacy fields (``privacy_budget``, ``require_consensus``,
``priority``, ``department``) are the same in both APIs; in the OpenAI-compatible API they
ride as extra body fields (``extra_body=`` in the ``openai`` SDK).
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fdp_router.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


class PrivacyFields(BaseModel):
    privacy_budget: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="epsilon for this query; default: the policy's default"
    )
    require_consensus: bool = Field(
        False, description="fan out to k hospitals and release the DP vote winner"
    )
    priority: int = Field(5, ge=0, le=10, description="admission priority, 10 most urgent")
    department: str | None = Field(None, min_length=1, max_length=128, description="must match the token's")


class InferenceRequest(PrivacyFields):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=32_000)
    max_tokens: int = Field(256, ge=1, le=8192)
    temperature: float = Field(0.7, ge=0, le=2, allow_inf_nan=False)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str = Field(..., max_length=32_000)


class ChatRequest(PrivacyFields):
    """OpenAI chat completion request; unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)


def parse(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidRequest(field, err["msg"]) from None
