"""Tokens and roles, attacked (issue 11, items 6 and 7): an auditor cannot run clinical
queries; every claim the router reads is type- and range-checked (401, never 500, over a
generated set of hostile claims); require_mfa and max_token_age_seconds hold; published
example secrets are refused at start; /v1/health says only up/down without a token; the
OpenAPI document declares every path parameter."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fdp_router.auth import Authenticator, AuthSetupError, check_secret, has_second_factor, load_hs256_secret
from fdp_router.config import AuthConfig
from fdp_router.errors import AuthenticationFailed
from fdp_router.runtime import METRICS

from .conftest import SECRET, Cluster, RouterFactory, auth, q, token

ISS, AUD = "fdp-test", "fdp-router-test"
REPO = Path(__file__).resolve().parents[3]


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "sub": "alice",
        "department": "cardiology",
        "roles": ["clinician"],
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    }
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _sign(claims: dict[str, Any]) -> str:
    """HS256 by hand: PyJWT will not even encode some of the claims an attacker can send."""
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _auth(**cfg: Any) -> Authenticator:
    return Authenticator(AuthConfig(issuer=ISS, audience=AUD, **cfg), hs256_secret=SECRET)


async def _inference(client: Any, tok: str, tag: object = "") -> Any:
    return await client.post(
        "/v1/inference", json={"prompt": q(tag), "privacy_budget": 0.1}, headers=auth(tok)
    )


# --- roles gate the request path -------------------------------------------------------------


async def test_an_auditor_cannot_run_clinical_queries_and_nothing_is_charged(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    auditor = token(user="inspector", roles=["auditor"])
    r = await _inference(client, auditor, "audit")
    assert r.status == 403
    err = (await r.json())["error"]
    assert err["reason"] == "role_not_allowed" and "clinician or admin" in err["message"]
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "patient-stats", "messages": [{"role": "user", "content": q("audit-chat")}]},
        headers=auth(auditor),
    )
    assert r.status == 403
    assert sum(n.state.completions for n in demo_cluster.nodes) == 0  # no node was asked
    sample = client.app[METRICS].registry.get_sample_value
    assert sample("fdp_access_violations_total", {"reason": "role_not_allowed"}) == 2
    # what an auditor may do: read budgets (anyone's) and health details
    assert (await client.get("/v1/privacy/budget/alice", headers=auth(auditor))).status == 200
    health = await (await client.get("/v1/health", headers=auth(auditor))).json()
    assert "components" in health
    assert (await client.get("/v1/admin/config", headers=auth(auditor))).status == 403
    # clinician and admin may query; a token with both auditor and clinician may too
    for roles in (["clinician"], ["admin"], ["auditor", "clinician"]):
        assert (
            await _inference(client, token(user=f"u-{roles[-1]}-{len(roles)}", roles=roles), roles)
        ).status == 200


# --- claims: types and ranges ----------------------------------------------------------------

HOSTILE_VALUES: list[Any] = [
    True,
    False,
    0,
    -1,
    1.5,
    10**400,
    -(10**400),
    2**63,
    1e308,
    float("nan"),
    float("inf"),
    "",
    "x",
    "1700000000",
    "\x00\x07",
    [],
    [1, 2],
    ["clinician"],
    [["clinician"]],
    {},
    {"a": 1},
    "a" * 5000,
    None,
]
CLAIMS = ("exp", "nbf", "iat", "auth_time", "sub", "department", "roles", "amr", "iss", "aud", "jti")


def test_generated_hostile_claims_are_refused_as_authentication_failures_never_crashes() -> None:
    """A property test without a library: 3,000 tokens, each with 1 to 4 claims replaced by a
    hostile value (seeded), all validly signed. Each is a Principal or an AuthenticationFailed
    (401); no other exception (500) ever."""
    rng = random.Random(11)
    a = _auth(require_mfa=False)
    outcomes = {"accepted": 0, "refused": 0}
    reasons: set[str] = set()
    for _ in range(3000):
        over = {name: rng.choice(HOSTILE_VALUES) for name in rng.sample(CLAIMS, rng.randint(1, 4))}
        claims = _claims()
        for k, v in over.items():
            if v is None:
                claims.pop(k, None)
            else:
                claims[k] = v
        tok = _sign(claims)
        try:
            who = a.verify(tok)
        except AuthenticationFailed as exc:
            outcomes["refused"] += 1
            reasons.add(exc.reason)
            assert exc.status == 401 and exc.message
        else:
            outcomes["accepted"] += 1
            assert isinstance(who.user, str) and isinstance(who.department, str)
    assert outcomes["refused"] > 2500, outcomes
    assert {"bad_claim", "missing_claim", "expired", "issuer", "audience"} <= reasons


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("exp", 10**400),
        ("exp", "9999999999"),
        ("exp", 1e300),
        ("exp", True),
        ("nbf", [1]),
        ("iat", "yesterday"),
        ("iat", 10**30),
        ("auth_time", {"t": 1}),
        ("sub", ["alice", "bob"]),
        ("sub", 42),
        ("sub", "alice\nadmin"),
        ("department", {"name": "cardiology"}),
        ("department", "x" * 300),
        ("roles", [["admin"]]),
        ("roles", {"admin": True}),
        ("amr", "pwd otp"),
        ("amr", [1, 2]),
    ],
)
async def test_a_validly_signed_token_with_a_bad_claim_is_401_over_http(
    router: RouterFactory, claim: str, value: Any
) -> None:
    client = await router()
    r = await _inference(client, _sign(_claims(**{claim: value})))
    assert r.status == 401, await r.text()
    assert (await r.json())["error"]["reason"] in {"bad_claim", "expired", "missing_claim"}


# --- require_mfa -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amr", "ok"),
    [
        (None, False),
        (["pwd"], False),
        (["otp"], False),
        (["otp", "sms"], False),  # two things held are one kind of factor
        (["pwd", "kba"], False),
        (["pwd", "otp"], True),
        (["pwd", "hwk"], True),
        (["pwd", "fido"], True),
        (["hwk", "pin"], True),
        (["swk", "fpt"], True),
        (["mfa"], True),
    ],
)
def test_require_mfa_accepts_only_a_second_factor(amr: list[str] | None, ok: bool) -> None:
    a = _auth(require_mfa=True)
    tok = _sign(_claims(amr=amr))
    if ok:
        assert a.verify(tok).user == "alice"
    else:
        with pytest.raises(AuthenticationFailed) as exc:
            a.verify(tok)
        assert exc.value.reason == "mfa_required"
    assert has_second_factor(amr or []) is ok


async def test_require_mfa_over_http_counts_the_refusal(router: RouterFactory, demo_cluster: Cluster) -> None:
    client = await router(demo_cluster.config(auth={"require_mfa": True}))
    r = await _inference(client, _sign(_claims(amr=["pwd"])))
    assert r.status == 401 and "require_mfa" in (await r.json())["error"]["message"]
    assert (await _inference(client, _sign(_claims(amr=["pwd", "otp"])))).status == 200
    sample = client.app[METRICS].registry.get_sample_value
    assert sample("fdp_auth_failures_total", {"reason": "mfa_required"}) == 1


# --- max_token_age_seconds -----------------------------------------------------------------


def test_max_token_age_refuses_old_sign_ins_even_with_a_fresh_token() -> None:
    a = _auth(max_token_age_seconds=3600, leeway_seconds=0)
    now = int(time.time())
    with pytest.raises(AuthenticationFailed) as exc:  # issued 4000 s ago, still before exp
        a.verify(_sign(_claims(iat=now - 4000, nbf=now - 4000, exp=now + 600)))
    assert exc.value.reason == "token_too_old"
    with pytest.raises(AuthenticationFailed) as exc:  # refreshed token, but signed in 4000 s ago
        a.verify(_sign(_claims(auth_time=now - 4000)))
    assert exc.value.reason == "token_too_old"
    assert a.verify(_sign(_claims(auth_time=now - 100))).user == "alice"
    with pytest.raises(AuthenticationFailed) as exc:
        a.verify(_sign(_claims(iat=None)))
    assert exc.value.reason == "missing_claim"
    # a token verified (and cached) earlier is refused once it grows too old
    tok = _sign(_claims(iat=now - 3000, nbf=now - 3000, exp=now + 7200))
    assert a.verify(tok).user == "alice"
    assert a.cached(tok) is not None
    assert a.cached(tok, now=now + 700) is None
    # the default: the original design's 8-hour automatic logoff
    assert AuthConfig().max_token_age_seconds == 8 * 3600
    assert _auth(max_token_age_seconds=None).verify(_sign(_claims(iat=None))).user == "alice"


async def test_max_token_age_over_http(router: RouterFactory, demo_cluster: Cluster) -> None:
    client = await router(demo_cluster.config(auth={"max_token_age_seconds": 600}))
    now = int(time.time())
    r = await _inference(client, _sign(_claims(iat=now - 1200, nbf=now - 1200, exp=now + 600)))
    assert r.status == 401 and (await r.json())["error"]["reason"] == "token_too_old"


# --- secrets ----------------------------------------------------------------------------------


def test_published_example_secrets_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    example = "change-me-to-32-random-bytes-please"
    monkeypatch.setenv("FDP_JWT_SECRET", example)
    with pytest.raises(AuthSetupError, match=r"example placeholder.*secrets\.token_hex"):
        load_hs256_secret(AuthConfig())
    with pytest.raises(AuthSetupError, match="example placeholder"):
        Authenticator(AuthConfig(), hs256_secret=b"please-CHANGE-ME-" + b"0123456789" * 3)
    assert check_secret(b"0f" * 32)


async def test_a_router_given_the_published_example_secret_does_not_start(router: RouterFactory) -> None:
    with pytest.raises(AuthSetupError, match="example placeholder"):
        await router(hs256_secret=b"change-me-to-32-random-bytes-please")


def test_no_secret_in_the_examples_would_be_accepted() -> None:
    """Whatever secret value the examples ship, the router refuses it: an example deployed
    as it is cannot be signed for by everyone who read it."""
    found = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "Secret":
                for key, value in (doc.get("stringData") or {}).items():
                    if "secret" in key.lower() and isinstance(value, str):
                        found.append((path.name, value))
    for name, value in found:
        with pytest.raises(AuthSetupError):
            check_secret(value.encode())
        assert name


def test_the_standalone_example_documents_how_to_generate_its_secret() -> None:
    readme = (REPO / "examples" / "standalone" / "README.md").read_text(encoding="utf-8")
    assert "python -c 'import secrets; print(secrets.token_hex(32))'" in readme


# --- health and the OpenAPI document --------------------------------------------------------


async def test_health_without_a_token_says_only_up_or_down(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router()
    r = await client.get("/v1/health")
    assert r.status == 200 and await r.json() == {"status": "up"}
    text = await r.text()
    for secret_detail in ("hospital-", "127.0.0.1", "node-0", "cardiology"):
        assert secret_detail not in text
    detailed = await (await client.get("/v1/health", headers=auth())).json()
    assert {n["id"] for n in detailed["components"]["nodes"]} == {"node-0", "node-1", "node-2"}
    bad = await client.get("/v1/health", headers={"Authorization": "Bearer not.a.jwt"})
    assert bad.status == 401


async def test_openapi_declares_every_path_parameter(router: RouterFactory) -> None:
    client = await router()
    spec = await (await client.get("/openapi.json")).json()
    for path, ops in spec["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for method, op in ops.items():
                declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert name in declared, f"{method.upper()} {path} does not declare {name}"
