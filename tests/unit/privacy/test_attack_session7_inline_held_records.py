"""Attacks on the idle fast path taking held deferred commit records (c2130f0, a235eee;
ledger/core.py `_run_inline`, `_settle_from`). Deterministic, one step at a time: a commit
record held by another thread's event loop, taken into this loop's inline reserve, must be
written once, its future settled on its own loop's thread (never on the inline caller's),
`_pending` back to 0; and records an inline batch could not run (another connection holds
the write lock) go back to be held and are written by the writer within its bound."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import pytest
from fdp_router.privacy.ledger import core
from fdp_router.privacy.ledger.core import SqlLedger

from .conftest import LedgerEnv, policy_admitting
from .test_attack_deferred_ledger import _records, _states
from .test_idle_deferred_inline import _writer_idle
from .test_ledger_contract import _charge


@pytest.fixture(autouse=True)
def _deferred_fast_path(ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    env = ledger_env_sqlite
    env.ledger_cfg = env.ledger_cfg.model_copy(update={"commit_mode": "deferred", "idle_fast_path": True})
    monkeypatch.setattr(core, "IDLE_STALL_SECONDS", 30.0)
    # The writer holds a record up to this long; long here so that the inline batch, not
    # the writer, is the one that takes it (the test then shortens nothing else).
    monkeypatch.setattr(core, "DEFERRED_MAX_DELAY_SECONDS", 2.0)


def _commits(env: LedgerEnv) -> dict[object, int]:
    out: dict[object, int] = {}
    for rec in _records(env):
        if rec["kind"] == "commit":
            out[rec["rid"]] = out.get(rec["rid"], 0) + 1
    return out


async def test_a_record_held_by_another_loop_is_settled_on_that_loops_thread(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_loop: list[str] = []
    orig_settle = core._settle

    def settle(items: Any) -> None:
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        for op, _v, _e in items:
            if op.future is not None and op.future.get_loop() is not here:
                wrong_loop.append(op.kind)
        orig_settle(items)

    monkeypatch.setattr(core, "_settle", settle)
    policy = policy_admitting(20)
    ledger: SqlLedger = await ledger_env_sqlite.open(policy)
    held = threading.Event()
    go_on = threading.Event()
    seen: dict[str, Any] = {}

    def other() -> None:
        async def run() -> None:
            r = await ledger.reserve(_charge(policy, user="bob"))
            await ledger.commit(r.id, ("n",))
            (op,) = list(ledger._deferred_ops)
            assert op.future is not None
            op.future.add_done_callback(lambda _f: seen.setdefault("settled_on", threading.get_ident()))
            seen["rid"], seen["thread"] = r.id, threading.get_ident()
            held.set()
            while not go_on.is_set() or not op.future.done():  # this loop stays alive and idle
                await asyncio.sleep(0.005)

        asyncio.run(run())

    t = threading.Thread(target=other)
    t.start()
    try:
        assert await asyncio.to_thread(held.wait, 10)
        await _writer_idle(ledger)
        took: list[int] = []
        orig = ledger._run_batch

        def run_batch(batch: Any, *args: Any, **kwargs: Any) -> bool:
            took.append(threading.get_ident())
            seen["batch"] = [op.kind for op in batch]
            return orig(batch, *args, **kwargs)

        ledger._run_batch = run_batch  # type: ignore[method-assign]
        mine = await ledger.reserve(_charge(policy))  # inline, on this thread, takes bob's record
        assert took == [threading.get_ident()] and seen["batch"] == ["commit", "reserve"]
        assert not ledger._deferred_ops
        go_on.set()
        await asyncio.to_thread(t.join, 10)
        assert not t.is_alive()
        assert seen["settled_on"] == seen["thread"] != threading.get_ident()
        assert wrong_loop == [], wrong_loop  # every future set on its own loop's thread
        await ledger.commit(mine.id, ("n",))
    finally:
        await ledger.close()
    assert _commits(ledger_env_sqlite) == {seen["rid"]: 1, mine.id: 1}
    assert _states(ledger_env_sqlite) == {seen["rid"]: "committed", mine.id: "committed"}
    assert ledger._pending == 0


async def test_records_an_inline_batch_could_not_run_are_held_again_and_written_in_time(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another connection holds the write lock: the inline reserve gives up (the writer
    thread waits for the lock), the record it took goes back, and once the lock is free it
    is written exactly once, within the writer's hold bound of the time it was first held."""
    monkeypatch.setattr(core, "DEFERRED_MAX_DELAY_SECONDS", 0.05)
    policy = policy_admitting(20)
    ledger: SqlLedger = await ledger_env_sqlite.open(policy)
    path = ledger_env_sqlite.ledger_cfg.sqlite_path
    try:
        r1 = await ledger.reserve(_charge(policy))
        await ledger.commit(r1.id, ("n",))
        await _writer_idle(ledger)
        blocker = sqlite3.connect(str(path), timeout=0, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        gave_back: list[int] = []
        orig_hold = ledger._hold

        def hold(ops: list[Any], *, front: bool = False) -> None:
            if front:  # given back by the inline batch (a commit holds at the back)
                gave_back.append(len(ops))
            orig_hold(ops, front=front)

        ledger._hold = hold  # type: ignore[method-assign]
        task = asyncio.ensure_future(ledger.reserve(_charge(policy)))
        await asyncio.sleep(0.2)
        assert gave_back == [1], gave_back  # the inline batch took r1's record and gave it back
        assert _states(ledger_env_sqlite) == {r1.id: "reserved"}
        released_at = time.monotonic()
        blocker.execute("COMMIT")
        blocker.close()
        r2 = await asyncio.wait_for(task, 10)
        for _ in range(200):
            if _states(ledger_env_sqlite).get(r1.id) == "committed":
                break
            await asyncio.sleep(0.005)
        assert _states(ledger_env_sqlite)[r1.id] == "committed"
        assert time.monotonic() - released_at < 1.0
        await ledger.commit(r2.id, ("n",))
    finally:
        await ledger.close()
    assert _commits(ledger_env_sqlite) == {r1.id: 1, r2.id: 1}
    assert ledger._pending == 0
