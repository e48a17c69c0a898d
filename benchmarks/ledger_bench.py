"""Durable reservations per second and p50/p99 reserve() latency, SQLite and PostgreSQL, one run.

Each (backend, concurrency) cell opens a fresh ledger (a new SQLite file with WAL and
synchronous=FULL; a new database on a PostgreSQL started here with fsync on, unless
FDP_TEST_PG_DSN names one), then runs `concurrency` asyncio tasks that each reserve in a
loop for `--seconds`. Every reservation is a real one: the Rényi filter check for three
units (user, department, hospital), the reservation row and an encrypted, hash-chained
audit record, committed durably before reserve() returns. Users are distinct (so budgets
never run out) but departments and hospitals are shared hot rows, as in production.

    .venv/bin/python benchmarks/ledger_bench.py            # both backends, c = 1, 16, 64
    .venv/bin/python benchmarks/ledger_bench.py --backends sqlite --seconds 3 --json
    .venv/bin/python benchmarks/ledger_bench.py --commit    # + commit each reservation, as the router does

Without ``--commit`` reservations are never settled, so every one stays open: from c=2 on the
writer then always waits GATHER_SECONDS for company (core.py, "Gathering"), which a router,
settling each request's reservation, does only while other requests are in flight. With
``--commit`` each task commits its reservation after a pause (``--node-ms``, the node call)
and the latency and CPU are per request (reservation + commit).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.support

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy.api import Charge
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger

POLICY = PrivacyConfig(budgets={"per_user": 10.0, "per_department": 1e9, "per_hospital": 1e9})


async def run_cell(
    ledger_cfg: LedgerConfig, concurrency: int, seconds: float, commit: bool = False, node_ms: float = 0.0
) -> dict[str, float]:
    ledger = await open_ledger(ledger_cfg, POLICY)
    event = event_for_request(POLICY, None)
    latencies: list[float] = []
    ids = itertools.count()
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            i = next(ids)
            charge = Charge(f"user-{i}", f"dept-{i % 8}", (f"h{i % 4}",), event, query_hash="0" * 64)
            t0 = time.perf_counter()
            r = await ledger.reserve(charge)
            if commit:
                t1 = time.perf_counter()
                await asyncio.sleep(node_ms / 1000)
                t2 = time.perf_counter()
                await ledger.commit(r.id, ("node",))
                t0 += t2 - t1  # the node's time is not the ledger's
            latencies.append(time.perf_counter() - t0)

    # warm-up (schema, caches) outside the measurement
    warm = await ledger.reserve(Charge("warm", "dept-0", ("h0",), event))
    await ledger.commit(warm.id)  # else it counts as a request in flight (core.py, "Gathering")
    t_start, cpu_start = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    await ledger.close()
    lat = sorted(latencies)
    return {
        "reservations": len(lat),
        "per_second": len(lat) / elapsed,
        "p50_ms": 1000 * statistics.median(lat),
        "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
        # CPU of this process (event loop + writer thread) per reservation: what bounds the
        # rate on a busy machine; 1000 / cpu_ms is the rate one free core would sustain.
        "cpu_ms_per_reservation": 1000 * cpu / max(1, len(lat)),
    }


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--commit", action="store_true", help="commit each reservation (reserve + commit)")
    p.add_argument("--node-ms", type=float, default=5.0, help="with --commit: pause between the two")
    args = p.parse_args()
    if not args.json:
        with open("/proc/loadavg") as fh:
            print(
                f"load average before the run: {fh.read().split()[0]} on {os.cpu_count()} cores", flush=True
            )
    backends = args.backends.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fdp-ledger-bench-"))
    key = tmp / "audit.keys"
    key.write_text(f"bench {secrets.token_hex(32)}\n")
    results: list[dict[str, object]] = []
    server = None
    try:
        for backend in backends:
            if backend == "postgres":
                from tests.support.postgres import start_postgres

                server = await asyncio.to_thread(start_postgres)
            for c in levels:
                if backend == "sqlite":
                    cfg = LedgerConfig(sqlite_path=str(tmp / f"bench-{c}.sqlite"), audit_key_file=str(key))
                else:
                    assert server is not None
                    dsn_file = tmp / f"dsn-{c}"
                    dsn_file.write_text(await asyncio.to_thread(server.new_database))
                    cfg = LedgerConfig(
                        backend="postgres", postgres_dsn_file=str(dsn_file), audit_key_file=str(key)
                    )
                cell = await run_cell(cfg, c, args.seconds, args.commit, args.node_ms)
                results.append({"backend": backend, "concurrency": c, **cell})
                if not args.json:
                    print(
                        f"{backend:9s} c={c:3d}  {cell['per_second']:8.0f} reservations/s  "
                        f"p50 {cell['p50_ms']:7.2f} ms  p99 {cell['p99_ms']:7.2f} ms  "
                        f"cpu {cell['cpu_ms_per_reservation']:.3f} ms/res  (n={cell['reservations']})",
                        flush=True,
                    )
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
