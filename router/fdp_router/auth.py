"""JWT authentication: who is calling, from which department, with which roles.

Called by the request path in ``service.py`` (through ``app.py``) for every API request,
and by ``service_cli.py`` (`fdp-router token`) to mint HS256 dev tokens.

Exactly the algorithms in ``auth.algorithms`` are accepted, and the key is chosen by the
algorithm *family* (HS256: the shared secret; RS256/ES256: a JWKS key of matching type),
so "alg: none" and "HS256 signed with the RSA public key" fail before any signature check.
``iss``, ``aud``, ``exp``, ``nbf`` are verified with ``leeway_seconds`` of clock skew; ``sub``,
``department`` and ``roles`` are required. There is no password store: tokens come from
the hospital's identity provider.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from fdp_router.config import AuthConfig
from fdp_router.errors import Unauthorized

ROLES = ("clinician", "auditor", "admin")
MIN_SECRET_BYTES = 32
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    department: str
    roles: frozenset[str]

    def can_read_budget_of(self, user: str) -> bool:
        return user == self.user or bool(self.roles & {"auditor", "admin"})

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


class AuthSetupError(ValueError):
    """The auth configuration cannot work (missing secret, bad JWKS): names the field."""


def load_hs256_secret(cfg: AuthConfig) -> bytes | None:
    raw: str | None = None
    if cfg.hs256_secret_file:
        raw = Path(cfg.hs256_secret_file).read_text(encoding="utf-8").strip()
    elif cfg.hs256_secret_env and os.environ.get(cfg.hs256_secret_env):
        raw = os.environ[cfg.hs256_secret_env].strip()
    if raw is None:
        return None
    secret = raw.encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthSetupError(f"auth.hs256_secret: must be at least {MIN_SECRET_BYTES} bytes")
    return secret


class Authenticator:
    """Verifies bearer tokens against one `AuthConfig` (rebuilt on config reload)."""

    def __init__(self, cfg: AuthConfig, *, hs256_secret: bytes | None = None) -> None:
        self.cfg = cfg
        self._secret: bytes | None = None
        if "HS256" in cfg.algorithms:
            self._secret = hs256_secret if hs256_secret is not None else load_hs256_secret(cfg)
        if "HS256" in cfg.algorithms and self._secret is None:
            raise AuthSetupError(
                "auth.hs256_secret_file: HS256 is allowed but no secret is configured "
                f"(set the file or ${cfg.hs256_secret_env})"
            )
        # Tokens whose signature and claims were verified, with their validity interval: a
        # repeat of the exact same token string only needs its time window re-checked.
        # Rebuilt with the Authenticator on every config reload (new keys, new issuer).
        self._verified: OrderedDict[str, tuple[Principal, float, float]] = OrderedDict()
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._jwks_client: jwt.PyJWKClient | None = None
        if cfg.jwks_file:
            self._load_jwks(json.loads(Path(cfg.jwks_file).read_text(encoding="utf-8")))
        if cfg.jwks_url:
            self._jwks_client = jwt.PyJWKClient(cfg.jwks_url, cache_keys=True, lifespan=300, timeout=5)
        if any(a != "HS256" for a in cfg.algorithms) and not (cfg.jwks_file or cfg.jwks_url):
            raise AuthSetupError("auth.jwks_file: RS256/ES256 need a JWKS file or URL")

    def _load_jwks(self, doc: dict[str, Any]) -> None:
        try:
            keyset = jwt.PyJWKSet.from_dict(doc)
        except jwt.PyJWTError as exc:
            raise AuthSetupError(f"auth.jwks_file: {exc}") from exc
        for key in keyset.keys:
            self._jwks[key.key_id or ""] = key

    def _key_for(self, alg: str, kid: str | None) -> Any:
        if alg == "HS256":
            return self._secret
        expected = {"RS256": "RSA", "ES256": "EC"}[alg]
        key: jwt.PyJWK | None = self._jwks.get(kid or "")
        if key is None and len(self._jwks) == 1 and not kid:
            key = next(iter(self._jwks.values()))
        if key is None and self._jwks_client is not None and kid:
            try:
                key = self._jwks_client.get_signing_key(kid)
            except jwt.PyJWTError as exc:
                raise Unauthorized(f"no usable signing key for kid {kid!r}: {exc}") from None
        if key is None:
            raise Unauthorized(f"unknown signing key id {kid!r}")
        if key.key_type != expected:
            raise Unauthorized(f"key {kid!r} is {key.key_type}, token says {alg}")
        return key.key

    async def averify(self, token: str) -> Principal:
        """`verify` off the event loop when a JWKS URL may have to be fetched (blocking client)."""
        if self._jwks_client is not None:
            return await asyncio.to_thread(self.verify, token)
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        """The caller, or Unauthorized saying why (never which part of a signature failed)."""
        hit = self._verified.get(token)
        if hit is not None:
            principal, not_before, expires = hit
            now = time.time()
            if not_before - self.cfg.leeway_seconds <= now <= expires + self.cfg.leeway_seconds:
                self._verified.move_to_end(token)
                return principal
            del self._verified[token]
        claims = self._decode(token)
        principal = principal_from_claims(claims)
        self._verified[token] = (principal, float(claims.get("nbf", 0)), float(claims["exp"]))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.cfg.algorithms:
            raise Unauthorized(
                f"token algorithm {alg!r} is not allowed (allowed: {list(self.cfg.algorithms)})"
            )
        key = self._key_for(alg, header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                leeway=self.cfg.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("token not yet valid (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token audience is not this router") from None
        except jwt.InvalidIssuerError:
            raise Unauthorized("token issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token is missing the {exc.claim!r} claim") from None
        except jwt.PyJWTError:
            raise Unauthorized("invalid token signature or encoding") from None
        return claims


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    user = claims.get("sub")
    dept = claims.get("department")
    roles_claim = claims.get("roles")
    if not isinstance(user, str) or not user:
        raise Unauthorized("token is missing the 'sub' claim")
    if not isinstance(dept, str) or not dept:
        raise Unauthorized("token is missing the 'department' claim")
    if isinstance(roles_claim, str):
        roles_claim = roles_claim.split()
    if not isinstance(roles_claim, list):
        raise Unauthorized("token is missing the 'roles' claim")
    roles = frozenset(r for r in roles_claim if isinstance(r, str) and r in ROLES)
    if not roles:
        raise Unauthorized(f"token has no known role (one of {list(ROLES)})")
    return Principal(user=user, department=dept, roles=roles)


def mint_token(
    secret: bytes,
    *,
    user: str,
    department: str,
    roles: list[str],
    issuer: str,
    audience: str,
    ttl_seconds: int = 3600,
    now: float | None = None,
) -> str:
    """An HS256 dev token (demos and tests; production tokens come from the IdP)."""
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthSetupError(f"secret must be at least {MIN_SECRET_BYTES} bytes")
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise AuthSetupError(f"roles: unknown role(s) {unknown}; known: {list(ROLES)}")
    t = int(now if now is not None else time.time())
    claims = {
        "sub": user,
        "department": department,
        "roles": roles,
        "iss": issuer,
        "aud": audience,
        "iat": t,
        "nbf": t,
        "exp": t + ttl_seconds,
    }
    return jwt.encode(claims, secret, algorithm="HS256")
