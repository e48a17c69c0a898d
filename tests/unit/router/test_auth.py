"""JWT authentication over real HTTP round trips: valid tokens pass, every attack is 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fdp_router.auth import Authenticator, AuthSetupError
from fdp_router.config import AuthConfig
from fdp_router.errors import Unauthorized
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from .conftest import SECRET, Cluster, RouterFactory, q

ISS, AUD = "fdp-test", "fdp-router-test"


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


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {"rsa": rsa_key, "ec": ec_key, "other_rsa": other_rsa}


@pytest.fixture
def jwks_config(keys: dict[str, Any], demo_cluster: Cluster, tmp_path: Path) -> Any:
    rsa_jwk = RSAAlgorithm.to_jwk(keys["rsa"].public_key(), as_dict=True) | {"kid": "rsa1", "use": "sig"}
    ec_jwk = ECAlgorithm.to_jwk(keys["ec"].public_key(), as_dict=True) | {"kid": "ec1", "use": "sig"}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    return demo_cluster.config(
        auth={
            "algorithms": ["HS256", "RS256", "ES256"],
            "issuer": ISS,
            "audience": AUD,
            "jwks_file": str(path),
            "hs256_secret_env": None,
        }
    )


def _rs(keys: dict[str, Any], claims: dict[str, Any], kid: str = "rsa1", key: str = "rsa") -> str:
    return jwt.encode(claims, keys[key], algorithm="RS256", headers={"kid": kid})


async def _status(client: Any, tok: str) -> tuple[int, str]:
    r = await client.post(
        "/v1/inference", json={"prompt": q("fever")}, headers={"Authorization": f"Bearer {tok}"}
    )
    doc = await r.json()
    return r.status, doc.get("error", {}).get("message", "")


async def test_valid_hs256_rs256_es256_tokens_are_accepted(
    router: RouterFactory, jwks_config: Any, keys: dict[str, Any]
) -> None:
    client = await router(jwks_config)
    for tok in (
        jwt.encode(_claims(), SECRET, algorithm="HS256"),
        _rs(keys, _claims()),
        jwt.encode(_claims(), keys["ec"], algorithm="ES256", headers={"kid": "ec1"}),
    ):
        status, msg = await _status(client, tok)
        assert status == 200, msg


async def test_jwt_attacks_are_all_401(router: RouterFactory, jwks_config: Any, keys: dict[str, Any]) -> None:
    client = await router(jwks_config)
    now = int(time.time())
    public_pem = (
        keys["rsa"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    confused_sig = _b64(hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    none_tok = f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{payload}."
    good = _rs(keys, _claims())
    h, p, s = good.split(".")
    tampered = f"{h}.{_b64(json.dumps(_claims(sub='mallory', roles=['admin'])).encode())}.{s}"
    attacks = {
        "alg none": none_tok,
        "alg None (case)": f"{_b64(json.dumps({'alg': 'None'}).encode())}.{payload}.",
        "HS256 signed with the RSA public key": f"{header}.{payload}.{confused_sig}",
        "expired": _rs(keys, _claims(exp=now - 3600, iat=now - 7200, nbf=now - 7200)),
        "not yet valid": _rs(keys, _claims(nbf=now + 3600)),
        "wrong issuer": _rs(keys, _claims(iss="evil-idp")),
        "wrong audience": _rs(keys, _claims(aud="another-service")),
        "tampered payload": tampered,
        "tampered signature": f"{h}.{p}.{s[:-4]}AAAA",
        "signed by an unknown key with a known kid": _rs(keys, _claims(), key="other_rsa"),
        "unknown kid": _rs(keys, _claims(), kid="nope"),
        "HS256 with another secret": jwt.encode(_claims(), b"y" * 48, algorithm="HS256"),
        "HS512 (not allowed)": jwt.encode(_claims(), SECRET * 2, algorithm="HS512"),
        "missing sub": _rs(keys, _claims(sub=None)),
        "missing department": _rs(keys, _claims(department=None)),
        "missing roles": _rs(keys, _claims(roles=None)),
        "unknown roles only": _rs(keys, _claims(roles=["superuser"])),
        "missing exp": _rs(keys, _claims(exp=None)),
        "garbage": "not.a.jwt",
    }
    for name, tok in attacks.items():
        status, msg = await _status(client, tok)
        assert status == 401, f"{name}: got {status} {msg}"
        assert msg, name


async def test_leeway_allows_small_clock_skew(
    router: RouterFactory, jwks_config: Any, keys: dict[str, Any]
) -> None:
    client = await router(jwks_config)
    now = int(time.time())
    status, msg = await _status(client, _rs(keys, _claims(nbf=now + 10, iat=now + 10)))
    assert status == 200, msg
    status, _ = await _status(client, _rs(keys, _claims(exp=now - 10)))
    assert status == 200


def test_bad_auth_setups_are_errors_naming_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FDP_JWT_SECRET", raising=False)
    with pytest.raises(AuthSetupError, match="hs256_secret"):
        Authenticator(AuthConfig())
    monkeypatch.setenv("FDP_JWT_SECRET", "short")
    with pytest.raises(AuthSetupError, match="at least 32 bytes"):
        Authenticator(AuthConfig())
    with pytest.raises(AuthSetupError, match="jwks"):
        Authenticator(AuthConfig(algorithms=("RS256",)))


def test_a_verified_token_is_still_refused_once_it_expires() -> None:
    a = Authenticator(AuthConfig(issuer=ISS, audience=AUD, leeway_seconds=0), hs256_secret=SECRET)
    tok = jwt.encode(_claims(exp=int(time.time()) + 2), SECRET, algorithm="HS256")
    assert a.verify(tok).user == "alice"
    assert a.verify(tok).user == "alice"  # served from the verified-token cache
    time.sleep(3.1)
    with pytest.raises(Unauthorized, match="expired"):
        a.verify(tok)


async def test_rs256_keys_from_a_jwks_url(
    router: RouterFactory, demo_cluster: Cluster, keys: dict[str, Any], aiohttp_server: Any
) -> None:
    from aiohttp import web

    rsa_jwk = RSAAlgorithm.to_jwk(keys["rsa"].public_key(), as_dict=True) | {"kid": "idp-1", "use": "sig"}

    async def jwks(request: web.Request) -> web.Response:
        return web.json_response({"keys": [rsa_jwk]})

    idp = web.Application()
    idp.router.add_get("/.well-known/jwks.json", jwks)
    server = await aiohttp_server(idp)
    cfg = demo_cluster.config(
        auth={
            "algorithms": ["RS256"],
            "issuer": ISS,
            "audience": AUD,
            "jwks_url": str(server.make_url("/.well-known/jwks.json")),
            "hs256_secret_env": None,
        }
    )
    client = await router(cfg)
    status, msg = await _status(client, _rs(keys, _claims(), kid="idp-1"))
    assert status == 200, msg
    status, _ = await _status(client, _rs(keys, _claims(), kid="idp-1", key="other_rsa"))
    assert status == 401
    status, _ = await _status(client, jwt.encode(_claims(), SECRET, algorithm="HS256"))
    assert status == 401  # HS256 is not in this router's allow-list
