"""How the ledger grows and how long checking it takes (issue 15 item 7), one short run.

For each backend: N requests (a reserve and its commit each, `--concurrency` at a time,
1,000 users, 8 departments, 4 hospitals) on a fresh ledger, then

- bytes per request at rest: SQLite (pages in use, WAL checkpointed) or PostgreSQL
  (``pg_total_relation_size`` of the ledger's tables, indexes and TOAST included, after
  ``VACUUM FULL``, so that dead tuples of pruned rows are not counted);
- ``ledger verify`` time: full (chain, tags, row MACs, budget replay), incremental from a
  checkpoint taken before the last 1 % of requests, and offline over the archive;
- retention: every record archived (`prune` with the clock moved past the retention), the
  archive's bytes per request, the live database's bytes after pruning, the time to prune.

Times per million audit records are extrapolated linearly from the run (the work per record
is constant: one hash, one AES-GCM open, a few dict updates); the run is short on purpose.

    .venv/bin/python benchmarks/ledger_growth.py --requests 25000            # SQLite and PostgreSQL
    .venv/bin/python benchmarks/ledger_growth.py --backends sqlite --json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shutil
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from fdp_router.config import LedgerConfig, LedgerRetention, PrivacyConfig
from fdp_router.privacy.api import Charge
from fdp_router.privacy.audit import parse_keyring
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger, verify_archive, verify_ledger
from fdp_router.privacy.ledger.maintenance import make_checkpoint, prune

POLICY = PrivacyConfig(budgets={"per_user": 1e6, "per_department": 1e9, "per_hospital": 1e9})
TABLES = ("fdp_units", "fdp_reservations", "fdp_audit", "fdp_head", "fdp_carry", "fdp_meta")


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2026, 5, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.t


async def fill(cfg: LedgerConfig, clock: Clock, start: int, count: int, concurrency: int) -> float:
    ledger = await open_ledger(cfg, POLICY, now=clock)
    event = event_for_request(POLICY, None)
    ids = itertools.count(start)
    end = start + count

    async def worker() -> None:
        while (i := next(ids)) < end:
            r = await ledger.reserve(
                Charge(f"user-{i % 1000}", f"dept-{i % 8}", (f"h{i % 4}",), event, "0" * 64, f"req-{i}")
            )
            await ledger.commit(r.id, (f"node-{i % 4}",))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    await ledger.close()
    return count / elapsed


def sqlite_bytes(path: str) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = (
            conn.execute("PRAGMA page_count").fetchone()[0]
            - conn.execute("PRAGMA freelist_count").fetchone()[0]
        )
    return int(page * used)


def pg_bytes(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in TABLES:
            conn.execute(f"VACUUM FULL {t}")
        return int(
            sum(
                conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]  # type: ignore[index]
                for t in TABLES
            )
        )


def driver_of(cfg: LedgerConfig, dsn: str | None, *, read_only: bool = True) -> Any:
    if cfg.backend == "sqlite":
        from fdp_router.privacy.ledger.sqlite import SqliteDriver

        return SqliteDriver(cfg.sqlite_path, read_only=read_only)
    from fdp_router.privacy.ledger.postgres import PostgresDriver

    return PostgresDriver(dsn or "")


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


async def run(backend: str, requests: int, concurrency: int, tmp: Path, server: Any) -> dict[str, Any]:
    key = tmp / "audit.keys"
    key.write_text(f"bench {secrets.token_hex(32)}\n")
    keyring = parse_keyring(key.read_text(), "bench")
    dsn = None
    if backend == "sqlite":
        cfg = LedgerConfig(sqlite_path=str(tmp / "growth.sqlite"), audit_key_file=str(key))
    else:
        dsn = server.new_database()
        (tmp / "dsn").write_text(dsn)
        cfg = LedgerConfig(backend="postgres", postgres_dsn_file=str(tmp / "dsn"), audit_key_file=str(key))
    clock = Clock()
    tail = max(1, requests // 100)
    rate = await fill(cfg, clock, 0, requests - tail, concurrency)
    cp = make_checkpoint(driver_of(cfg, dsn), keyring, clock())
    await fill(cfg, clock, requests - tail, tail, concurrency)
    records = 2 * requests
    size = sqlite_bytes(cfg.sqlite_path) if backend == "sqlite" else pg_bytes(dsn or "")
    full, full_s = timed(lambda: verify_ledger(driver_of(cfg, dsn), keyring))
    assert full.ok and full.checked == records, full
    inc, inc_s = timed(lambda: verify_ledger(driver_of(cfg, dsn), keyring, since=cp))
    assert inc.ok and inc.checked == 2 * tail, inc
    # retention: everything is older than a day once the clock moves two days on
    archive = tmp / "archive"
    retention = LedgerRetention(audit_seconds=86400, archive_dir=str(archive), max_records_per_run=10_000_000)
    clock.t += timedelta(days=2)
    pruned, prune_s = timed(
        lambda: prune(driver_of(cfg, dsn, read_only=False), keyring, POLICY, retention, clock())
    )
    assert pruned.archived == records, pruned
    archive_bytes = sum(p.stat().st_size for p in archive.iterdir())
    live_after = sqlite_bytes(cfg.sqlite_path) if backend == "sqlite" else pg_bytes(dsn or "")
    arch, arch_s = timed(lambda: verify_archive(archive, keyring))
    assert arch.ok and arch.checked == records, arch
    after, after_s = timed(lambda: verify_ledger(driver_of(cfg, dsn), keyring, archive=archive))
    assert after.ok, after
    per_m = 1e6 / records
    return {
        "backend": backend,
        "requests": requests,
        "audit_records": records,
        "fill_requests_per_second": round(rate),
        "bytes_per_request_live": round(size / requests),
        "verify_full_s": round(full_s, 2),
        "verify_full_s_per_million_records": round(full_s * per_m, 1),
        "verify_incremental_s": round(inc_s, 3),
        "verify_incremental_records": inc.checked,
        "prune_s": round(prune_s, 2),
        "prune_s_per_million_records": round(prune_s * per_m, 1),
        "archive_bytes_per_request": round(archive_bytes / requests),
        "live_bytes_after_prune": live_after,
        "verify_archive_s_per_million_records": round(arch_s * per_m, 1),
        "verify_live_plus_archive_s": round(after_s, 2),
    }


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--requests", type=int, default=25_000, help="reserve+commit pairs (2 audit records each)")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if not args.json:
        with open("/proc/loadavg") as fh:
            print(
                f"load average before the run: {fh.read().split()[0]} on {os.cpu_count()} cores", flush=True
            )
    server = None
    out = []
    try:
        for backend in args.backends.split(","):
            tmp = Path(tempfile.mkdtemp(prefix=f"fdp-growth-{backend}-"))
            try:
                if backend == "postgres" and server is None:
                    from tests.support.postgres import start_postgres

                    server = await asyncio.to_thread(start_postgres)
                result = await run(backend, args.requests, args.concurrency, tmp, server)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            out.append(result)
            if not args.json:
                print(json.dumps(result, indent=2), flush=True)
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
