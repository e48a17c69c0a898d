"""A database writer without the audit key (issue 11 item 4), on both backends.

The issue's attack: delete 498 of 746 audit records, rewrite the head row, rebuild the units
table from the reservations table; delete everything; edit a budget row. Each must be caught
by ``ledger verify`` (and, with a checkpoint exported earlier, by ``--expect-head`` and by the
router refusing to open the ledger). Also: no clear user or department identifier at rest,
the AES-GCM nonce limit enforced and the key rotation that lifts it, ``ledger verify
--config`` on a missing database, and schema 1 databases refused, then migrated.
"""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fdp_router.cli import main as cli_main
from fdp_router.config import PrivacyConfig
from fdp_router.privacy import audit
from fdp_router.privacy import events as ev
from fdp_router.privacy import filter as flt
from fdp_router.privacy.api import (
    BudgetExceeded,
    Charge,
    LedgerIntegrityError,
    LedgerUnavailable,
    Scope,
    UnknownReservation,
)
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger, verify_ledger
from fdp_router.privacy.ledger.core import AUDIT_COLUMNS
from fdp_router.privacy.ledger.maintenance import make_checkpoint
from fdp_router.privacy.ledger.postgres import PostgresDriver
from fdp_router.privacy.ledger.sqlite import SqliteDriver

from .conftest import LedgerEnv, policy_admitting

POLICY = PrivacyConfig()


def _driver(env: LedgerEnv) -> Any:
    if env.backend == "sqlite":
        return SqliteDriver(env.ledger_cfg.sqlite_path)
    return PostgresDriver(env.dsn or "")


def _sql(env: LedgerEnv, *statements: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run statements as the attacker would (triggers dropped first); rows of the last one."""
    rows: list[tuple[Any, ...]] = []
    if env.backend == "sqlite":
        with sqlite3.connect(env.ledger_cfg.sqlite_path) as conn:
            for stmt in statements:
                cur = conn.execute(stmt, params if "?" in stmt else ())
                rows = cur.fetchall()
        return rows
    with psycopg.connect(env.dsn or "", autocommit=True) as conn:
        for stmt in statements:
            cur = conn.execute(stmt.replace("?", "%s"), params if "?" in stmt else ())
            rows = cur.fetchall() if cur.description else []
    return rows


def _unguard(env: LedgerEnv) -> list[str]:
    if env.backend == "sqlite":
        return ["DROP TRIGGER IF EXISTS fdp_audit_no_delete", "DROP TRIGGER IF EXISTS fdp_audit_no_update"]
    return ["ALTER TABLE fdp_audit DISABLE TRIGGER fdp_audit_no_change"]


def _keyring(env: LedgerEnv) -> audit.Keyring:
    return parse_keyring(env.key_file.read_text(), "test")


async def _fill(env: LedgerEnv, pairs: int, start: int = 0) -> None:
    """`pairs` reserve+commit pairs (2 records each) over a few users."""
    ledger = await env.open(POLICY)
    event = event_for_request(POLICY, None)
    try:
        for i in range(start, start + pairs):
            r = await ledger.reserve(
                Charge(f"dr-user-{i % 7}", f"ward-{i % 3}", ("h1",), event, request_id=f"q{i}")
            )
            await ledger.commit(r.id, ("node-a",))
    finally:
        await ledger.close()


async def test_cutting_the_trail_rewriting_the_head_and_rebuilding_units_is_detected(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    """The issue's attack: 498 of 746 records deleted, the head rewritten, the units rebuilt
    from the reservations table. Verify fails whichever way the head is rewritten; with a
    genuine old head row (an attacker who kept a copy) and a checkpoint exported before the
    cut, --expect-head fails and the router refuses to open the ledger."""
    env = ledger_env
    keyring = _keyring(env)
    await _fill(env, 124)  # 248 records
    old_head = _sql(env, "SELECT seq, hash, key_id, key_count, mac FROM fdp_head")[0]
    await _fill(env, 249, start=124)  # 746 records
    cp = make_checkpoint(_driver(env), keyring)
    assert cp.seq == 746
    assert verify_ledger(_driver(env), keyring, expect_head=cp).ok
    (tmp_path / "cp.json").write_text(cp.to_json())

    # 1. cut the tail and make the head agree with what is left (the MAC it cannot forge)
    hash_248 = _sql(env, "SELECT hash FROM fdp_audit WHERE seq = 248")[0][0]
    cut = {r[0] for r in _sql(env, "SELECT reservation_id FROM fdp_audit WHERE seq > 248")}
    for rid in cut:  # a thorough attacker drops their reservations too (the ids are in clear)
        _sql(env, "DELETE FROM fdp_reservations WHERE id = ?", params=(rid,))
    _sql(env, *_unguard(env), "DELETE FROM fdp_audit WHERE seq > 248")
    assert _sql(env, "SELECT count(*) FROM fdp_audit")[0][0] == 248
    _sql(env, "UPDATE fdp_head SET seq = 248, hash = ?", params=(hash_248,))
    result = verify_ledger(_driver(env), keyring)
    assert not result.ok and "head row fails its MAC" in result.reason
    with pytest.raises(LedgerIntegrityError, match="head row fails its MAC"):
        await env.open(POLICY)

    # 2. the head row put back to a genuine copy taken at record 248
    _sql(env, "UPDATE fdp_head SET key_id = ?, key_count = ?, mac = ?", params=old_head[2:])
    # 3. units rebuilt from the reservations table (cost and units are there; the MAC is not)
    rows = _sql(env, "SELECT units, event FROM fdp_reservations")
    rebuilt: dict[tuple[str, str], tuple[list[float], int]] = {}
    for units_json, event in rows[: len(rows) // 3]:  # "only" a third of the spends
        cost = flt.rdp_curve(ev.from_dict(json.loads(event)))
        for scope, key in json.loads(units_json):
            spent, n = rebuilt.get((scope, key), ([0.0] * len(cost), 0))
            rebuilt[(scope, key)] = ([a + b for a, b in zip(spent, cost, strict=True)], n + 1)
    mac = _sql(env, "SELECT mac FROM fdp_units LIMIT 1")[0][0]  # a real MAC, of another row
    _sql(env, "DELETE FROM fdp_units")
    for (scope, key), (spent, n) in rebuilt.items():
        _sql(
            env,
            "INSERT INTO fdp_units (scope, unit_key, window_id, rdp, basic_eps, n_queries, mac) "
            "VALUES (?, ?, 0, ?, 0.0, ?, ?)",
            params=(scope, key, json.dumps(spent), n, mac),
        )
    result = verify_ledger(_driver(env), keyring)
    assert not result.ok and "fails its MAC" in result.reason, result
    # even with no unit rows at all, the replay of the 248 records left disagrees
    _sql(env, "DELETE FROM fdp_units")
    result = verify_ledger(_driver(env), keyring)
    assert not result.ok and "records 0 queries but the audit trail replays to" in result.reason, result
    # and the checkpoint exported before the cut says the ledger is shorter
    code = cli_main(["ledger", "verify", *_source(env), "--expect-head", str(tmp_path / "cp.json")])
    assert code == 1
    result = verify_ledger(_driver(env), keyring, expect_head=cp)
    assert not result.ok and "records missing" in result.reason
    cfg = env.ledger_cfg.model_copy(update={"checkpoint_file": str(tmp_path / "cp.json")})
    with pytest.raises(LedgerIntegrityError, match="behind the last exported checkpoint"):
        await open_ledger(cfg, POLICY)


def _source(env: LedgerEnv) -> list[str]:
    src = ["--sqlite", env.ledger_cfg.sqlite_path] if env.backend == "sqlite" else ["--dsn", env.dsn or ""]
    return [*src, "--key-file", str(env.key_file)]


async def test_deleting_everything_fails_against_the_checkpoint(
    ledger_env: LedgerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = ledger_env
    await _fill(env, 5)
    cp_file = tmp_path / "cp.json"
    assert cli_main(["ledger", "checkpoint", *_source(env), "--out", str(cp_file)]) == 0
    cp = json.loads(cp_file.read_text())
    assert cp["seq"] == 10 and len(cp["mac"]) == 64
    assert json.loads(capsys.readouterr().out) == cp
    assert cli_main(["ledger", "verify", *_source(env), "--expect-head", cp_file.read_text()]) == 0
    tables = ("fdp_audit", "fdp_units", "fdp_reservations", "fdp_head", "fdp_meta", "fdp_carry")
    _sql(env, *_unguard(env), *(f"DELETE FROM {t}" for t in tables))
    capsys.readouterr()
    assert cli_main(["ledger", "verify", *_source(env), "--expect-head", str(cp_file)]) == 1
    _sql(env, *(f"DROP TABLE {t}" for t in tables))
    assert cli_main(["ledger", "verify", *_source(env), "--expect-head", str(cp_file)]) == 1
    assert "no ledger" in capsys.readouterr().out
    # a checkpoint edited to say less, or signed with another key, is refused outright
    forged = {**cp, "seq": 3}
    assert cli_main(["ledger", "verify", *_source(env), "--expect-head", json.dumps(forged)]) in (1, 2)


async def test_an_edited_budget_row_counts_as_fully_spent_and_verify_reports_it(
    ledger_env: LedgerEnv, caplog: pytest.LogCaptureFixture
) -> None:
    env = ledger_env
    cfg = policy_admitting(5)
    ledger = await env.open(cfg)
    try:
        for _ in range(3):
            await ledger.reserve(Charge("alice", "cardiology", ("h1",), event_for_request(cfg, None)))
        n_orders = len(json.loads(_sql(env, "SELECT rdp FROM fdp_units LIMIT 1")[0][0]))
        zero = json.dumps([0.0] * n_orders)
        _sql(env, f"UPDATE fdp_units SET rdp = '{zero}', n_queries = 0 WHERE scope = 'user'")
        fresh = await env.open(cfg)  # a reader that has not cached the row
        try:
            with caplog.at_level(logging.ERROR, logger="fdp_router.privacy.ledger.core"):
                with pytest.raises(BudgetExceeded) as info:
                    await fresh.reserve(Charge("alice", "cardiology", ("h1",), event_for_request(cfg, None)))
            assert info.value.available == 0.0
            assert "fails its MAC" in caplog.text
            status = await fresh.budget(Scope.USER, "alice")
            assert status.remaining_epsilon == 0.0
            await fresh.reserve(
                Charge("bob", "cardiology", ("h1",), event_for_request(cfg, None))
            )  # others fine
        finally:
            await fresh.close()
    finally:
        await ledger.close()
    result = verify_ledger(_driver(env), _keyring(env))
    assert not result.ok
    assert "unit user 'alice'" in result.reason and "fails its MAC" in result.reason


async def test_a_reservation_row_pointed_at_another_user_refunds_nothing(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    cfg = policy_admitting(5)
    event = event_for_request(cfg, None)
    ledger = await env.open(cfg)
    try:
        await ledger.reserve(Charge("mallory", "cardiology", ("h1",), event))
        victim = await ledger.reserve(Charge("alice", "cardiology", ("h1",), event))
        mallory_units = _sql(env, "SELECT units FROM fdp_reservations ORDER BY created_at LIMIT 1")[0][0]
        _sql(env, "UPDATE fdp_reservations SET units = ? WHERE id = ?", params=(mallory_units, victim.id))
        before = await ledger.budget(Scope.USER, "mallory")
        with pytest.raises(UnknownReservation, match="integrity"):
            await ledger.release(victim.id)  # the router's refund: must not go to mallory
        after = await ledger.budget(Scope.USER, "mallory")
    finally:
        await ledger.close()
    assert after.consumed_epsilon == pytest.approx(before.consumed_epsilon, rel=1e-12)
    result = verify_ledger(_driver(env), _keyring(env))
    assert not result.ok and "fails its MAC" in result.reason


async def test_no_clear_user_or_department_at_rest(ledger_env: LedgerEnv) -> None:
    env = ledger_env
    event = event_for_request(POLICY, None)
    ledger = await env.open(POLICY)
    try:
        for _ in range(3):
            r = await ledger.reserve(Charge("dr-Zoe-Quill", "oncology-ward-7", ("h1",), event))
            await ledger.commit(r.id, ("node-a",))
        r = await ledger.reserve(Charge("dr-Zoe-Quill", "oncology-ward-7", ("h1",), event))
        await ledger.release(r.id)
        assert (await ledger.budget(Scope.USER, "dr-Zoe-Quill")).extra["queries"] == 3
        assert (await ledger.budget(Scope.DEPARTMENT, "oncology-ward-7")).extra["queries"] == 3
    finally:
        await ledger.close()
    tables = ("fdp_audit", "fdp_units", "fdp_reservations", "fdp_head", "fdp_meta", "fdp_carry")
    dump = json.dumps([_sql(env, f"SELECT * FROM {t}") for t in tables], default=str)
    assert "Zoe" not in dump and "oncology" not in dump
    assert "h1" in dump  # hospitals name configured hospitals, not people: clear
    if env.backend == "sqlite":  # the bytes on disk, free pages and WAL included
        for suffix in ("", "-wal"):
            path = Path(env.ledger_cfg.sqlite_path + suffix)
            if path.exists():
                raw = path.read_bytes()
                assert b"Zoe" not in raw and b"oncology" not in raw
    assert verify_ledger(_driver(env), _keyring(env)).ok


async def test_the_nonce_limit_refuses_to_seal_and_rotation_lifts_it(
    ledger_env_sqlite: LedgerEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The limit is 2^32 records per key; here 6 (the same code path), warning from 4."""
    env = ledger_env_sqlite
    monkeypatch.setattr(audit, "NONCE_LIMIT", 6)
    monkeypatch.setattr(audit, "NONCE_WARN", 4)
    monkeypatch.setattr(audit, "NONCE_WARN_STEP", 1)
    event = event_for_request(POLICY, None)
    ledger = await env.open(POLICY)
    try:
        with caplog.at_level(logging.WARNING, logger="fdp_router.privacy.ledger.core"):
            for i in range(6):
                await ledger.reserve(Charge(f"u{i}", "d", ("h",), event))
        assert "rotate it" in caplog.text and "'k1' has sealed" in caplog.text
        assert ledger.key_usage == ("k1", 6, 6)
        with pytest.raises(LedgerUnavailable) as info:
            await ledger.reserve(Charge("u9", "d", ("h",), event))
        assert info.value.kind == "key_exhausted" and "append a new key" in str(info.value)
        with pytest.raises(LedgerUnavailable):
            await ledger.check()  # /readyz goes 503 too
    finally:
        await ledger.close()
    env.key_file.write_text(env.key_file.read_text() + f"k2 {secrets.token_hex(32)}\n")  # rotate
    ledger = await env.open(POLICY)
    try:
        for i in range(3):
            await ledger.reserve(Charge(f"v{i}", "d", ("h",), event))
        assert ledger.key_usage == ("k2", 3, 6)
        assert (await ledger.budget(Scope.USER, "u0")).extra["queries"] == 1  # budgets kept
    finally:
        await ledger.close()
    keys = [r[0] for r in _sql(env, "SELECT key_id FROM fdp_audit ORDER BY seq")]
    assert keys == ["k1"] * 6 + ["k2"] * 3
    assert verify_ledger(_driver(env), _keyring(env)).ok
    # dropping the ledger's integrity key (k1) from the ring is refused with a clear message
    env.key_file.write_text(env.key_file.read_text().splitlines()[1] + "\n")
    with pytest.raises(LedgerIntegrityError, match="integrity key 'k1'"):
        await env.open(POLICY)


def test_verify_with_a_config_naming_a_missing_database_exits_2_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "nowhere" / "ledger.sqlite"
    (tmp_path / "nowhere").mkdir()
    config = tmp_path / "router.yaml"
    config.write_text(f"version: 1\nledger:\n  backend: sqlite\n  sqlite_path: {db}\n")
    for command in ("verify", "checkpoint"):
        assert cli_main(["ledger", command, "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert f"no ledger database at {db}" in err and "nothing was created" in err
    assert list((tmp_path / "nowhere").iterdir()) == []


# --- schema 1 -> 2 ------------------------------------------------------------------------------

SCHEMA1 = (
    "CREATE TABLE fdp_units (scope TEXT NOT NULL, unit_key TEXT NOT NULL, window_id BIGINT NOT NULL, "
    "rdp TEXT NOT NULL, basic_eps DOUBLE PRECISION NOT NULL, n_queries BIGINT NOT NULL, "
    "PRIMARY KEY (scope, unit_key, window_id))",
    "CREATE TABLE fdp_reservations (id TEXT PRIMARY KEY, window_id BIGINT NOT NULL, units TEXT NOT NULL, "
    "event TEXT NOT NULL, rdp TEXT NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION "
    "NOT NULL, state TEXT NOT NULL, created_at TEXT NOT NULL, settled_at TEXT)",
    "CREATE TABLE fdp_audit (seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, reservation_id "
    "TEXT NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL, key_id TEXT NOT "
    "NULL, nonce TEXT NOT NULL, ciphertext TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)",
    "CREATE TABLE fdp_head (id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
)


def _write_schema1(env: LedgerEnv, users: list[str]) -> None:
    """A ledger as the schema 1 router left it: clear keys, no MACs (same audit format)."""
    from fdp_router.privacy.accounting import fast_epsilon

    keyring = _keyring(env)
    event = event_for_request(POLICY, None)
    cost = flt.rdp_curve(event)
    eps = fast_epsilon(event, POLICY.delta)
    units: dict[tuple[str, str], tuple[tuple[float, ...], int]] = {}
    prev, stmts = audit.GENESIS, list(SCHEMA1)
    params: list[tuple[Any, ...]] = [()] * len(stmts)
    for seq, user in enumerate(users, start=1):
        rid = f"r{seq}"
        unit_list = [["user", user], ["department", "cardiology"], ["hospital", "h1"]]
        for scope, key in unit_list:
            spent, n = units.get((scope, key), (flt.zero(), 0))
            units[(scope, key)] = (flt.add(spent, cost), n + 1)
        ts = f"2026-01-01T00:00:{seq:02d}+00:00"
        rec = audit.seal(
            keyring,
            seq=seq,
            prev_hash=prev,
            ts=ts,
            kind="reserve",
            reservation_id=rid,
            epsilon=eps,
            delta=POLICY.delta,
            sensitive={
                "user_id": user,
                "department": "cardiology",
                "hospitals": ["h1"],
                "query_hash": "",
                "request_id": rid,
                "window_id": 0,
                "event": ev.to_dict(event),
            },
        )
        prev = rec["hash"]
        cols = AUDIT_COLUMNS
        stmts.append(f"INSERT INTO fdp_audit ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})")
        params.append(tuple(rec[c] for c in cols))
        stmts.append("INSERT INTO fdp_reservations VALUES (?, 0, ?, ?, ?, ?, ?, 'reserved', ?, NULL)")
        params.append(
            (
                rid,
                json.dumps(unit_list),
                json.dumps(ev.to_dict(event)),
                json.dumps(cost),
                eps,
                POLICY.delta,
                ts,
            )
        )
    for (scope, key), (spent, n) in units.items():
        stmts.append("INSERT INTO fdp_units VALUES (?, ?, 0, ?, ?, ?)")
        params.append((scope, key, json.dumps(spent), n * eps, n))
    stmts.append("INSERT INTO fdp_head VALUES (1, ?, ?)")
    params.append((len(users), prev))
    for stmt, p in zip(stmts, params, strict=True):
        _sql(env, stmt, params=p)


async def test_a_schema1_ledger_is_refused_then_migrated_keeping_its_budgets(
    ledger_env: LedgerEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    env = ledger_env
    _write_schema1(env, ["alice", "alice", "bob"])
    assert verify_ledger(_driver(env), _keyring(env)).ok  # the old checks still run on it
    with pytest.raises(LedgerIntegrityError, match=r"schema 1.*ledger migrate"):
        await env.open(POLICY)
    assert cli_main(["ledger", "migrate", *_source(env)]) == 0
    assert "migrated to schema 2 (3 audit records verified first)" in capsys.readouterr().out
    assert cli_main(["ledger", "migrate", *_source(env)]) == 0
    assert "already schema 2" in capsys.readouterr().out
    dump = json.dumps([_sql(env, f"SELECT * FROM {t}") for t in ("fdp_units", "fdp_reservations")])
    assert "alice" not in dump and "cardiology" not in dump
    ledger = await env.open(POLICY)
    try:
        assert (await ledger.budget(Scope.USER, "alice")).extra["queries"] == 2
        assert (await ledger.budget(Scope.DEPARTMENT, "cardiology")).extra["queries"] == 3
        r = await ledger.reserve(Charge("alice", "cardiology", ("h1",), event_for_request(POLICY, None)))
        await ledger.release(r.id)
        await ledger.release("r1")  # a schema 1 reservation refunds to the pseudonymous unit
        assert (await ledger.budget(Scope.USER, "alice")).extra["queries"] == 1
    finally:
        await ledger.close()
    assert verify_ledger(_driver(env), _keyring(env)).ok


async def test_a_broken_schema1_ledger_is_not_migrated(ledger_env_sqlite: LedgerEnv) -> None:
    env = ledger_env_sqlite
    _write_schema1(env, ["alice", "bob"])
    _sql(env, "UPDATE fdp_units SET n_queries = 0 WHERE unit_key = 'alice'")
    assert cli_main(["ledger", "migrate", *_source(env)]) == 2
    assert _sql(env, "SELECT name FROM sqlite_master WHERE name = 'fdp_meta'") == []
