"""Queries admitted under (epsilon=10, delta=1e-5): our Rényi filter vs basic composition.

For Gaussian noise multipliers 1, 2 and 5 this prints, per user budget:

- admitted by the admission filter (adaptive-safe), computed from the rule *and* measured
  by reserving against a real SQLite ledger until it refuses;
- basic composition (delta split evenly over the k queries, each priced by the analytic
  Gaussian);
- PLD for a fixed, non-adaptive sequence (not a valid admission rule; an upper reference).

    .venv/bin/python benchmarks/admission_bench.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy.api import BudgetExceeded, Charge
from fdp_router.privacy.cli import plan
from fdp_router.privacy.events import GaussianEvent
from fdp_router.privacy.ledger import open_ledger

EPSILON, DELTA = 10.0, 1e-5


async def measured(z: float, tmp: Path) -> int:
    key = tmp / "k"
    key.write_text(f"b {secrets.token_hex(32)}\n")
    cfg = PrivacyConfig(
        delta=DELTA, budgets={"per_user": EPSILON, "per_department": 1e9, "per_hospital": 1e9}
    )
    ledger = await open_ledger(
        LedgerConfig(sqlite_path=str(tmp / f"adm-{z}.sqlite"), audit_key_file=str(key)), cfg
    )
    n = 0
    try:
        while True:
            await ledger.reserve(Charge("alice", "dept", ("h1",), GaussianEvent(z)))
            n += 1
    except BudgetExceeded:
        return n
    finally:
        await ledger.close()


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fdp-admission-bench-"))
    rows = []
    t0 = time.perf_counter()
    try:
        for z in (1.0, 2.0, 5.0):
            row = plan(GaussianEvent(z), EPSILON, DELTA)
            row["noise_multiplier"] = z
            row["admitted_by_real_ledger"] = await measured(z, tmp)
            row["filter_over_basic"] = row["admitted"] / max(1, row["basic_composition"])
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"budget (epsilon={EPSILON:g}, delta={DELTA:g}) per user, Gaussian mechanism")
        print(
            "| noise multiplier | filter (rule) | filter (real ledger) | basic composition | filter / basic "
            "| PLD, fixed sequence |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['noise_multiplier']:g} | {r['admitted']} | {r['admitted_by_real_ledger']} | "
                f"{r['basic_composition']} | {r['filter_over_basic']:.1f}x | {r['pld_fixed_sequence']} |"
            )
        print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
