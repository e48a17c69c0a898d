"""API errors: one exception type per error kind, rendered as DESIGN section 6 says.

Handlers raise `ApiError` subclasses; the error middleware in ``app.py`` renders them as
``{"error": {"type", "message", ...}}`` with the right status (and ``Retry-After`` for 429),
and on the OpenAI-compatible routes as OpenAI's ``{"error": {"message", "type", "param",
"code", ...}}`` (`ApiError.openai_body`).
"""

from __future__ import annotations

from typing import Any

from fdp_router.privacy.api import LedgerUnavailable


class ClientGone(Exception):
    """The client disconnected before its answer was on its way: before a reservation or a
    node call (nothing reserved, no node asked for no one), or, for a stream, before its first
    byte (refunded). Nothing was released or cached."""


class ApiError(Exception):
    status: int = 500
    type: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message, **self.extra}}

    # OpenAI's envelope, used on the OpenAI-compatible routes (/v1/chat/completions,
    # /v1/models): OpenAI's `type` for the status unless a class names its own (the privacy
    # ones keep theirs), `param` the request field at fault, `code` the router's own type.
    openai_type: str | None = None
    param: str | None = None

    def openai_body(self) -> dict[str, Any]:
        return openai_error(
            self.status,
            self.message,
            type_=self.openai_type,
            param=self.param,
            code=self.type,
            extra=self.extra,
        )


# OpenAI's error types by status (what the official SDKs and LangChain read).
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    param: str | None = None,
    code: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code", ...extra}}`` as OpenAI sends it."""
    if type_ is None:
        type_ = OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {**(extra or {}), "message": message, "type": type_, "param": param, "code": code}}


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", field=field, reason=reason)
        self.param = field


class Unauthorized(ApiError):
    status = 401
    type = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="fdp-router"'})


class AuthenticationFailed(Unauthorized):
    """401 with a bounded `reason` (the security metric's label): missing_token, malformed,
    algorithm, unknown_key, signature, expired, not_yet_valid, issuer, audience,
    missing_claim, bad_claim, no_role, mfa_required, token_too_old."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.extra = {"reason": reason}


class Forbidden(ApiError):
    status = 403
    type = "forbidden"


class PrivacyBudgetExceeded(ApiError):
    status = 403
    type = "privacy_budget_exceeded"
    openai_type = "privacy_budget_exceeded"
    param = "privacy_budget"


class NotFound(ApiError):
    status = 404
    type = "not_found"


class ModelNotFound(NotFound):
    """404 as OpenAI answers an unknown model: type invalid_request_error, code model_not_found."""

    type = "model_not_found"
    openai_type = "invalid_request_error"
    param = "model"


class Conflict(ApiError):
    status = 409
    type = "managed_by_operator"


class Overloaded(ApiError):
    status = 429
    type = "overloaded"

    def __init__(self, message: str, retry_after: float) -> None:
        secs = max(1, round(retry_after))
        super().__init__(message, headers={"Retry-After": str(secs)}, retry_after_seconds=secs)


class RateLimited(ApiError):
    """429 ``rate_limited``: this user, department, client address or token subject used up its
    token bucket. `Retry-After` is rounded up: waiting that long finds a token (for a bucket
    only the caller draws from)."""

    status = 429
    type = "rate_limited"

    def __init__(self, message: str, *, scope: str, retry_after: int) -> None:
        super().__init__(
            message, headers={"Retry-After": str(retry_after)}, scope=scope, retry_after_seconds=retry_after
        )


class BadGateway(ApiError):
    status = 502
    type = "backend_error"


class ConsensusFailed(ApiError):
    status = 502
    type = "consensus_failed"


class NoNodeAvailable(ApiError):
    status = 503
    type = "no_node_available"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class GatewayTimeout(ApiError):
    status = 504
    type = "backend_timeout"


class LedgerUnavailableError(ApiError, LedgerUnavailable):
    """503 ``ledger_unavailable``: the privacy ledger cannot record a spend right now, so no
    node was called and no answer was released. Both an API error (the middleware renders it,
    with ``Retry-After``) and the privacy core's `LedgerUnavailable` (what the ledger raises):
    the ledger raises this class, so no layer in between has to translate it. The database's
    own message (host names, paths) goes to the log, never to the client."""

    status = 503
    type = "ledger_unavailable"
    RETRY_AFTER_SECONDS = 2

    def __init__(self, kind: str, detail: str) -> None:
        LedgerUnavailable.__init__(self, kind, detail)
        secs = self.RETRY_AFTER_SECONDS
        self.message = f"the privacy ledger is unavailable right now ({self.kind}); no answer was released"
        self.headers = {"Retry-After": str(secs)}
        self.extra = {"kind": self.kind, "retry_after_seconds": secs}
