"""`fdp-router privacy ...` and `fdp-router ledger ...`: the privacy core's command line.

SREs use these to reason about policies and to check the audit trail:

- ``privacy epsilon``: the tightest valid epsilon of K compositions of one mechanism, and
  which accountant (PLD, RDP, basic) gave it;
- ``privacy plan``: how many such queries the admission filter admits under a budget,
  next to basic composition and PLD for a fixed, non-adaptive sequence;
- ``ledger verify``: checks the audit chain and reports the first broken record
  (exit 1 when broken, 2 on bad input).

Registered by ``fdp_router.cli`` through ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from fdp_router.config import LedgerConfig, load_config
from fdp_router.privacy import filter as flt
from fdp_router.privacy.accounting import epsilon_pld, tightest
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.events import Event, GaussianEvent, LaplaceEvent, PureDpEvent, SelfComposedEvent
from fdp_router.privacy.mechanisms import check_delta, epsilon_for_sigma


def register(subparsers: Any) -> None:
    privacy = subparsers.add_parser("privacy", help="reason about privacy policies (epsilon, plans)")
    psub = privacy.add_subparsers(dest="privacy_command", metavar="SUBCOMMAND", required=True)

    eps = psub.add_parser("epsilon", help="tightest valid epsilon of K compositions of one mechanism")
    _mechanism_args(eps)
    eps.add_argument("--count", type=int, default=1, help="number of compositions K (default 1)")
    eps.add_argument("--delta", type=float, required=True)
    eps.add_argument("--json", action="store_true", help="print a JSON object")
    eps.set_defaults(func=cmd_epsilon)

    plan = psub.add_parser("plan", help="how many queries a budget admits (filter vs basic vs PLD)")
    _mechanism_args(plan)
    plan.add_argument("--epsilon", type=float, required=True, help="total epsilon budget")
    plan.add_argument("--delta", type=float, required=True)
    plan.add_argument("--json", action="store_true", help="print a JSON object")
    plan.set_defaults(func=cmd_plan)

    ledger = subparsers.add_parser("ledger", help="inspect the privacy ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)
    ver = lsub.add_parser("verify", help="check the audit hash chain; report the first broken record")
    src = ver.add_mutually_exclusive_group(required=True)
    src.add_argument("--sqlite", metavar="PATH", help="SQLite ledger file")
    src.add_argument("--dsn", help="PostgreSQL DSN")
    src.add_argument("--config", metavar="FILE", help="router config file (uses its ledger section)")
    ver.add_argument("--key-file", help="audit keyring file (default: config / $FDP_AUDIT_KEY / dev key)")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_verify)


def _mechanism_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mechanism", choices=["gaussian", "laplace", "pure_dp"], required=True)
    p.add_argument(
        "--noise-multiplier",
        type=float,
        help="sigma / L2 sensitivity (gaussian) or scale b / L1 sensitivity (laplace)",
    )
    p.add_argument(
        "--query-epsilon",
        type=float,
        help="pure_dp: the epsilon of one release (what a PHI node with mechanism PureDP is charged)",
    )


def _single(args: argparse.Namespace) -> Event:
    if args.mechanism == "pure_dp":
        if args.query_epsilon is None:
            raise InvalidPrivacyRequest("--query-epsilon", "is required with --mechanism pure_dp")
        return PureDpEvent(args.query_epsilon)
    if args.noise_multiplier is None:
        raise InvalidPrivacyRequest("--noise-multiplier", f"is required with --mechanism {args.mechanism}")
    if args.mechanism == "gaussian":
        return GaussianEvent(args.noise_multiplier)
    return LaplaceEvent(args.noise_multiplier)


def _describe(args: argparse.Namespace) -> str:
    if args.mechanism == "pure_dp":
        return f"pure_dp(epsilon {args.query_epsilon:g})"
    return f"{args.mechanism}(noise multiplier {args.noise_multiplier:g})"


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_epsilon(args: argparse.Namespace) -> int:
    try:
        if args.count < 1:
            raise InvalidPrivacyRequest("--count", f"must be >= 1, got {args.count}")
        event = SelfComposedEvent(_single(args), args.count)
        rep = tightest(event, args.delta)
    except InvalidPrivacyRequest as exc:
        return _fail(str(exc))
    out = {
        "epsilon": rep.epsilon,
        "delta": rep.delta,
        "method": rep.method,
        "by_method": rep.by_method,
        "mechanism": args.mechanism,
        "noise_multiplier": args.noise_multiplier,
        "query_epsilon": args.query_epsilon,
        "count": args.count,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{args.count} x {_describe(args)}: "
            f"({rep.epsilon:.6g}, {rep.delta:g})-DP  [tightest: {rep.method}; "
            + ", ".join(f"{k} {v:.6g}" for k, v in rep.by_method.items())
            + "]"
        )
    return 0


def basic_count(single: Event, epsilon: float, delta: float) -> int:
    """Largest k with k * eps_i <= epsilon under basic composition (delta split evenly over k)."""
    if isinstance(single, LaplaceEvent | PureDpEvent):
        per = 1.0 / single.noise_multiplier if isinstance(single, LaplaceEvent) else single.epsilon
        k = math.floor(epsilon / per)
        return k - 1 if k > 0 and k * per > epsilon else k
    if not isinstance(single, GaussianEvent):
        raise InvalidPrivacyRequest("--mechanism", f"no basic-composition count for {type(single).__name__}")

    def fits(k: int) -> bool:
        return k * epsilon_for_sigma(single.noise_multiplier, delta / k) <= epsilon

    return _largest(fits)


def pld_count(single: Event, epsilon: float, delta: float) -> int:
    """Largest k whose k-fold composition (fixed, non-adaptive) is (epsilon, delta)-DP by PLD.

    A coarser discretisation (1e-3) keeps this fast; PLD's pessimistic rounding stays valid."""
    return _largest(
        lambda k: epsilon_pld(SelfComposedEvent(single, k), delta, discretization=1e-3) <= epsilon
    )


def _largest(fits: Any, cap: int = 1 << 20) -> int:
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def plan(single: Event, epsilon: float, delta: float) -> dict[str, Any]:
    if not (isinstance(epsilon, float | int) and math.isfinite(epsilon) and epsilon > 0):
        raise InvalidPrivacyRequest("--epsilon", f"must be a finite number > 0, got {epsilon!r}")
    d = check_delta(delta, "--delta")
    return {
        "epsilon": float(epsilon),
        "delta": d,
        "admitted": flt.admitted_count(single, epsilon, d),
        "basic_composition": basic_count(single, epsilon, d),
        "pld_fixed_sequence": pld_count(single, epsilon, d),
        "filter": f"Rényi filter at {len(flt.ORDERS)} orders, delta split over orders",
    }


def cmd_plan(args: argparse.Namespace) -> int:
    try:
        out = plan(_single(args), args.epsilon, args.delta)
    except InvalidPrivacyRequest as exc:
        return _fail(str(exc))
    out.update(
        mechanism=args.mechanism, noise_multiplier=args.noise_multiplier, query_epsilon=args.query_epsilon
    )
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"budget ({out['epsilon']:g}, {out['delta']:g}), {_describe(args)}:\n"
            f"  admitted by the admission filter (adaptive-safe): {out['admitted']}\n"
            f"  basic composition:                                {out['basic_composition']}\n"
            f"  PLD, fixed non-adaptive sequence (not a filter):  {out['pld_fixed_sequence']}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fdp_router.privacy.audit import load_keyring, parse_keyring
    from fdp_router.privacy.ledger import verify_ledger

    try:
        if args.config:
            ledger_cfg = load_config(args.config).ledger
        elif args.sqlite:
            if not Path(args.sqlite).is_file():
                raise InvalidPrivacyRequest("--sqlite", f"{args.sqlite} does not exist")
            ledger_cfg = LedgerConfig(backend="sqlite", sqlite_path=args.sqlite)
        else:
            ledger_cfg = LedgerConfig(backend="postgres")
        if args.key_file:
            keyring = parse_keyring(Path(args.key_file).read_text(encoding="utf-8"), "--key-file")
        elif ledger_cfg.backend == "sqlite":
            path = Path(ledger_cfg.sqlite_path)
            dev = path.with_name(path.name + ".audit-key")
            keyring = load_keyring(ledger_cfg, dev_key_path=dev if dev.exists() else None)
        else:
            keyring = load_keyring(ledger_cfg)
        if ledger_cfg.backend == "sqlite":
            from fdp_router.privacy.ledger.sqlite import SqliteDriver

            driver: Any = SqliteDriver(ledger_cfg.sqlite_path)
        else:
            from fdp_router.privacy.ledger import postgres_dsn
            from fdp_router.privacy.ledger.postgres import PostgresDriver

            driver = PostgresDriver(args.dsn or postgres_dsn(ledger_cfg))
        result = verify_ledger(driver, keyring)
    except (InvalidPrivacyRequest, OSError) as exc:
        return _fail(str(exc))
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "checked": result.checked,
                    "first_bad_seq": result.first_bad_seq,
                    "reason": result.reason,
                }
            )
        )
    elif result.ok:
        print(f"ok: {result.checked} audit records, chain intact")
    elif result.first_bad_seq is None:
        print(f"BROKEN: {result.reason} (the {result.checked} audit records themselves are intact)")
    else:
        print(
            f"BROKEN at record {result.first_bad_seq}: {result.reason} "
            f"({result.checked} records verified before it)"
        )
    return 0 if result.ok else 1
