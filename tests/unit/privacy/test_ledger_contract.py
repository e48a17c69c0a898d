"""The ledger contract, run against every backend (SQLite and a real PostgreSQL).

reserve -> commit / release semantics, the three budgets, windows, no overspend under many
concurrent tasks, nothing recorded on refusal, the audit chain (encrypted, verifiable, key
rotation).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sqlite3
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from fdp_router.config import PrivacyConfig
from fdp_router.privacy import filter as flt
from fdp_router.privacy.api import BudgetExceeded, Charge, InvalidPrivacyRequest, Scope, UnknownReservation
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger, verify_ledger
from fdp_router.privacy.ledger.postgres import PostgresDriver
from fdp_router.privacy.ledger.sqlite import SqliteDriver

from .conftest import LedgerEnv, policy_admitting


def _driver(env: LedgerEnv):
    if env.backend == "sqlite":
        return SqliteDriver(env.ledger_cfg.sqlite_path)
    return PostgresDriver(env.dsn)


def _rows(env: LedgerEnv, sql: str) -> list[tuple]:
    if env.backend == "sqlite":
        with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(env.dsn) as conn:
        return conn.execute(sql).fetchall()


def _charge(cfg: PrivacyConfig, user: str = "alice", dept: str = "cardiology", hospitals=("h1",), eps=None):
    return Charge(
        user_id=user,
        department=dept,
        hospitals=hospitals,
        event=event_for_request(cfg, eps),
        query_hash="qh-" + user,
        request_id="r1",
    )


async def test_reservation_reports_the_users_remaining_budget(ledger_env: LedgerEnv) -> None:
    """The remaining budget computed inside the reservation's transaction is what a budget
    read says afterwards (the router answers with it instead of a second read)."""
    cfg = policy_admitting(5)
    ledger = await ledger_env.open(cfg)
    try:
        r1 = await ledger.reserve(_charge(cfg))
        st = await ledger.budget(Scope.USER, "alice")
        assert r1.user_remaining_epsilon is not None
        assert r1.user_remaining_epsilon == pytest.approx(st.remaining_epsilon, rel=1e-12, abs=1e-12)
        assert r1.user_remaining_epsilon < st.total_epsilon
        await ledger.commit(r1.id, ("node-a",))  # committing spends nothing more
        assert (await ledger.budget(Scope.USER, "alice")).remaining_epsilon == pytest.approx(
            r1.user_remaining_epsilon, rel=1e-12, abs=1e-12
        )
        # another user's spend in the same batch does not leak into alice's figure
        r2, r3 = await asyncio.gather(ledger.reserve(_charge(cfg)), ledger.reserve(_charge(cfg, user="bob")))
        assert r2.user_remaining_epsilon == pytest.approx(
            (await ledger.budget(Scope.USER, "alice")).remaining_epsilon, rel=1e-12, abs=1e-12
        )
        assert r2.user_remaining_epsilon < r1.user_remaining_epsilon
        assert r3.user_remaining_epsilon == pytest.approx(
            (await ledger.budget(Scope.USER, "bob")).remaining_epsilon, rel=1e-12, abs=1e-12
        )
        await ledger.release(r2.id)
        assert (await ledger.budget(Scope.USER, "alice")).remaining_epsilon == pytest.approx(
            r1.user_remaining_epsilon, rel=1e-9, abs=1e-12
        )
    finally:
        await ledger.close()


async def test_reserve_commit_release_semantics(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(5)
    ledger = await ledger_env.open(cfg)
    try:
        r1 = await ledger.reserve(_charge(cfg))
        assert r1.epsilon == pytest.approx(0.5, rel=1e-3) and r1.delta == cfg.delta
        after_one = await ledger.budget(Scope.USER, "alice")
        assert after_one.consumed_epsilon > 0 and after_one.extra["queries"] == 1
        await ledger.commit(r1.id, ("node-a",))
        with pytest.raises(UnknownReservation):
            await ledger.commit(r1.id)  # settled once only
        with pytest.raises(UnknownReservation):
            await ledger.release(r1.id)  # a committed spend is never refunded
        r2 = await ledger.reserve(_charge(cfg))
        mid = await ledger.budget(Scope.USER, "alice")
        await ledger.release(r2.id)  # nothing reached the client: refunded
        after = await ledger.budget(Scope.USER, "alice")
        assert after.consumed_epsilon == pytest.approx(after_one.consumed_epsilon, rel=1e-9)
        assert mid.consumed_epsilon > after.consumed_epsilon
        with pytest.raises(UnknownReservation):
            await ledger.release("no-such-id")
        states = dict(_rows(ledger_env, "SELECT id, state FROM fdp_reservations"))
        assert states == {r1.id: "committed", r2.id: "released"}
    finally:
        await ledger.close()


async def test_budget_exhaustion_records_nothing(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(3)
    ledger = await ledger_env.open(cfg)
    try:
        for _ in range(3):
            await ledger.reserve(_charge(cfg))
        audit_before = _rows(ledger_env, "SELECT count(*) FROM fdp_audit")[0][0]
        with pytest.raises(BudgetExceeded) as info:
            await ledger.reserve(_charge(cfg))
        assert info.value.scope == Scope.USER and info.value.key == "alice"
        assert info.value.requested == pytest.approx(0.5, rel=1e-3)
        assert _rows(ledger_env, "SELECT count(*) FROM fdp_audit")[0][0] == audit_before
        assert _rows(ledger_env, "SELECT count(*) FROM fdp_reservations")[0][0] == 3
        status = await ledger.budget(Scope.USER, "alice")
        assert status.extra["queries_remaining_at_default_epsilon"] == 0
        assert 0 <= status.remaining_epsilon < status.total_epsilon
        # another user is unaffected
        await ledger.reserve(_charge(cfg, user="bob"))
    finally:
        await ledger.close()


async def test_department_and_hospital_budgets_also_bind(ledger_env: LedgerEnv) -> None:
    base = policy_admitting(50)
    data = base.model_dump()
    one = flt.rdp_curve(event_for_request(base, None))
    dept_budget = (
        flt.filter_epsilon([2 * c for c in one], base.delta)
        + flt.filter_epsilon([3 * c for c in one], base.delta)
    ) / 2
    data["budgets"]["per_department"] = dept_budget
    cfg = PrivacyConfig.model_validate(data)
    ledger = await ledger_env.open(cfg)
    try:
        await ledger.reserve(_charge(cfg, user="u1"))
        await ledger.reserve(_charge(cfg, user="u2"))
        with pytest.raises(BudgetExceeded) as info:
            await ledger.reserve(_charge(cfg, user="u3"))
        assert info.value.scope == Scope.DEPARTMENT and info.value.key == "cardiology"
        # user u3 was not charged by the refused request
        assert (await ledger.budget(Scope.USER, "u3")).consumed_epsilon == 0
        # hospital budget: same idea, through another department
        data2 = base.model_dump()
        data2["budgets"]["per_hospital"] = dept_budget
        cfg2 = PrivacyConfig.model_validate(data2)
    finally:
        await ledger.close()
    ledger = await ledger_env.open(cfg2)
    try:
        await ledger.reserve(_charge(cfg2, user="v1", dept="d1", hospitals=("hx",)))
        await ledger.reserve(_charge(cfg2, user="v2", dept="d2", hospitals=("hx", "hy")))
        with pytest.raises(BudgetExceeded) as info:
            await ledger.reserve(_charge(cfg2, user="v3", dept="d3", hospitals=("hy", "hx")))
        assert info.value.scope == Scope.HOSPITAL and info.value.key == "hx"
    finally:
        await ledger.close()


async def test_period_window_refreshes_and_states_the_window(ledger_env: LedgerEnv) -> None:
    clock = [datetime(2026, 1, 1, 10, 0, tzinfo=UTC)]
    cfg = policy_admitting(2, window={"kind": "period", "period_seconds": 86400})
    ledger = await ledger_env.open(cfg, now=lambda: clock[0])
    try:
        await ledger.reserve(_charge(cfg))
        await ledger.reserve(_charge(cfg))
        with pytest.raises(BudgetExceeded):
            await ledger.reserve(_charge(cfg))
        status = await ledger.budget(Scope.USER, "alice")
        assert status.window_start == datetime(2026, 1, 1, tzinfo=UTC)
        assert status.window_end == datetime(2026, 1, 2, tzinfo=UTC)
        assert "per 24h window" in status.guarantee
        clock[0] += timedelta(days=1)
        r = await ledger.reserve(_charge(cfg))  # next window: fresh budget
        assert (await ledger.budget(Scope.USER, "alice")).extra["queries"] == 1
        clock[0] += timedelta(days=1)
        await ledger.release(r.id)  # refund goes to the reservation's own window
        clock[0] -= timedelta(days=1)
        assert (await ledger.budget(Scope.USER, "alice")).extra["queries"] == 0
    finally:
        await ledger.close()


async def test_concurrent_tasks_never_overspend(ledger_env: LedgerEnv) -> None:
    m = 12
    cfg = policy_admitting(m)
    ledger = await ledger_env.open(cfg)
    try:

        async def attempt() -> bool:
            try:
                await ledger.reserve(_charge(cfg))
                return True
            except BudgetExceeded:
                return False

        results = await asyncio.gather(*(attempt() for _ in range(200)))
        assert sum(results) == m
        assert _rows(ledger_env, "SELECT count(*) FROM fdp_reservations")[0][0] == m
    finally:
        await ledger.close()


async def test_bad_charges_are_rejected_and_record_nothing(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(3)
    ledger = await ledger_env.open(cfg)
    try:
        good = _charge(cfg)
        bad = [
            Charge("", "d", ("h",), good.event),
            Charge("u", " ", ("h",), good.event),
            Charge("u", "d", ["h"], good.event),  # type: ignore[arg-type]
            Charge("u", "d", ("h",), object()),
            Charge("u", "d", ("h",), "gaussian"),
        ]
        for charge in bad:
            with pytest.raises(InvalidPrivacyRequest):
                await ledger.reserve(charge)
        assert _rows(ledger_env, "SELECT count(*) FROM fdp_audit")[0][0] == 0
        assert _rows(ledger_env, "SELECT count(*) FROM fdp_units")[0][0] == 0
    finally:
        await ledger.close()


async def test_audit_is_encrypted_chained_and_verifiable(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(5)
    ledger = await ledger_env.open(cfg)
    try:
        r = await ledger.reserve(_charge(cfg, user="dr-secret-name", dept="oncology-ward-7"))
        await ledger.commit(r.id, ("node-zz",))
        r2 = await ledger.reserve(_charge(cfg, user="dr-secret-name", dept="oncology-ward-7"))
        await ledger.release(r2.id)
    finally:
        await ledger.close()
    audit = _rows(ledger_env, "SELECT seq, kind, ciphertext FROM fdp_audit ORDER BY seq")
    assert [a[1] for a in audit] == ["reserve", "commit", "reserve", "release"]
    dump = json.dumps([list(map(str, a)) for a in audit])
    assert "dr-secret-name" not in dump and "oncology" not in dump and "node-zz" not in dump
    keyring = parse_keyring(ledger_env.key_file.read_text(), "test")
    assert verify_ledger(_driver(ledger_env), keyring).ok
    wrong = parse_keyring(f"k1 {secrets.token_hex(32)}", "test")
    bad = verify_ledger(_driver(ledger_env), wrong)
    assert not bad.ok and bad.first_bad_seq == 1


async def test_audit_key_rotation(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(5)
    ledger = await ledger_env.open(cfg)
    try:
        await ledger.reserve(_charge(cfg))
    finally:
        await ledger.close()
    old = ledger_env.key_file.read_text()
    ledger_env.key_file.write_text(old + f"k2 {secrets.token_hex(32)}\n")  # rotate: k2 active
    ledger = await ledger_env.open(cfg)
    try:
        await ledger.reserve(_charge(cfg))
    finally:
        await ledger.close()
    assert [r[0] for r in _rows(ledger_env, "SELECT key_id FROM fdp_audit ORDER BY seq")] == ["k1", "k2"]
    both = parse_keyring(ledger_env.key_file.read_text(), "test")
    assert verify_ledger(_driver(ledger_env), both).ok
    only_new = parse_keyring(ledger_env.key_file.read_text().splitlines()[1], "test")
    result = verify_ledger(_driver(ledger_env), only_new)
    assert not result.ok and result.first_bad_seq == 1 and "unknown key id" in result.reason


async def test_winning_budget_back_by_editing_unit_rows_is_detected(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(5)
    ledger = await ledger_env.open(cfg)
    try:
        for _ in range(3):
            await ledger.reserve(_charge(cfg))
        r = await ledger.reserve(_charge(cfg))
        await ledger.release(r.id)
    finally:
        await ledger.close()
    keyring = parse_keyring(ledger_env.key_file.read_text(), "test")
    assert verify_ledger(_driver(ledger_env), keyring).ok  # releases replay correctly
    zero = json.dumps(list(flt.zero()))
    sql = f"UPDATE fdp_units SET rdp = '{zero}', n_queries = 0 WHERE scope = 'user'"
    if ledger_env.backend == "sqlite":
        with sqlite3.connect(ledger_env.ledger_cfg.sqlite_path) as conn:
            conn.execute(sql)
    else:
        with psycopg.connect(ledger_env.dsn, autocommit=True) as conn:
            conn.execute(sql)
    result = verify_ledger(_driver(ledger_env), keyring)
    assert not result.ok
    assert "unit user 'alice'" in result.reason and "replays to 3" in result.reason


async def test_a_release_frees_room_for_exactly_one_more_even_within_one_batch(ledger_env: LedgerEnv) -> None:
    cfg = policy_admitting(4)
    ledger = await ledger_env.open(cfg)
    try:
        held = [await ledger.reserve(_charge(cfg)) for _ in range(4)]

        async def attempt() -> bool:
            try:
                await ledger.reserve(_charge(cfg))
                return True
            except BudgetExceeded:
                return False

        # enqueued in this order, so typically applied in one writer batch: release, then reserves
        outcome = await asyncio.gather(ledger.release(held[0].id), attempt(), attempt(), attempt())
        assert sum(outcome[1:]) == 1
        assert (await ledger.budget(Scope.USER, "alice")).extra["queries"] == 4
    finally:
        await ledger.close()


async def test_a_consensus_vote_is_charged_at_its_exact_epsilon(ledger_env: LedgerEnv) -> None:
    import math

    from fdp_router.privacy.events import gnmax_event
    from fdp_router.privacy.mechanisms import epsilon_for_sigma

    cfg = policy_admitting(5)
    ledger = await ledger_env.open(cfg)
    try:
        charge = Charge("alice", "cardiology", ("h1", "h2", "h3"), gnmax_event(8.0))
        r = await ledger.reserve(charge)
        assert r.epsilon == pytest.approx(epsilon_for_sigma(8.0 / math.sqrt(2), cfg.delta), rel=1e-9)
        for scope, key in ((Scope.USER, "alice"), (Scope.HOSPITAL, "h2")):
            assert (await ledger.budget(scope, key)).extra["queries"] == 1
    finally:
        await ledger.close()


async def test_two_ledgers_on_one_store_see_each_others_spends(ledger_env: LedgerEnv) -> None:
    """Each ledger keeps unit states between its batches; a write by another ledger (process,
    replica, or the old runtime during a hot reload) must invalidate them, or the two would
    each admit up to the budget. Alternating single reservations hit exactly that case."""
    m = 6
    cfg = policy_admitting(m)
    first, second = await ledger_env.open(cfg), await ledger_env.open(cfg)
    try:
        admitted = 0
        for i in range(2 * m):
            try:
                await (first if i % 2 == 0 else second).reserve(_charge(cfg))
                admitted += 1
            except BudgetExceeded:
                pass
        assert admitted == m
        released = await first.reserve(_charge(cfg, user="bob"))  # other user: fits
        await first.release(released.id)
        assert (await second.budget(Scope.USER, "alice")).remaining_epsilon < cfg.budgets.per_user / m
        assert _rows(ledger_env, "SELECT count(*) FROM fdp_reservations WHERE state='reserved'")[0][0] == m
    finally:
        await first.close()
        await second.close()


async def test_deferred_commit_does_not_wait_and_close_drains_it(
    ledger_env: LedgerEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """commit_mode=deferred: the reservation (the spend) is durable before reserve() returns,
    as always; commit() only queues its record. Shown by holding the store's write lock from
    outside: a durable commit would block, a deferred one returns at once, and close() still
    writes it once the lock is free."""
    cfg = policy_admitting(5)
    deferred = ledger_env.ledger_cfg.model_copy(update={"commit_mode": "deferred"})
    ledger = await open_ledger(deferred, cfg)
    try:
        res = await ledger.reserve(_charge(cfg))
        spent = (await ledger.budget(Scope.USER, "alice")).consumed_epsilon
        assert spent > 0
        if ledger_env.backend == "sqlite":
            blocker = sqlite3.connect(ledger_env.ledger_cfg.sqlite_path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
        else:
            blocker = psycopg.connect(ledger_env.dsn)
            blocker.execute("SELECT seq FROM fdp_head WHERE id = 1 FOR UPDATE")
        try:
            await asyncio.wait_for(ledger.commit(res.id, ("node-a",)), timeout=2.0)
            await ledger.commit("no-such-id")  # its failure can only be logged
            assert dict(_rows(ledger_env, "SELECT id, state FROM fdp_reservations")) == {res.id: "reserved"}
        finally:
            blocker.rollback() if ledger_env.backend == "postgres" else blocker.execute("ROLLBACK")
            blocker.close()
        assert (await ledger.budget(Scope.USER, "alice")).consumed_epsilon == pytest.approx(spent, rel=1e-12)
        # With no other traffic to ride with, the held record goes on its own (<= 50 ms).
        for _ in range(100):
            if dict(_rows(ledger_env, "SELECT id, state FROM fdp_reservations")) == {res.id: "committed"}:
                break
            await asyncio.sleep(0.02)
        assert dict(_rows(ledger_env, "SELECT id, state FROM fdp_reservations")) == {res.id: "committed"}
        deferred_again = await ledger.reserve(_charge(cfg))
        await ledger.commit(deferred_again.id, ("node-b",))  # written by close() at the latest
    finally:
        await ledger.close()
    states = dict(_rows(ledger_env, "SELECT id, state FROM fdp_reservations"))
    assert states == {res.id: "committed", deferred_again.id: "committed"}
    assert "deferred commit failed" in caplog.text
    assert verify_ledger(_driver(ledger_env), parse_keyring(ledger_env.key_file.read_text(), "k")).ok


async def test_the_reserve_record_names_the_nodes_about_to_be_asked(ledger_env: LedgerEnv) -> None:
    """DESIGN: every charge is an audit record naming its node(s). The reservation's record
    carries them, so the trail names who was asked even when the commit record is deferred
    and lost in a crash; a reservation made without nodes says so with an empty list."""
    from fdp_router.privacy.audit import unseal
    from fdp_router.privacy.ledger.core import AUDIT_COLUMNS

    cfg = policy_admitting(5)
    ledger = await open_ledger(ledger_env.ledger_cfg, cfg)
    try:
        asked = await ledger.reserve(_charge(cfg), ("node-a", "node-b"))
        bare = await ledger.reserve(_charge(cfg))
    finally:
        await ledger.close()
    keyring = parse_keyring(ledger_env.key_file.read_text(), "k")
    rows = _rows(ledger_env, f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit WHERE kind = 'reserve'")
    nodes = {
        rec["reservation_id"]: unseal(keyring, rec)["nodes"]
        for rec in (dict(zip(AUDIT_COLUMNS, row, strict=True)) for row in rows)
    }
    assert nodes == {asked.id: ["node-a", "node-b"], bare.id: []}
    assert verify_ledger(_driver(ledger_env), keyring).ok


async def test_verify_of_a_live_ledger_reads_one_snapshot(ledger_env: LedgerEnv) -> None:
    """`ledger verify` beside a router that keeps writing: each check reads the audit trail,
    the reservations and the units of one moment, so a commit landing between two of its
    reads is never reported as a reservation its records do not explain."""
    cfg = policy_admitting(10_000)
    ledger = await open_ledger(ledger_env.ledger_cfg.model_copy(update={"commit_mode": "durable"}), cfg)
    keyring = parse_keyring(ledger_env.key_file.read_text(), "k")
    stop = asyncio.Event()
    batches = 0

    async def traffic() -> None:
        nonlocal batches
        while not stop.is_set():
            res = await asyncio.gather(*(ledger.reserve(_charge(cfg)) for _ in range(8)))
            await asyncio.gather(*(ledger.commit(r.id, ("n",)) for r in res))
            batches += 1

    task = asyncio.create_task(traffic())
    try:
        while batches == 0 and not task.done():
            await asyncio.sleep(0.01)
        first = batches
        results = []
        # at least 25 checks, and the ledger moving under them (bounded: a stuck ledger fails)
        while (len(results) < 25 or batches < first + 10) and len(results) < 500 and not task.done():
            results.append(await asyncio.to_thread(verify_ledger, _driver(ledger_env), keyring))
        bad = [r for r in results if not r.ok]
        assert not bad, bad[0]
        assert batches >= first + 10 and results[-1].checked > results[0].checked
    finally:
        stop.set()
        await task
        await ledger.close()
