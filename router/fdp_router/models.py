"""Request bodies of the public API, parsed once at the edge into typed models.

Used by ``app.py``. `parse(model, data)` turns pydantic errors into `InvalidRequest` naming
the field and the reason (400). Privacy fields (``privacy_budget``, ``require_consensus``,
``priority``, ``department``) are the same in both APIs; in the OpenAI-compatible API they
ride as extra body fields (``extra_body=`` in the ``openai`` SDK).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)

from fdp_router.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)


# Strict: JSON `true`, strings and nulls where a number is expected are 400, not coerced.
Number = Annotated[StrictFloat | StrictInt, Field(allow_inf_nan=False)]


class PrivacyFields(BaseModel):
    privacy_budget: Number | None = Field(
        None,
        description="epsilon for this query (policy min <= epsilon <= max); default: the policy's "
        "default. Not used with require_consensus (a consensus is charged by its noise)",
    )
    require_consensus: StrictBool = Field(
        False,
        description="ask one node of each of k hospitals to pick one of `options`; release the "
        "GNMax winner (only an option's text is ever released)",
    )
    options: list[str] | None = Field(
        None, description="public candidate answers for a consensus (2..32 distinct strings)"
    )
    candidate_set: str | None = Field(
        None, min_length=1, max_length=128, description="a candidate set named in the privacy policy"
    )
    specialization: str | None = Field(
        None, min_length=1, max_length=128, description="route only to nodes listing this specialization"
    )
    priority: StrictInt = Field(5, ge=0, le=10, description="admission priority, 10 most urgent")
    department: str | None = Field(None, min_length=1, max_length=128, description="must match the token's")


class InferenceRequest(PrivacyFields):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(..., min_length=1, max_length=32_000)
    model: str | None = Field(None, max_length=256, description="a node model; default: any node")
    max_tokens: StrictInt = Field(256, ge=1, le=8192)
    temperature: Number = Field(0.7, ge=0, le=2)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str = Field(..., max_length=32_000)


class ChatRequest(PrivacyFields):
    """OpenAI chat completion request; unknown OpenAI fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=256)
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_tokens: StrictInt | None = Field(None, ge=1, le=8192)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=8192)
    temperature: Number | None = Field(None, ge=0, le=2)
    stream: StrictBool = False
    n: StrictInt = Field(1, ge=1, le=1)

    @model_validator(mode="after")
    def _has_user_message(self) -> ChatRequest:
        # A chat with no user turn asks the node nothing; nodes answer it 400, and such
        # requests must never reach a node (they used to count as node failures).
        for m in self.messages:  # a loop, not any(<generator>): runs on every request
            if m.role == "user" and m.content.strip():
                return self
        raise ValueError("messages: needs at least one non-empty message with role 'user'")


def parse(model: type[M], data: Any) -> M:
    if not isinstance(data, dict):
        raise InvalidRequest("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"] if not str(p).startswith(("float", "int"))) or "body"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if field == "body" and ": " in msg:  # a model-level rule names its own field
            field, _, msg = msg.partition(": ")
        raise InvalidRequest(field, msg) from None
