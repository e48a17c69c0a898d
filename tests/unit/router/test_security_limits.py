"""Per-principal rate limits and the brute-force lockout, attacked over real HTTP (issue 11,
items 1 and 7): one clinician at full speed cannot starve another department, Retry-After is
honest, repeated bad tokens from one address or for one subject are locked out (counted)
while a session the router already verified keeps working."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt
from fdp_router.access import GUARD
from fdp_router.config import RateBucket
from fdp_router.ratelimit import FailureLimiter, KeyedBuckets, RequestLimiter, retry_after_seconds
from fdp_router.runtime import METRICS

from .conftest import Cluster, RouterFactory, auth, q, token

OFF = {"rate_per_second": 0, "burst": 0}


def _bucket(rate: float, burst: int) -> RateBucket:
    return RateBucket(rate_per_second=rate, burst=burst)


def _sample(client: Any, name: str, labels: dict[str, str]) -> float:
    return client.app[METRICS].registry.get_sample_value(name, labels) or 0.0


def _bad_token(user: str = "alice") -> str:
    """Signed with a secret the router does not have."""
    now = int(time.time())
    claims = {
        "sub": user,
        "department": "cardiology",
        "roles": ["clinician"],
        "iss": "fdp-test",
        "aud": "fdp-router-test",
        "iat": now,
        "exp": now + 600,
    }
    return jwt.encode(claims, b"guessed-" + b"k" * 40, algorithm="HS256")


async def _ask(client: Any, tok: str, tag: object, **headers: str) -> Any:
    return await client.post(
        "/v1/inference",
        json={"prompt": q(tag), "privacy_budget": 0.01},
        headers={**auth(tok), **headers},
    )


# --- the buckets, with a hand-driven clock ---------------------------------------------------


def test_a_bucket_allows_its_burst_then_its_rate_and_says_how_long_to_wait() -> None:
    b = KeyedBuckets(_bucket(2.0, 3))
    for _ in range(3):
        assert b.wait("u", 0.0) == 0.0
        b.take("u", 0.0)
    assert b.wait("u", 0.0) == 0.5  # one token every 0.5 s
    assert b.wait("u", 0.5) == 0.0
    assert b.wait("other", 0.0) == 0.0  # keys do not share
    assert retry_after_seconds(0.5) == 1 and retry_after_seconds(1.0) == 1 and retry_after_seconds(1.01) == 2


def test_a_refused_request_takes_from_neither_bucket() -> None:
    lim = RequestLimiter(_bucket(1.0, 2), _bucket(1.0, 3))
    assert lim.admit("a", "cardio", 0.0) is None
    assert lim.admit("b", "cardio", 0.0) is None
    assert lim.admit("a", "cardio", 0.0) is None
    # the department is empty: a third user of it waits, and user c's bucket is untouched
    assert lim.admit("c", "cardio", 0.0) == ("department", 1.0)
    assert lim.users.wait("c", 0.0) == 0.0
    assert lim.admit("a", "oncology", 0.0) == ("user", 1.0)  # a is empty, whatever the department
    assert lim.admit("d", "oncology", 0.0) is None  # another department is not starved


def test_disabled_buckets_never_limit_and_memory_stays_bounded() -> None:
    off = KeyedBuckets(_bucket(0, 0))
    for i in range(1000):
        off.take("u", 0.0)
    assert off.wait("u", 0.0) == 0.0 and len(off) == 0
    bounded = KeyedBuckets(_bucket(1.0, 1), max_keys=100)
    for i in range(10_000):  # a flood of distinct (claimed) subjects
        bounded.take(f"s{i}", 0.0)
    assert len(bounded) == 100


def test_failures_lock_out_a_client_until_its_bucket_refills() -> None:
    f = FailureLimiter(_bucket(0.5, 3), _bucket(0, 0))
    for _ in range(3):
        assert f.locked("1.2.3.4", "alice", 0.0) is None
        f.failed("1.2.3.4", "alice", 0.0)
    assert f.locked("1.2.3.4", None, 0.0) == ("client", 2.0)
    assert f.locked("5.6.7.8", "alice", 0.0) is None
    assert f.locked("1.2.3.4", None, 2.0) is None


# --- over HTTP -------------------------------------------------------------------------------


async def test_one_clinician_at_full_speed_cannot_starve_another_department(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    cfg = demo_cluster.config(
        rate_limits={"per_user": {"rate_per_second": 1, "burst": 10}},
        cache={"enabled": False},
    )
    client = await router(cfg)
    flooder = token(user="dr-flood", department="cardiology")
    other = token(user="dr-other", department="oncology")

    async def flood() -> list[int]:
        results = await asyncio.gather(*(_ask(client, flooder, f"flood-{i}") for i in range(60)))
        return [r.status for r in results]

    async def patient_user() -> list[int]:
        statuses = []
        for i in range(5):
            statuses.append((await _ask(client, other, f"other-{i}")).status)
        return statuses

    flooded, others = await asyncio.gather(flood(), patient_user())
    assert others == [200] * 5
    assert flooded.count(200) <= 11 and flooded.count(429) >= 49, flooded
    assert set(flooded) <= {200, 429}
    assert _sample(client, "fdp_rate_limited_total", {"scope": "user"}) == flooded.count(429)
    # nothing was charged for a refused request (read by an auditor: the flooder's own bucket
    # is empty, and a budget read is a request too)
    auditor = auth(token(user="audit", roles=["auditor"]))
    budget = await (await client.get("/v1/privacy/budget/dr-flood", headers=auditor)).json()
    # (the ledger reports its accounted epsilon: ~0.105 for ten 0.01 charges; all 60 would be > 0.6)
    assert budget["consumed_budget"] < 0.2


async def test_retry_after_is_honest_waiting_that_long_succeeds(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(demo_cluster.config(rate_limits={"per_user": {"rate_per_second": 1, "burst": 2}}))
    tok = token()
    assert (await _ask(client, tok, 1)).status == 200
    assert (await _ask(client, tok, 2)).status == 200
    r = await _ask(client, tok, 3)
    assert r.status == 429
    err = (await r.json())["error"]
    assert err["type"] == "rate_limited" and err["scope"] == "user"
    wait = int(r.headers["Retry-After"])
    assert wait == err["retry_after_seconds"] >= 1
    await asyncio.sleep(wait)
    assert (await _ask(client, tok, 4)).status == 200


async def test_a_department_limit_covers_all_its_users(router: RouterFactory, demo_cluster: Cluster) -> None:
    client = await router(
        demo_cluster.config(rate_limits={"per_department": {"rate_per_second": 0.5, "burst": 3}})
    )
    for i in range(3):
        assert (await _ask(client, token(user=f"u{i}"), i)).status == 200
    r = await _ask(client, token(user="u9"), 9)
    assert r.status == 429 and (await r.json())["error"]["scope"] == "department"
    assert (await _ask(client, token(user="u9", department="oncology"), 10)).status == 200


async def test_repeated_bad_tokens_from_one_address_are_locked_out_but_a_verified_session_stays(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(
        demo_cluster.config(rate_limits={"failed_auth_per_client": {"rate_per_second": 1, "burst": 5}})
    )
    session = token(user="dr-established")
    assert (await _ask(client, session, "before")).status == 200  # verified before the attack
    for i in range(5):
        r = await _ask(client, _bad_token(f"victim-{i}"), i)
        assert r.status == 401 and (await r.json())["error"]["reason"] == "signature"
    r = await _ask(client, _bad_token(), "locked")
    assert r.status == 429
    err = (await r.json())["error"]
    assert err["scope"] == "auth_client" and int(r.headers["Retry-After"]) >= 1
    # a token this router has not verified yet is not even looked at from a locked address ...
    fresh = token(user="dr-new")
    assert (await _ask(client, fresh, "new")).status == 429
    # ... but a session it already verified keeps working
    assert (await _ask(client, session, "during")).status == 200
    assert _sample(client, "fdp_auth_failures_total", {"reason": "signature"}) == 5
    assert _sample(client, "fdp_auth_lockouts_total", {"scope": "client"}) == 2
    await asyncio.sleep(int(r.headers["Retry-After"]))
    assert (await _ask(client, fresh, "after")).status == 200


async def test_repeated_bad_tokens_for_one_subject_lock_out_that_subject_only(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(
        demo_cluster.config(rate_limits={"failed_auth_per_subject": {"rate_per_second": 0.1, "burst": 3}})
    )
    alice_session = token(user="alice", ttl_seconds=600)
    assert (await _ask(client, alice_session, "before")).status == 200
    for i in range(3):
        assert (await _ask(client, _bad_token("alice"), i)).status == 401
    r = await _ask(client, _bad_token("alice"), "locked")
    assert r.status == 429 and (await r.json())["error"]["scope"] == "auth_subject"
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    # a new token claiming alice waits too; bob is not affected; alice's session stays
    assert (await _ask(client, token(user="alice", ttl_seconds=601), "new")).status == 429
    assert (await _ask(client, token(user="bob"), "bob")).status == 200
    assert (await _ask(client, alice_session, "during")).status == 200
    assert _sample(client, "fdp_auth_lockouts_total", {"scope": "subject"}) == 2


async def test_the_lockout_follows_the_configured_proxy_header(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(
        demo_cluster.config(
            rate_limits={
                "failed_auth_per_client": {"rate_per_second": 0.1, "burst": 2},
                "client_address_header": "X-Forwarded-For",
            }
        )
    )
    # the last entry is the one the ingress appended: a client cannot choose it
    attacker = {"X-Forwarded-For": "203.0.113.9, 10.0.0.1"}
    for i in range(2):
        assert (await _ask(client, _bad_token(), i, **attacker)).status == 401
    assert (await _ask(client, token(), "a", **attacker)).status == 429
    assert (await _ask(client, token(), "b", **{"X-Forwarded-For": "10.0.0.2"})).status == 200


async def test_missing_tokens_are_counted_but_lock_nobody_out(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    client = await router(
        demo_cluster.config(rate_limits={"failed_auth_per_client": {"rate_per_second": 0.1, "burst": 1}})
    )
    for _ in range(3):
        r = await client.post("/v1/inference", json={"prompt": q()})
        assert r.status == 401 and (await r.json())["error"]["reason"] == "missing_token"
    assert (await _ask(client, token(), "ok")).status == 200
    assert _sample(client, "fdp_auth_failures_total", {"reason": "missing_token"}) == 3


async def test_limits_follow_a_config_reload_and_survive_one_that_does_not_change_them(
    router: RouterFactory, demo_cluster: Cluster
) -> None:
    from fdp_router.runtime import apply_config

    limited = demo_cluster.config(rate_limits={"per_user": {"rate_per_second": 0.1, "burst": 1}})
    client = await router(limited)
    tok = token()
    assert (await _ask(client, tok, 1)).status == 200
    assert (await _ask(client, tok, 2)).status == 429
    await apply_config(client.app, limited.model_copy(update={"cache": limited.cache.model_copy()}))
    assert (await _ask(client, tok, 3)).status == 429  # same limits: the same, empty bucket
    await apply_config(client.app, demo_cluster.config(rate_limits={"per_user": OFF}))
    assert (await _ask(client, tok, 4)).status == 200
    assert client.app[GUARD].requests.users.enabled is False
