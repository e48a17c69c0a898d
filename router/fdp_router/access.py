"""Who may call, how often: authentication with the brute-force lockout, and per-principal
rate limits. Every authenticated API call goes through `authenticate` (``handlers.py``'s
`_authenticate`, the admin API) before its body is read, anything is reserved or any node is
called.

The order, for one request:

1. no bearer token: 401 ``missing_token`` (counted; not a lockout failure: nothing was guessed);
2. a token this router already verified and still valid: the caller (established sessions
   keep working during a lockout, so an attacker who knows a user id cannot log that user out);
3. otherwise, a client address or token subject that failed too often: 429 with Retry-After
   until its failure bucket refills (``rate_limits.failed_auth_per_client`` / ``_per_subject``),
   counted in ``fdp_auth_lockouts{scope}``;
4. verify (``auth.py``); a failure is a 401 with its reason, counted in
   ``fdp_auth_failures{reason}``, and takes a token from both failure buckets;
5. the caller's user and department request buckets (``rate_limits.per_user`` /
   ``per_department``): empty, 429 ``rate_limited`` with an honest Retry-After, counted in
   ``fdp_rate_limited{scope}``.

The buckets live in one `Guard` per app (``app.py`` puts it under `GUARD`), so they survive
config reloads; a changed ``rate_limits`` section starts new buckets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from aiohttp import web

from fdp_router.auth import Principal, unverified_subject
from fdp_router.config import RateLimitConfig
from fdp_router.errors import AuthenticationFailed, RateLimited
from fdp_router.metrics import Metrics
from fdp_router.ratelimit import FailureLimiter, RequestLimiter, retry_after_seconds
from fdp_router.request_path import Runtime

log = logging.getLogger("fdp_router.access")


class Guard:
    """The request and failure buckets of one app, rebuilt when ``rate_limits`` changes."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._cfg = RateLimitConfig()
        self.requests = RequestLimiter(self._cfg.per_user, self._cfg.per_department)
        self.failures = FailureLimiter(self._cfg.failed_auth_per_client, self._cfg.failed_auth_per_subject)

    def configure(self, cfg: RateLimitConfig) -> None:
        """Follow the running config; only a changed bucket spec starts new buckets."""
        if cfg is self._cfg:  # the same config generation: every request but the first
            return
        old, self._cfg = self._cfg, cfg
        if (cfg.per_user, cfg.per_department) != (old.per_user, old.per_department):
            self.requests = RequestLimiter(cfg.per_user, cfg.per_department)
        if (cfg.failed_auth_per_client, cfg.failed_auth_per_subject) != (
            old.failed_auth_per_client,
            old.failed_auth_per_subject,
        ):
            self.failures = FailureLimiter(cfg.failed_auth_per_client, cfg.failed_auth_per_subject)


GUARD = web.AppKey("guard", Guard)


def client_address(request: web.Request, cfg: RateLimitConfig) -> str:
    """The address the lockout is keyed by: the TCP peer, or the configured proxy header's
    last entry (the one the nearest proxy wrote)."""
    if cfg.client_address_header:
        forwarded = request.headers.get(cfg.client_address_header, "")
        last = forwarded.rsplit(",", 1)[-1].strip()
        if last:
            return last[:64]
    return request.remote or "unknown"


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(request: web.Request, rt: Runtime, metrics: Metrics) -> Principal:
    """The caller of `request`, or the 401/429 that stops it (see the module docstring)."""
    guard = request.app[GUARD]
    limits = rt.config.rate_limits
    guard.configure(limits)
    token = bearer_token(request)
    if token is None:
        metrics.child(metrics.auth_failures, "missing_token").inc()
        raise AuthenticationFailed("missing_token", "missing bearer token (Authorization: Bearer <JWT>)")
    who = rt.authenticator.cached(token)
    if who is None:
        who = await _verify_guarded(request, rt, metrics, guard, token)
    limited = guard.requests.admit(who.user, who.department, guard.clock())
    if limited is not None:
        scope, wait = limited
        metrics.child(metrics.rate_limited, scope).inc()
        secs = retry_after_seconds(wait)
        raise RateLimited(
            f"too many requests for this {scope} (rate_limits.per_{scope}); retry after {secs} s",
            scope=scope,
            retry_after=secs,
        )
    return who


async def _verify_guarded(
    request: web.Request, rt: Runtime, metrics: Metrics, guard: Guard, token: str
) -> Principal:
    limits = rt.config.rate_limits
    client = client_address(request, limits)
    subject = unverified_subject(token)
    locked = guard.failures.locked(client, subject, guard.clock())
    if locked is not None:
        scope, wait = locked
        metrics.child(metrics.auth_lockouts, scope).inc()
        secs = retry_after_seconds(wait)
        raise RateLimited(
            f"too many failed authentications from this {scope}; retry after {secs} s",
            scope=f"auth_{scope}",
            retry_after=secs,
        )
    try:
        return await rt.authenticator.averify(token)
    except AuthenticationFailed as exc:
        metrics.child(metrics.auth_failures, exc.reason).inc()
        guard.failures.failed(client, subject, guard.clock())
        log.warning("authentication failed", extra={"reason": exc.reason, "client": client})
        raise
