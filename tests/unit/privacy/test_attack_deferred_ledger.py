"""Attacks on the deferred commit default and the one-snapshot `ledger verify` (2618d61),
on SQLite and PostgreSQL. Each test is a control that held: its docstring says what it
tries.

- A queued (deferred) commit followed at once by a refund of the same reservation (what a
  request path cancelled between its commit and its return would send): the refund must not
  win, whatever batch the two land in.
- The same reservation committed twice while the first commit is still queued: settled once,
  one commit record, no refund, the trail still verifies.
- close() while the writer is *holding* deferred records (the 50 ms wait for company): every
  one is written; a commit after close() raises and refunds nothing.
- verify held open (mid-read, its snapshot taken) while the router reserves, commits and
  refunds: writers are not blocked by verify's snapshot, and verify does not report the
  writes that landed after its snapshot as tampering.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from fdp_router.privacy.api import PrivacyError, Scope, UnknownReservation
from fdp_router.privacy.audit import parse_keyring, unseal
from fdp_router.privacy.ledger import open_ledger, verify, verify_ledger
from fdp_router.privacy.ledger.core import AUDIT_COLUMNS

from .conftest import LedgerEnv, policy_admitting
from .test_ledger_contract import _charge, _driver, _rows


def _deferred(env: LedgerEnv):
    return env.ledger_cfg.model_copy(update={"commit_mode": "deferred"})


def _states(env: LedgerEnv) -> dict[str, str]:
    return {str(r[0]): str(r[1]) for r in _rows(env, "SELECT id, state FROM fdp_reservations")}


def _records(env: LedgerEnv) -> list[dict[str, object]]:
    keyring = parse_keyring(env.key_file.read_text(), "k")
    rows = _rows(env, f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit ORDER BY seq")
    out = []
    for row in rows:
        rec = dict(zip(AUDIT_COLUMNS, row, strict=True))
        out.append({"kind": rec["kind"], "rid": rec["reservation_id"], **unseal(keyring, rec)})
    return out


async def test_a_refund_sent_right_after_a_queued_commit_never_wins(ledger_env: LedgerEnv) -> None:
    """Attack: commit (deferred: queued, not awaited, the answer leaves) then release of the
    same id before the commit record was written. Both land in one batch (the writer holds
    the deferred record for company) or the refund lands later: either way the reservation
    must end committed, the refund refused, the user's budget still charged."""
    cfg = policy_admitting(20)
    ledger = await open_ledger(_deferred(ledger_env), cfg)
    try:
        ids = []
        for i in range(5):
            r = await ledger.reserve(_charge(cfg), ("node-a",))
            ids.append(r.id)
            await ledger.commit(r.id, ("node-a",))
            if i % 2:
                await asyncio.sleep(0.08)  # the held record went alone first
            with pytest.raises(UnknownReservation):
                await ledger.release(r.id)
        st = await ledger.budget(Scope.USER, "alice")
        assert st.extra["queries"] == 5.0
    finally:
        await ledger.close()
    assert _states(ledger_env) == dict.fromkeys(ids, "committed")
    assert not [r for r in _records(ledger_env) if r["kind"] == "release"]
    assert verify_ledger(_driver(ledger_env), parse_keyring(ledger_env.key_file.read_text(), "k")).ok


async def test_a_commit_queued_twice_settles_once(
    ledger_env: LedgerEnv, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: double-settle through the queue (the same id committed twice while the first
    record is still held). One commit record, state committed, nothing refunded; the
    duplicate is logged and the trail verifies."""
    cfg = policy_admitting(20)
    ledger = await open_ledger(_deferred(ledger_env), cfg)
    try:
        r = await ledger.reserve(_charge(cfg), ("node-a",))
        await ledger.commit(r.id, ("node-a",))
        await ledger.commit(r.id, ("node-b",))
        await asyncio.sleep(0.15)
        assert (await ledger.budget(Scope.USER, "alice")).extra["queries"] == 1.0
    finally:
        await ledger.close()
    commits = [rec for rec in _records(ledger_env) if rec["kind"] == "commit"]
    assert [(c["rid"], c["nodes"]) for c in commits] == [(r.id, ["node-a"])]
    assert _states(ledger_env) == {r.id: "committed"}
    assert "deferred commit failed" in caplog.text
    assert verify_ledger(_driver(ledger_env), parse_keyring(ledger_env.key_file.read_text(), "k")).ok


async def test_close_while_the_writer_holds_deferred_records_loses_none(ledger_env: LedgerEnv) -> None:
    """Attack: a clean shutdown / hot reload (close()) inside the writer's 50 ms wait for
    company, with many commits held; then a late commit of an open reservation after close.
    Every held record is written, each names its node (reserve and commit record); the late
    commit raises and its reservation stays reserved (spent), never released."""
    cfg = policy_admitting(200)
    ledger = await open_ledger(_deferred(ledger_env), cfg)
    res = [await ledger.reserve(_charge(cfg), (f"node-{i}",)) for i in range(40)]
    late = await ledger.reserve(_charge(cfg), ("node-late",))
    for i, r in enumerate(res):
        await ledger.commit(r.id, (f"node-{i}",))
    await asyncio.sleep(0.01)  # the writer now holds them (<= 50 ms)
    await ledger.close()
    with pytest.raises(PrivacyError):
        await ledger.commit(late.id, ("node-late",))
    states = _states(ledger_env)
    assert {rid: states[rid] for rid in (r.id for r in res)} == dict.fromkeys(
        (r.id for r in res), "committed"
    )
    assert states[late.id] == "reserved"
    recs = _records(ledger_env)
    by_kind: dict[str, dict[object, object]] = {}
    for rec in recs:
        by_kind.setdefault(str(rec["kind"]), {})[rec["rid"]] = rec["nodes"]
    assert set(by_kind) == {"reserve", "commit"}
    assert by_kind["reserve"][late.id] == ["node-late"]
    for i, r in enumerate(res):
        assert by_kind["reserve"][r.id] == by_kind["commit"][r.id] == [f"node-{i}"]
    assert verify_ledger(_driver(ledger_env), parse_keyring(ledger_env.key_file.read_text(), "k")).ok


async def test_verify_holding_its_snapshot_blocks_no_writer_and_reports_no_false_tampering(
    ledger_env: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack on the snapshot change: hold `ledger verify` after it read the trail and
    before it reads the reservation and unit rows (the exact gap of the old bug), and let
    the router commit, refund and reserve meanwhile, in both commit modes. The writes must
    finish promptly (verify's REPEATABLE READ READ ONLY / SQLite BEGIN takes no lock writers
    wait for), and verify must still pass (it sees one moment)."""
    cfg = policy_admitting(200)
    keyring = parse_keyring(ledger_env.key_file.read_text(), "k")
    ledger = await open_ledger(_deferred(ledger_env), cfg)
    durable = await open_ledger(ledger_env.ledger_cfg.model_copy(update={"commit_mode": "durable"}), cfg)
    try:
        open_res = [await ledger.reserve(_charge(cfg), ("node-a",)) for _ in range(6)]
        await ledger.commit(open_res[0].id, ("node-a",))
        await asyncio.sleep(0.1)
        entered, go = threading.Event(), threading.Event()
        real = verify._check_rows

        def held_check_rows(*args, **kw):
            entered.set()
            assert go.wait(30)
            return real(*args, **kw)

        monkeypatch.setattr(verify, "_check_rows", held_check_rows)
        job = asyncio.create_task(asyncio.to_thread(verify_ledger, _driver(ledger_env), keyring))
        assert await asyncio.to_thread(entered.wait, 30)
        t0 = time.monotonic()
        await durable.commit(open_res[1].id, ("node-a",))
        await ledger.commit(open_res[2].id, ("node-a",))
        await ledger.release(open_res[3].id)
        more = await ledger.reserve(_charge(cfg), ("node-b",))
        await durable.commit(more.id, ("node-b",))
        await durable.check()
        took = time.monotonic() - t0
        go.set()
        result = await job
        assert took < 1.5, f"writers waited {took:.2f} s for verify's snapshot"
        assert result.ok, result
        assert verify_ledger(_driver(ledger_env), keyring).ok
    finally:
        await ledger.close()
        await durable.close()
