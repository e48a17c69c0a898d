"""Attack: `ledger verify --archive DIR` on a *live* ledger whose router prunes on its own
(ledger.retention). Commit 2618d61 made verify read the database in one snapshot so that a
live router's writes cannot look like tampering; the archive directory, however, is read
from the filesystem outside that snapshot, and `prune()` writes a segment *before* it
deletes the archived records from the database. A prune that runs between verify's snapshot
and its read of the archive (or a verify whose snapshot falls between a prune's segment
write and its database transaction) sees an archive ending after the live trail's base: a
false failure on an intact ledger (found by the attack review). Fixed in verify.py: an
archive that runs past the snapshot's base must end on the live record with the same hash."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from fdp_router.config import LedgerRetention, PrivacyConfig
from fdp_router.privacy.audit import Keyring, parse_keyring
from fdp_router.privacy.ledger import maintenance, verify, verify_ledger
from fdp_router.privacy.ledger.maintenance import prune

from .conftest import LedgerEnv
from .test_ledger_integrity import _driver
from .test_ledger_retention import BIG, Clock, _charge


async def _fill(env: LedgerEnv, cfg: PrivacyConfig, clock: Clock, n: int) -> None:
    ledger = await env.open(cfg, now=clock)
    try:
        for i in range(n):
            r = await ledger.reserve(_charge(cfg, f"u{i}"), ("node-a",))
            await ledger.commit(r.id, ("node-a",))
            clock.advance(600)
    finally:
        await ledger.close()


@dataclass
class _Pruning:
    """A ledger with an archive and, after it, records due for the next prune."""

    clock: Clock
    cfg: PrivacyConfig
    archive: Path
    retention: LedgerRetention
    keyring: Keyring

    def prune(self, env: LedgerEnv) -> int:
        return prune(_driver(env), self.keyring, self.cfg, self.retention, self.clock()).archived


async def _pruning(env: LedgerEnv, tmp_path: Path) -> _Pruning:
    archive = tmp_path / "archive"
    p = _Pruning(
        Clock(),
        PrivacyConfig(budgets=BIG),
        archive,
        LedgerRetention(audit_seconds=3600, archive_dir=str(archive)),
        parse_keyring(env.key_file.read_text(), "k"),
    )
    await _fill(env, p.cfg, p.clock, 6)
    p.clock.advance(7200)
    assert p.prune(env) > 0  # an archive exists
    await _fill(env, p.cfg, p.clock, 6)
    p.clock.advance(7200)
    return p


async def test_verify_with_archive_while_the_router_prunes_between_snapshot_and_archive_read(
    ledger_env: LedgerEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ledger_env
    p = await _pruning(env, tmp_path)
    keyring, archive = p.keyring, p.archive
    assert verify_ledger(_driver(env), keyring, archive=archive).ok  # intact, quiet

    real = verify._verify_segments
    ran: list[int] = []

    def racing_archive_read(*args, **kw):  # the router's maintenance thread runs now
        if not ran:
            ran.append(p.prune(env))
        return real(*args, **kw)

    monkeypatch.setattr(verify, "_verify_segments", racing_archive_read)
    result = verify_ledger(_driver(env), keyring, archive=archive)
    monkeypatch.setattr(verify, "_verify_segments", real)
    assert ran and ran[0] > 0
    again = verify_ledger(_driver(env), keyring, archive=archive)
    assert again.ok, again  # the ledger is intact
    assert result.ok, f"false failure on an intact live ledger: {result.reason}"


async def test_verify_with_archive_between_a_prunes_segment_write_and_its_delete(
    ledger_env: LedgerEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ledger_env
    p = await _pruning(env, tmp_path)
    keyring, archive = p.keyring, p.archive

    real_chunk = maintenance._prune_chunk
    seen: list[object] = []

    def chunk_after_verify(*args, **kw):  # the segment is on disk, the database not yet pruned
        if not seen:
            seen.append(verify_ledger(_driver(env), keyring, archive=archive))
        return real_chunk(*args, **kw)

    monkeypatch.setattr(maintenance, "_prune_chunk", chunk_after_verify)
    p.prune(env)
    monkeypatch.setattr(maintenance, "_prune_chunk", real_chunk)
    assert verify_ledger(_driver(env), keyring, archive=archive).ok
    result = seen[0]
    assert result.ok, f"false failure on an intact live ledger: {result.reason}"  # type: ignore[attr-defined]
