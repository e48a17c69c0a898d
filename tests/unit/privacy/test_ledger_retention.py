"""Growth kept bounded (issue 15 item 7), on both backends: `ledger.retention` archives audit
records older than the retention to sealed segments ending in signed checkpoints, prunes them
and the budget rows of closed windows, and verification still holds: full (the live trail
plus carried sums replay every unit), offline over the archive, and incremental from a
checkpoint."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fdp_router.cli import main as cli_main
from fdp_router.config import LedgerRetention, PrivacyConfig
from fdp_router.privacy.api import Charge, Scope, UnknownReservation
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger, verify_archive, verify_ledger
from fdp_router.privacy.ledger.archive import list_segments
from fdp_router.privacy.ledger.maintenance import make_checkpoint, prune

from .conftest import LedgerEnv
from .test_ledger_integrity import _driver, _source, _sql

DAY = 86400
BIG = {"per_user": 1e6, "per_department": 1e6, "per_hospital": 1e6}


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)


def _charge(cfg: PrivacyConfig, user: str, dept: str = "cardiology") -> Charge:
    return Charge(user, dept, ("h1",), event_for_request(cfg, None), request_id=user)


async def test_daily_windows_archive_old_records_and_drop_closed_windows(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    env = ledger_env
    clock = Clock()
    cfg = PrivacyConfig(budgets=BIG, window={"kind": "period", "period_seconds": DAY})
    retention = LedgerRetention(audit_seconds=2 * DAY, archive_dir=str(tmp_path / "archive"))
    keyring = parse_keyring(env.key_file.read_text(), "k")
    ledger = await env.open(cfg, now=clock)
    early = None
    try:
        for day in range(5):
            for i in range(6):
                r = await ledger.reserve(_charge(cfg, f"u{i}", f"d{i % 2}"))
                if i % 3 == 0:
                    await ledger.release(r.id)
                elif i % 3 == 1:
                    await ledger.commit(r.id, ("node",))
                if day == 0 and i == 2:
                    early = r  # never settled: a crash leftover
                clock.advance(DAY / 6)
            if day == 0:
                cp_day0 = make_checkpoint(_driver(env), keyring, clock())
        clock.advance(DAY / 2)  # day 5, noon: records before day 3 noon go
        total = _sql(env, "SELECT count(*) FROM fdp_audit")[0][0]
        report = prune(_driver(env), keyring, cfg, retention, clock())
        assert report.archived > 0 and report.first == 1
        assert report.units_dropped > 0
        live = _sql(env, "SELECT count(*) FROM fdp_audit")[0][0]
        assert live == total - report.archived
        assert _sql(env, "SELECT min(window_id) FROM fdp_units")[0][0] is None  # day 5 has no spend yet
        # the ledger keeps serving; its cached unit states of pruned windows are dropped
        r = await ledger.reserve(_charge(cfg, "u0"))
        assert (await ledger.budget(Scope.USER, "u0")).extra["queries"] == 1
        await ledger.commit(r.id, ("node",))
        assert early is not None
        with pytest.raises(UnknownReservation):  # archived with its records: stays spent
            await ledger.release(early.id)
    finally:
        await ledger.close()
    segments = list_segments(tmp_path / "archive")
    assert [(s.first, s.last) for s in segments] == [(1, report.last)]
    full = verify_ledger(_driver(env), keyring)
    assert full.ok, full
    assert full.start_seq == report.last and any("archived" in n for n in full.notes)
    assert verify_ledger(_driver(env), keyring, archive=tmp_path / "archive").ok
    assert verify_archive(tmp_path / "archive", keyring).head_seq == report.last
    # a checkpoint inside the archived prefix: checked against the archive
    assert not verify_ledger(_driver(env), keyring, expect_head=cp_day0).ok
    assert verify_ledger(_driver(env), keyring, expect_head=cp_day0, archive=tmp_path / "archive").ok
    # the CLI: offline archive check, then the live ledger continuing it
    args = ["ledger", "verify", "--archive", str(tmp_path / "archive"), "--key-file", str(env.key_file)]
    assert cli_main(args) == 0
    assert cli_main(["ledger", "verify", *_source(env), "--archive", str(tmp_path / "archive")]) == 0


async def test_lifetime_budgets_carry_archived_spends_and_refunds_replay(
    ledger_env: LedgerEnv, tmp_path: Path
) -> None:
    """A lifetime window never closes: what archived records added is carried (MACed), a
    refund recorded after its reservation was archived replays from its own record, and the
    budget itself is untouched by pruning."""
    env = ledger_env
    clock = Clock()
    cfg = PrivacyConfig(budgets=BIG)
    retention = LedgerRetention(audit_seconds=3600, archive_dir=str(tmp_path / "archive"))
    keyring = parse_keyring(env.key_file.read_text(), "k")
    ledger = await env.open(cfg, now=clock)
    try:
        r1, r2, r3 = [await ledger.reserve(_charge(cfg, "alice")) for _ in range(3)]
        await ledger.commit(r1.id, ("node",))
        clock.advance(5400)
        await ledger.release(r2.id)  # live; its reserve record will be archived
        clock.advance(1800)
        await ledger.reserve(_charge(cfg, "alice"))
        before = await ledger.budget(Scope.USER, "alice")
        report = prune(_driver(env), keyring, cfg, retention, clock())
        assert (report.first, report.last) == (1, 4)
        after = await ledger.budget(Scope.USER, "alice")
        assert after.consumed_epsilon == before.consumed_epsilon and after.extra["queries"] == 3
        assert verify_ledger(_driver(env), keyring).ok
        with pytest.raises(UnknownReservation):
            await ledger.release(r3.id)
        assert _sql(env, "SELECT count(*) FROM fdp_carry")[0][0] == 3  # user, department, hospital
        for _ in range(3):  # and again, with records on both sides of the next cut
            clock.advance(2400)
            await ledger.reserve(_charge(cfg, "bob"))
            prune(_driver(env), keyring, cfg, retention, clock())
        assert verify_ledger(_driver(env), keyring, archive=tmp_path / "archive").ok
        # a carried sum edited without the key is caught
        _sql(env, "UPDATE fdp_carry SET n_queries = n_queries - 1 WHERE scope = 'hospital'")
        bad = verify_ledger(_driver(env), keyring)
        assert not bad.ok and "carried-sum row fails its MAC" in bad.reason
    finally:
        await ledger.close()


async def test_incremental_verify_from_a_checkpoint_reads_only_what_is_new(
    ledger_env: LedgerEnv, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = ledger_env
    cfg = PrivacyConfig(budgets=BIG)
    ledger = await env.open(cfg)
    try:
        for i in range(20):
            await ledger.reserve(_charge(cfg, f"u{i}"))
        cp_file = tmp_path / "cp.json"
        assert cli_main(["ledger", "checkpoint", *_source(env), "--out", str(cp_file)]) == 0
        for i in range(5):
            await ledger.reserve(_charge(cfg, f"v{i}"))
    finally:
        await ledger.close()
    capsys.readouterr()
    assert cli_main(["ledger", "verify", *_source(env), "--since", str(cp_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["checked"] == 5 and out["start_seq"] == 20
    assert any("incremental" in n for n in out["notes"])
    # the next checkpoint is signed only after the trail since the last one verifies
    assert cli_main(["ledger", "checkpoint", *_source(env), "--since", str(cp_file)]) == 0
    _sql(env, *_unguard_sql(env), "UPDATE fdp_audit SET epsilon = 0.001 WHERE seq = 23")
    assert cli_main(["ledger", "checkpoint", *_source(env), "--since", str(cp_file)]) == 1
    assert cli_main(["ledger", "verify", *_source(env), "--since", str(cp_file)]) == 1


def _unguard_sql(env: LedgerEnv) -> list[str]:
    if env.backend == "sqlite":
        return ["DROP TRIGGER IF EXISTS fdp_audit_no_update"]
    return ["ALTER TABLE fdp_audit DISABLE TRIGGER fdp_audit_no_change"]


async def test_the_archive_is_checked_offline(ledger_env_sqlite: LedgerEnv, tmp_path: Path) -> None:
    env = ledger_env_sqlite
    clock = Clock()
    cfg = PrivacyConfig(budgets=BIG)
    keyring = parse_keyring(env.key_file.read_text(), "k")
    archive = tmp_path / "archive"
    retention = LedgerRetention(audit_seconds=60, archive_dir=str(archive), max_records_per_run=1000)
    ledger = await env.open(cfg, now=clock)
    try:
        for round_ in range(3):
            for i in range(10):
                await ledger.reserve(_charge(cfg, f"u{round_}-{i}"))
            clock.advance(120)
            prune(_driver(env), keyring, cfg, retention, clock())
    finally:
        await ledger.close()
    segments = list_segments(archive)
    assert [(s.first, s.last) for s in segments] == [(1, 10), (11, 20), (21, 30)]
    assert verify_archive(archive, keyring).ok
    # an interrupted prune leaves an overlapping copy: checked, not refused
    _rewrite(segments[1].path, archive / "segment-000000000011-000000000015.jsonl.gz", keep=5)
    assert verify_archive(archive, keyring).ok is False  # its end checkpoint is gone: truncated
    (archive / "segment-000000000011-000000000015.jsonl.gz").unlink()
    # an edited archived record
    _rewrite(segments[1].path, segments[1].path, edit=lambda rec: {**rec, "epsilon": 0.0})
    result = verify_archive(archive, keyring)
    assert not result.ok and result.first_bad_seq == 11
    # a missing segment
    segments[1].path.unlink()
    result = verify_archive(archive, keyring)
    assert not result.ok and "11..20 are not in the archive" in result.reason


def _rewrite(src: Path, dst: Path, *, keep: int | None = None, edit: Any = None) -> None:
    with gzip.open(src, "rt") as fh:
        lines = [json.loads(line) for line in fh]
    header, body, end = lines[0], lines[1:-1], lines[-1]
    if edit is not None:
        body = [edit(body[0]), *body[1:]]
    out = [header, *(body[:keep] if keep is not None else body)]
    if keep is None:
        out.append(end)
    with gzip.open(dst, "wt") as fh:
        fh.writelines(json.dumps(x) + "\n" for x in out)


async def test_the_router_prunes_on_its_own(ledger_env: LedgerEnv, tmp_path: Path) -> None:
    env = ledger_env
    clock = Clock()
    cfg = PrivacyConfig(budgets=BIG)
    retention = LedgerRetention(audit_seconds=60, archive_dir=str(tmp_path / "archive"))
    fast = retention.model_copy(update={"interval_seconds": 0.2})  # the minimum is a minute
    ledger = await open_ledger(env.ledger_cfg.model_copy(update={"retention": fast}), cfg, now=clock)
    try:
        for i in range(10):
            await ledger.reserve(_charge(cfg, f"u{i}"))
        clock.advance(120)
        for _ in range(100):
            if list_segments(tmp_path / "archive") if (tmp_path / "archive").exists() else []:
                break
            await asyncio.sleep(0.05)
        await ledger.reserve(_charge(cfg, "after"))
    finally:
        await ledger.close()
    assert [(s.first, s.last) for s in list_segments(tmp_path / "archive")] == [(1, 10)]
    assert verify_ledger(_driver(env), parse_keyring(env.key_file.read_text(), "k")).ok
