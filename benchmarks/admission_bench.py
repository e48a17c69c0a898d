"""Queries admitted under (epsilon=10, delta=1e-5): the admission filter, old and new, vs PLD.

For three fixed sequences of identical releases (Gaussian with noise multiplier 5, Gaussian
with noise multiplier 2, a pure-DP node mechanism at epsilon 0.1) this prints how many one
user gets before the budget refuses:

- the admission filter (``fdp_router.privacy.filter``: multi-order Rényi filter, delta split
  over the orders, each order converted by the improved RDP -> DP bound), computed from the
  rule *and* measured by reserving against a real SQLite ledger until it refuses;
- the same filter with the classic conversion B(alpha) = epsilon - log(|orders|/delta)/(alpha-1)
  (what the ledger did before issue 10);
- basic composition (delta split evenly over the k queries, each Gaussian priced by the
  analytic Gaussian; pure DP: k * epsilon);
- RDP and PLD accountants for the *fixed*, non-adaptive sequence (dp-accounting; not valid
  admission rules when epsilons are chosen adaptively: upper references).

    .venv/bin/python benchmarks/admission_bench.py [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from fdp_router.config import LedgerConfig, PrivacyConfig
from fdp_router.privacy import filter as flt
from fdp_router.privacy.accounting import epsilon_pld, epsilon_rdp
from fdp_router.privacy.api import BudgetExceeded, Charge
from fdp_router.privacy.cli import basic_count
from fdp_router.privacy.events import Event, GaussianEvent, PureDpEvent, SelfComposedEvent
from fdp_router.privacy.ledger import open_ledger

EPSILON, DELTA = 10.0, 1e-5
SEQUENCES: tuple[tuple[str, Event], ...] = (
    ("Gaussian, noise multiplier 5", GaussianEvent(5.0)),
    ("Gaussian, noise multiplier 2", GaussianEvent(2.0)),
    ("pure DP, epsilon 0.1", PureDpEvent(0.1)),
)


def classic_count(single: Event, epsilon: float, delta: float) -> int:
    """The filter's count with the classic conversion at delta/|orders| (the rule before issue 10)."""
    log_term = math.log(len(flt.ORDERS) / delta)
    best = 0
    for a, c in zip(flt.ORDERS, flt.rdp_curve(single), strict=True):
        b = epsilon - log_term / (a - 1.0)
        if b >= 0:
            k = math.floor(b / c)
            while k > 0 and k * c > b:
                k -= 1
            best = max(best, k)
    return best


def basic(single: Event, epsilon: float, delta: float) -> int:
    if isinstance(single, PureDpEvent):
        return math.floor(epsilon / single.epsilon + 1e-9)  # 100 x 0.1 is 10, whatever floats say
    return basic_count(single, epsilon, delta)


def largest(fits: Any) -> int:
    lo, hi = 0, 1
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def fixed_count(single: Event, accountant: str) -> int:
    def fits(k: int) -> bool:
        ev = SelfComposedEvent(single, k)
        eps = epsilon_pld(ev, DELTA) if accountant == "pld" else epsilon_rdp(ev, DELTA)
        return eps <= EPSILON

    return largest(fits)


async def measured(single: Event, tmp: Path, name: str) -> int:
    key = tmp / "k"
    key.write_text(f"b {secrets.token_hex(32)}\n")
    cfg = PrivacyConfig(
        delta=DELTA, budgets={"per_user": EPSILON, "per_department": 1e9, "per_hospital": 1e9}
    )
    ledger = await open_ledger(
        LedgerConfig(sqlite_path=str(tmp / f"{name}.sqlite"), audit_key_file=str(key)), cfg
    )
    n = 0
    try:
        while True:
            await ledger.reserve(Charge("alice", "dept", ("h1",), single))
            n += 1
    except BudgetExceeded:
        return n
    finally:
        await ledger.close()


async def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fdp-admission-bench-"))
    rows = []
    t0 = time.perf_counter()
    try:
        for i, (label, single) in enumerate(SEQUENCES):
            rows.append(
                {
                    "sequence": label,
                    "filter": flt.admitted_count(single, EPSILON, DELTA),
                    "filter_real_ledger": await measured(single, tmp, f"seq{i}"),
                    "filter_classic_conversion": classic_count(single, EPSILON, DELTA),
                    "basic_composition": basic(single, EPSILON, DELTA),
                    "rdp_fixed_sequence": fixed_count(single, "rdp"),
                    "pld_fixed_sequence": fixed_count(single, "pld"),
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"queries one user gets under (epsilon={EPSILON:g}, delta={DELTA:g})")
        print(
            "| sequence | filter (rule) | filter (real ledger) | filter, classic conversion | "
            "basic composition | RDP, fixed sequence | PLD, fixed sequence |"
        )
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['sequence']} | {r['filter']} | {r['filter_real_ledger']} | "
                f"{r['filter_classic_conversion']} | {r['basic_composition']} | "
                f"{r['rdp_fixed_sequence']} | {r['pld_fixed_sequence']} |"
            )
        print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
