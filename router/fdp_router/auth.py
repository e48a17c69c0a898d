"""JWT authentication: who is calling, from which department, with which roles.

Called by the request path in ``service.py`` (through ``app.py``) for every API request,
and by ``service_cli.py`` (`fdp-router token`) to mint HS256 dev tokens.

Exactly the algorithms in ``auth.algorithms`` are accepted, and the key is chosen by the
algorithm *family* (HS256: the shared secret; RS256/ES256: a JWKS key of matching type),
so "alg: none" and "HS256 signed with the RSA public key" fail before any signature check.
``iss`` and ``aud`` are verified by PyJWT; every other claim this router reads is type- and
range-checked here (`check_claims`): the times ``exp`` (required), ``nbf``, ``iat`` and
``auth_time`` are numbers of seconds within `MAX_NUMERIC_DATE`, checked with
``leeway_seconds`` of clock skew; ``sub``, ``department`` and ``roles`` are required strings
of bounded length; ``amr`` is a list of strings. Anything else is a 401 with a reason (the
``fdp_auth_failures`` label), never a 500. ``auth.require_mfa`` and
``auth.max_token_age_seconds`` add the second-factor and automatic-logoff rules. There is no
password store: tokens come from the hospital's identity provider.

``access.py`` calls `Authenticator.verify` (with the brute-force lockout and rate limits
around it); ``service_cli.py`` (`fdp-router token`) calls `mint_token`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from fdp_router.config import AuthConfig
from fdp_router.errors import AuthenticationFailed

ROLES = ("clinician", "auditor", "admin")
# Roles that may run clinical queries; an auditor reads budgets and health details only.
QUERY_ROLES = frozenset({"clinician", "admin"})
MIN_SECRET_BYTES = 32
VERIFIED_CACHE_SIZE = 4096
MAX_TOKEN_BYTES = 16_384
MAX_NUMERIC_DATE = 10**11  # seconds since 1970: the year 5138; anything later is not a date
MAX_ID_LENGTH = 256
MAX_LIST_ITEMS = 64
# Secrets published in this repository's examples and docs: refused at start, whatever
# their length. Generate a real one: python -c 'import secrets; print(secrets.token_hex(32))'
KNOWN_EXAMPLE_SECRETS = frozenset({b"change-me-to-32-random-bytes-please"})
PLACEHOLDER_MARKERS = (b"change-me", b"changeme", b"change_me", b"replace-me", b"replaceme")
GENERATE_HINT = "generate one: python -c 'import secrets; print(secrets.token_hex(32))'"
# Authentication methods (RFC 8176 `amr` values, plus "fido" as some providers write it) by
# kind of factor: a second factor is "mfa", or methods of two different kinds.
KNOWLEDGE_FACTORS = frozenset({"pwd", "pin", "kba"})
POSSESSION_FACTORS = frozenset({"otp", "hwk", "swk", "sms", "tel", "sc", "pop", "fido"})
INHERENCE_FACTORS = frozenset({"fpt", "face", "iris", "retina", "vbm"})


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

    @property
    def may_query(self) -> bool:
        """May run clinical queries (clinician or admin; not an auditor-only token)."""
        return bool(self.roles & QUERY_ROLES)


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
    return check_secret(raw.encode())


def check_secret(secret: bytes) -> bytes:
    """The HS256 secret, if it can be used: long enough and not an example's placeholder."""
    if len(secret) < MIN_SECRET_BYTES:
        raise AuthSetupError(f"auth.hs256_secret: must be at least {MIN_SECRET_BYTES} bytes; {GENERATE_HINT}")
    lowered = secret.lower()
    if secret in KNOWN_EXAMPLE_SECRETS or any(m in lowered for m in PLACEHOLDER_MARKERS):
        raise AuthSetupError(
            "auth.hs256_secret: this is an example placeholder secret (anyone who read the example "
            f"can sign tokens with it); {GENERATE_HINT}"
        )
    return secret


class Authenticator:
    """Verifies bearer tokens against one `AuthConfig` (rebuilt on config reload)."""

    def __init__(self, cfg: AuthConfig, *, hs256_secret: bytes | None = None) -> None:
        self.cfg = cfg
        self._secret: bytes | None = None
        if "HS256" in cfg.algorithms:
            self._secret = check_secret(hs256_secret) if hs256_secret is not None else load_hs256_secret(cfg)
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
                raise AuthenticationFailed(
                    "unknown_key", f"no usable signing key for kid {kid!r}: {exc}"
                ) from None
        if key is None:
            raise AuthenticationFailed("unknown_key", f"unknown signing key id {kid!r}")
        if key.key_type != expected:
            raise AuthenticationFailed("algorithm", f"key {kid!r} is {key.key_type}, token says {alg}")
        return key.key

    async def averify(self, token: str) -> Principal:
        """`verify` off the event loop when a JWKS URL may have to be fetched (blocking client)."""
        if self._jwks_client is not None:
            return await asyncio.to_thread(self.verify, token)
        return self.verify(token)

    def cached(self, token: str, now: float | None = None) -> Principal | None:
        """The caller, if this exact token was verified before and is still in its window."""
        hit = self._verified.get(token)
        if hit is None:
            return None
        principal, not_before, expires = hit
        now = time.time() if now is None else now
        if not_before - self.cfg.leeway_seconds <= now <= expires + self.cfg.leeway_seconds:
            self._verified.move_to_end(token)
            return principal
        del self._verified[token]
        return None

    def verify(self, token: str) -> Principal:
        """The caller, or AuthenticationFailed saying why (never which part of a signature
        failed)."""
        principal = self.cached(token)
        if principal is not None:
            return principal
        now = time.time()
        claims = self._decode(token)
        not_before, expires = check_claims(claims, self.cfg, now)
        principal = principal_from_claims(claims)
        self._verified[token] = (principal, not_before, expires)
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return principal

    def _decode(self, token: str) -> dict[str, Any]:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed("malformed", "malformed token (too long)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed", "malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.cfg.algorithms:
            raise AuthenticationFailed(
                "algorithm",
                f"token algorithm {str(alg)[:20]!r} is not allowed (allowed: {list(self.cfg.algorithms)})",
            )
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_ID_LENGTH):
            raise AuthenticationFailed("malformed", "token header 'kid' must be a short string")
        key = self._key_for(alg, kid)
        try:
            # The times are checked by `check_claims` (strict types and ranges), not here.
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.cfg.audience,
                issuer=self.cfg.issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("audience", "token audience is not this router") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed("issuer", "token issuer is not trusted") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationFailed("missing_claim", f"token is missing the {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationFailed("signature", "invalid token signature or encoding") from None
        except (jwt.exceptions.InvalidSubjectError, jwt.exceptions.InvalidJTIError):
            raise AuthenticationFailed("bad_claim", "token claim 'sub' or 'jti' is not a string") from None
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed", "invalid token signature or encoding") from None
        return claims


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    """A JWT NumericDate claim: a finite number (not a bool) between 0 and MAX_NUMERIC_DATE."""
    if name not in claims:
        return None
    v = claims[name]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise AuthenticationFailed("bad_claim", f"token claim {name!r} must be a number of seconds")
    if isinstance(v, float) and not math.isfinite(v):
        raise AuthenticationFailed("bad_claim", f"token claim {name!r} must be finite")
    if not 0 <= v <= MAX_NUMERIC_DATE:
        raise AuthenticationFailed("bad_claim", f"token claim {name!r} is out of range")
    return float(v)


def check_claims(claims: dict[str, Any], cfg: AuthConfig, now: float) -> tuple[float, float]:
    """Times, age and second factor. Returns the interval (not before, expires) in which the
    token stays valid, so that a cached token is re-checked only by its time."""
    leeway = cfg.leeway_seconds
    exp = _numeric_date(claims, "exp")
    nbf = _numeric_date(claims, "nbf")
    iat = _numeric_date(claims, "iat")
    auth_time = _numeric_date(claims, "auth_time")
    if exp is None:
        raise AuthenticationFailed("missing_claim", "token is missing the 'exp' claim")
    if now > exp + leeway:
        raise AuthenticationFailed("expired", "token expired")
    if nbf is not None and now < nbf - leeway:
        raise AuthenticationFailed("not_yet_valid", "token not yet valid (nbf/iat in the future)")
    for name, t in (("iat", iat), ("auth_time", auth_time)):
        if t is not None and t > now + leeway:
            raise AuthenticationFailed("not_yet_valid", f"token not yet valid ({name} in the future)")
    expires = exp
    if cfg.max_token_age_seconds is not None:
        since = auth_time if auth_time is not None else iat
        if since is None:
            raise AuthenticationFailed(
                "missing_claim",
                "token has neither 'auth_time' nor 'iat': its age cannot be checked "
                "(auth.max_token_age_seconds)",
            )
        expires = min(exp, since + cfg.max_token_age_seconds)
        if now > expires + leeway:
            raise AuthenticationFailed(
                "token_too_old",
                f"token is older than {cfg.max_token_age_seconds} s (auth.max_token_age_seconds): "
                "sign in again",
            )
    amr = claims.get("amr")
    if amr is not None and (
        not isinstance(amr, list)
        or len(amr) > MAX_LIST_ITEMS
        or not all(isinstance(m, str) and len(m) <= MAX_ID_LENGTH for m in amr)
    ):
        raise AuthenticationFailed("bad_claim", "token claim 'amr' must be a list of strings")
    if cfg.require_mfa and not has_second_factor(amr or []):
        raise AuthenticationFailed(
            "mfa_required",
            "this router requires multi-factor sign-in (auth.require_mfa): the token's 'amr' claim "
            f"shows {sorted(set(amr or []))[:8]}",
        )
    return (nbf if nbf is not None else 0.0), expires


def has_second_factor(amr: list[str]) -> bool:
    """`amr` says "mfa", or names methods of two different kinds of factor."""
    methods = set(amr)
    if "mfa" in methods:
        return True
    kinds = (KNOWLEDGE_FACTORS, POSSESSION_FACTORS, INHERENCE_FACTORS)
    return sum(1 for kind in kinds if methods & kind) >= 2


def _identifier(claims: dict[str, Any], name: str) -> str:
    v = claims.get(name)
    if v is None or v == "":
        raise AuthenticationFailed("missing_claim", f"token is missing the {name!r} claim")
    if not isinstance(v, str) or len(v) > MAX_ID_LENGTH or not v.isprintable():
        raise AuthenticationFailed(
            "bad_claim",
            f"token claim {name!r} must be a printable string of at most {MAX_ID_LENGTH} characters",
        )
    return v


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    user = _identifier(claims, "sub")
    dept = _identifier(claims, "department")
    roles_claim = claims.get("roles")
    if isinstance(roles_claim, str):
        roles_claim = roles_claim.split()
    if roles_claim is None:
        raise AuthenticationFailed("missing_claim", "token is missing the 'roles' claim")
    if (
        not isinstance(roles_claim, list)
        or len(roles_claim) > MAX_LIST_ITEMS
        or not all(isinstance(r, str) for r in roles_claim)
    ):
        raise AuthenticationFailed("bad_claim", "token claim 'roles' must be a list of strings")
    roles = frozenset(r for r in roles_claim if r in ROLES)
    if not roles:
        raise AuthenticationFailed("no_role", f"token has no known role (one of {list(ROLES)})")
    return Principal(user=user, department=dept, roles=roles)


def unverified_subject(token: str) -> str | None:
    """The ``sub`` a token claims, read WITHOUT verifying it: only to key the brute-force
    lockout of that subject. None if it cannot be read."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > MAX_TOKEN_BYTES:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None
    sub = payload.get("sub") if isinstance(payload, dict) else None
    if isinstance(sub, str) and 0 < len(sub) <= MAX_ID_LENGTH:
        return sub
    return None


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
