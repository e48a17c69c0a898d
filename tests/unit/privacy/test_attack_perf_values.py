"""Attacks on the privacy core's cheaper values (6d8a097 window cache, 401060f NamedTuples).
Each test is a control that held.

- window_of's one-entry cache (module-global, shared with the writer thread): across window
  boundaries (±1 µs), a clock that goes backwards, times before the epoch, non-UTC and naive
  datetimes, two policies with different periods interleaved, and many threads with different
  periods at once, every answer is the window the previous formula gave (a charge booked to
  the wrong window would be charged against the wrong budget).
- A ledger whose clock crosses a window boundary and goes back: each reservation is booked to
  (and refused by) the budget of its own window.
- Charge/Reservation as NamedTuples: a plain tuple (or list hospitals) with the same fields is
  still refused by validate_charge, a Charge equal to a tuple does not fool the ledger, and two
  charges differing only in their event's type keep different costs (no cache collision).
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from fdp_router.config import PrivacyConfig
from fdp_router.privacy import events as ev
from fdp_router.privacy.api import BudgetExceeded, Charge, InvalidPrivacyRequest
from fdp_router.privacy.ledger.core import _event_json, event_cost, validate_charge
from fdp_router.privacy.policy import window_of

from .conftest import LedgerEnv, policy_admitting

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _cfg(period: int | None) -> PrivacyConfig:
    base = PrivacyConfig().model_dump()
    base["window"] = {"kind": "period", "period_seconds": period} if period else {"kind": "lifetime"}
    return PrivacyConfig.model_validate(base)


def old_window(period: int | None, now: datetime) -> tuple:
    """window_of as at d747923: (id, start, end)."""
    if period is None:
        return (0, None, None)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    wid = int((now - EPOCH).total_seconds()) // period
    start = EPOCH + timedelta(seconds=wid * period)
    return (wid, start, start + timedelta(seconds=period))


def _times(rng: random.Random, period: int) -> list[datetime]:
    base = datetime(2026, 11, 30, tzinfo=UTC)
    edge = EPOCH + timedelta(seconds=(int((base - EPOCH).total_seconds()) // period + 1) * period)
    out = [edge + timedelta(microseconds=d) for d in (-1, 0, 1, -1, 0)]  # back and forth
    out += [edge - timedelta(seconds=period), edge + timedelta(seconds=period * 3), edge]
    out += [EPOCH - timedelta(seconds=0.5), EPOCH - timedelta(seconds=period + 1), EPOCH]
    out += [(edge + timedelta(microseconds=-1)).astimezone(timezone(timedelta(hours=-5)))]
    out += [edge.replace(tzinfo=None) - timedelta(microseconds=1), edge.replace(tzinfo=None)]
    out += [base + timedelta(seconds=rng.uniform(-1e7, 1e7)) for _ in range(50)]
    return out


def test_window_cache_matches_the_previous_formula_back_and_forth() -> None:
    rng = random.Random(30)
    periods = [60, 3600, 86_400, 7 * 86_400, 61]
    cfgs = {p: _cfg(p) for p in periods}
    life = _cfg(None)
    seq = [(p, t) for p in periods for t in _times(rng, p)]
    rng.shuffle(seq)
    seq += [(p, t) for p in periods for t in _times(rng, p)]  # each period in order as well
    for p, t in seq:
        w = window_of(cfgs[p], t)
        assert (w.id, w.start, w.end) == old_window(p, t), (p, t)
        other = periods[(periods.index(p) + 1) % len(periods)]
        w2 = window_of(cfgs[other], t)  # interleaved: the other policy's window, not the cache's
        assert (w2.id, w2.start, w2.end) == old_window(other, t), (other, t)
        wl = window_of(life, t)
        assert (wl.id, wl.start, wl.end) == (0, None, None)


def test_window_cache_across_threads_with_different_periods() -> None:
    periods = [60, 3600, 86_400, 61, 120]
    cfgs = {p: _cfg(p) for p in periods}
    errors: list[tuple] = []
    barrier = threading.Barrier(len(periods))

    def hammer(p: int) -> None:
        rng = random.Random(p)
        times = _times(rng, p)
        barrier.wait()
        for _ in range(40):
            for t in times:
                w = window_of(cfgs[p], t)
                if (w.id, w.start, w.end) != old_window(p, t):
                    errors.append((p, t, w))

    threads = [threading.Thread(target=hammer, args=(p,)) for p in periods]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


async def test_reservations_follow_their_window_when_the_clock_crosses_and_goes_back(
    ledger_env: LedgerEnv,
) -> None:
    """Budget of 2 per window. The clock: window A (2 admitted, the 3rd refused), window B
    (2 more admitted: a fresh budget), back to A (refused: A is spent; a stale cached B would
    admit it), forward to B (refused: B is spent)."""
    policy = PrivacyConfig.model_validate(
        {**policy_admitting(2).model_dump(), "window": {"kind": "period", "period_seconds": 3600}}
    )
    edge = datetime(2026, 11, 30, 1, 0, tzinfo=UTC)
    clock = {"now": edge - timedelta(microseconds=2)}
    ledger = await ledger_env.open(policy, now=lambda: clock["now"])
    charge = Charge("u", "d", ("h",), ev.event_for_request(policy, None), query_hash="q")
    try:

        async def admitted() -> bool:
            try:
                await ledger.reserve(charge)
                return True
            except BudgetExceeded:
                return False

        assert [await admitted() for _ in range(3)] == [True, True, False]
        clock["now"] = edge
        assert [await admitted() for _ in range(2)] == [True, True]
        clock["now"] = edge - timedelta(microseconds=1)
        assert await admitted() is False
        clock["now"] = edge + timedelta(microseconds=1)
        assert await admitted() is False
    finally:
        await ledger.close()


def test_a_plain_tuple_is_not_a_charge() -> None:
    policy = policy_admitting(3)
    charge = Charge("u", "d", ("h",), ev.event_for_request(policy, None), query_hash="q")
    validate_charge(charge)
    assert charge == tuple(charge)  # what a NamedTuple is; validate_charge must not care
    with pytest.raises(InvalidPrivacyRequest):
        validate_charge(tuple(charge))  # type: ignore[arg-type]
    with pytest.raises(InvalidPrivacyRequest):
        validate_charge(charge._replace(hospitals=["h"]))
    with pytest.raises(InvalidPrivacyRequest):
        validate_charge(charge._replace(user_id=" "))


def test_events_of_different_types_with_equal_fields_do_not_share_a_cache_entry() -> None:
    """The cost caches are keyed by the event: events stay dataclasses (type-aware equality),
    so a Gaussian and a Laplace of the same parameter never collide."""
    g = ev.GaussianEvent(1.0)
    lap = ev.LaplaceEvent(1.0)
    assert g != lap
    assert _event_json(g) != _event_json(lap)
    assert event_cost(_event_json(g)) != event_cost(_event_json(lap))
    a = Charge("u", "d", ("h",), g, query_hash="q")
    b = Charge("u", "d", ("h",), lap, query_hash="q")
    assert a != b
    assert len({a, b}) == 2
