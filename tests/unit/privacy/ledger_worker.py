"""A separate OS process that uses the ledger (run by the multi-process and crash tests).

  hammer: try --n reservations for one user, --concurrency at a time; print "ADMITTED k".
  load:   reserve forever for fresh users and print "ACK <id>" after each acknowledged
          reservation (the crash test SIGKILLs us and checks every ACK survived).
A --start-file barrier lets several workers start hammering at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy.api import BudgetExceeded, Charge
from fdp_router.privacy.events import event_for_request
from fdp_router.privacy.ledger import open_ledger


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["hammer", "load"])
    p.add_argument("--ledger-json", required=True)
    p.add_argument("--policy-json", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--user", default="alice")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--start-file")
    args = p.parse_args()
    ledger_cfg = LedgerConfig.model_validate_json(args.ledger_json)
    cfg = PrivacyConfig.model_validate_json(args.policy_json)
    ledger = await open_ledger(ledger_cfg, cfg)
    event = event_for_request(cfg, None)
    print("READY", flush=True)
    if args.start_file:
        while not Path(args.start_file).exists():
            await asyncio.sleep(0.005)
    if args.mode == "hammer":
        admitted = 0
        sem = asyncio.Semaphore(args.concurrency)

        async def attempt() -> None:
            nonlocal admitted
            async with sem:
                try:
                    await ledger.reserve(Charge(args.user, "dept", ("h1",), event))
                    admitted += 1
                except BudgetExceeded:
                    pass

        await asyncio.gather(*(attempt() for _ in range(args.n)))
        await ledger.close()
        print(f"ADMITTED {admitted}", flush=True)
        return 0

    counter = 0

    async def loader(worker: int) -> None:
        nonlocal counter
        while True:
            counter += 1
            user = f"u{os.getpid()}-{worker}-{counter}"
            r = await ledger.reserve(Charge(user, "dept", ("h1",), event))
            sys.stdout.write(f"ACK {r.id}\n")
            sys.stdout.flush()
            if counter % 2 == 0:
                await ledger.commit(r.id, ("n1",))

    await asyncio.gather(*(loader(i) for i in range(args.concurrency)))
    return 0


if __name__ == "__main__":
    t0 = time.monotonic()
    raise SystemExit(asyncio.run(main()))
