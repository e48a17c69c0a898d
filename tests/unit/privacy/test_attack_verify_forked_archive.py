"""Attack: `ledger verify --archive DIR` handed an archive that is not this ledger's past.

An archive is a chain of segments signed with the audit key, so only someone with the key
(or a copy of the ledger from before a fork: a restored backup, a cloned volume) can make
one. Both ledgers of a fork share the key and the ledger id, and each archive verifies on
its own. Verify binds the archive to the live trail by the record where one ends and the
other starts (or, for an archive that runs past the live base, by the live record at the
archive's end): the archive of the other branch must be refused, whichever side of the live
base it ends on. The archive-race tests (test_attack_deferred_verify_archive.py) show that
the live branch's own archive passes; these show that the other branch's does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fdp_router.config import LedgerConfig, LedgerRetention, PrivacyConfig
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.ledger import verify_ledger
from fdp_router.privacy.ledger.maintenance import prune

from .conftest import LedgerEnv, _key_file
from .test_ledger_integrity import _driver
from .test_ledger_retention import BIG, Clock, _charge

CFG = PrivacyConfig(budgets=BIG)


async def _fill(env: LedgerEnv, clock: Clock, users: list[str]) -> None:
    ledger = await env.open(CFG, now=clock)
    try:
        for user in users:
            r = await ledger.reserve(_charge(CFG, user), ("node-a",))
            await ledger.commit(r.id, ("node-a",))
            clock.advance(600)
    finally:
        await ledger.close()


def _fork(env: LedgerEnv, tmp_path: Path) -> LedgerEnv:
    """A copy of the closed ledger's database: same key, same ledger id, same records."""
    src = Path(env.ledger_cfg.sqlite_path or "")
    dst = tmp_path / "twin.sqlite"
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")
    return LedgerEnv("sqlite", env.ledger_cfg.model_copy(update={"sqlite_path": str(dst)}), env.key_file)


async def _forked(env: LedgerEnv, tmp_path: Path) -> tuple[LedgerEnv, Clock, LedgerEnv, Clock]:
    """A ledger with three charges, and its fork: each with its own clock, at the same time."""
    clock = Clock()
    await _fill(env, clock, ["a0", "a1", "a2"])
    twin_clock = Clock()
    twin_clock.t = clock.t
    return env, clock, _fork(env, tmp_path), twin_clock


def _prune(env: LedgerEnv, clock: Clock, archive: Path) -> int:
    keyring = parse_keyring(env.key_file.read_text(), "k")
    retention = LedgerRetention(audit_seconds=3600, archive_dir=str(archive))
    return prune(_driver(env), keyring, CFG, retention, clock()).archived


@pytest.fixture
def sqlite_env(tmp_path: Path) -> LedgerEnv:
    """SQLite only: the fork is a copy of the database file (the check is the same code on
    PostgreSQL, where a fork is a restored dump)."""
    key = _key_file(tmp_path)
    cfg = LedgerConfig(backend="sqlite", sqlite_path=str(tmp_path / "ledger.sqlite"), audit_key_file=str(key))
    return LedgerEnv("sqlite", cfg, key)


async def test_an_archive_of_the_other_branch_ending_at_the_live_base_is_refused(
    sqlite_env: LedgerEnv, tmp_path: Path
) -> None:
    live, live_clock, twin, twin_clock = await _forked(sqlite_env, tmp_path)
    # Both branches write as many records, then prune the same span: the archives end at
    # the same record number, holding different records.
    await _fill(live, live_clock, ["live-0", "live-1", "live-2"])
    await _fill(twin, twin_clock, ["twin-0", "twin-1", "twin-2"])
    for clock in (live_clock, twin_clock):
        clock.advance(7200)
    n_live = _prune(live, live_clock, tmp_path / "live-archive")
    n_twin = _prune(twin, twin_clock, tmp_path / "twin-archive")
    assert n_live == n_twin > 0
    keyring = parse_keyring(live.key_file.read_text(), "k")
    assert verify_ledger(_driver(live), keyring, archive=tmp_path / "live-archive").ok
    assert verify_ledger(_driver(twin), keyring, archive=tmp_path / "twin-archive").ok
    forged = verify_ledger(_driver(live), keyring, archive=tmp_path / "twin-archive")
    assert not forged.ok, "the other branch's archive passed as this ledger's past"
    assert "is not the live trail's record" in (forged.reason or ""), forged


async def test_an_archive_of_the_other_branch_running_past_the_live_base_is_refused(
    sqlite_env: LedgerEnv, tmp_path: Path
) -> None:
    live, live_clock, twin, twin_clock = await _forked(sqlite_env, tmp_path)
    live_clock.advance(7200)
    assert _prune(live, live_clock, tmp_path / "live-archive") > 0  # the live base: the shared prefix
    await _fill(live, live_clock, ["live-0", "live-1", "live-2", "live-3"])
    await _fill(twin, twin_clock, ["twin-0", "twin-1", "twin-2", "twin-3"])
    twin_clock.advance(7200)
    assert _prune(twin, twin_clock, tmp_path / "twin-archive") > 0  # shared prefix + twin records
    keyring = parse_keyring(live.key_file.read_text(), "k")
    assert verify_ledger(_driver(live), keyring, archive=tmp_path / "live-archive").ok
    forged = verify_ledger(_driver(live), keyring, archive=tmp_path / "twin-archive")
    assert not forged.ok, "the other branch's archive passed as this ledger's past"
    assert "is not the live trail's record" in (forged.reason or ""), forged
