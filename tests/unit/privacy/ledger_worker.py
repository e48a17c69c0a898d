"""A separate OS process that uses the ledger (run by the multi-process and crash tests).

  hammer: per round, wait for <start-file>-<round>, try --n reservations for user
          <user><round>, --concurrency at a time; print "ADMITTED <round> k".
  load:   reserve forever for fresh users and print "ACK <id>" after each acknowledged
          reservation (the crash test SIGKILLs us and checks every ACK survived).
A --start-file barrier lets several workers start hammering at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
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
    p.add_argument("--rounds", type=int, default=1, help="hammer: rounds, user <user><round> each")
    args = p.parse_args()
    ledger_cfg = LedgerConfig.model_validate_json(args.ledger_json)
    cfg = PrivacyConfig.model_validate_json(args.policy_json)
    ledger = await open_ledger(ledger_cfg, cfg)
    event = event_for_request(cfg, None)
    if args.mode == "hammer":
        for round_ in range(args.rounds):
            print(f"READY {round_}", flush=True)
            if args.start_file:  # barrier: every worker starts the round at once
                while not Path(f"{args.start_file}-{round_}").exists():
                    await asyncio.sleep(0.002)
            admitted = 0
            sem = asyncio.Semaphore(args.concurrency)
            user = f"{args.user}{round_}"

            async def attempt(user: str = user) -> None:
                nonlocal admitted
                async with sem:
                    try:
                        await ledger.reserve(Charge(user, "dept", ("h1",), event))
                        admitted += 1
                    except BudgetExceeded:
                        pass

            await asyncio.gather(*(attempt() for _ in range(args.n)))
            print(f"ADMITTED {round_} {admitted}", flush=True)
        await ledger.close()
        return 0

    print("READY", flush=True)
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
    raise SystemExit(asyncio.run(main()))
