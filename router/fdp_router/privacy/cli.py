"""`fdp-router privacy ...` and `fdp-router ledger ...`: the privacy core's command line.

SREs use these to reason about policies and to check the audit trail:

- ``privacy epsilon``: the tightest valid epsilon of K compositions of one mechanism, and
  which accountant (PLD, RDP, basic) gave it;
- ``privacy plan``: how many such queries the admission filter admits under a budget,
  next to basic composition and PLD for a fixed, non-adaptive sequence;
- ``ledger verify``: checks the audit chain, every row's MAC, the budgets against the trail,
  optionally against an exported checkpoint (``--expect-head``), incrementally from one
  (``--since``) and the archived segments (``--archive``); reports the first broken record
  (exit 1 when broken, 2 on bad input or a missing database, which it never creates);
- ``ledger checkpoint``: a signed checkpoint of the head, to keep outside the database;
- ``ledger prune``: archive and prune by ``ledger.retention`` (what the router does itself);
- ``ledger backup`` / ``ledger restore``: SQLite's online backup API (PostgreSQL: its tools);
- ``ledger migrate``: a schema 1 ledger to schema 2, after verifying it.

Registered by ``fdp_router.cli`` through ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fdp_router.config import LedgerConfig, load_config
from fdp_router.privacy import filter as flt
from fdp_router.privacy.accounting import epsilon_pld, tightest
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.events import Event, GaussianEvent, LaplaceEvent, PureDpEvent, SelfComposedEvent
from fdp_router.privacy.mechanisms import check_delta, epsilon_for_sigma

if TYPE_CHECKING:
    from fdp_router.privacy.audit import Checkpoint, Keyring
    from fdp_router.privacy.ledger.core import SqlDriver


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

    ledger = subparsers.add_parser("ledger", help="verify, checkpoint, prune, back up the privacy ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND", required=True)
    ver = lsub.add_parser(
        "verify", help="check the audit trail, row MACs and budgets; report the first break"
    )
    _source_args(ver, required=False)
    ver.add_argument(
        "--expect-head",
        metavar="FILE|JSON",
        help="a checkpoint exported earlier: fail if the ledger is shorter than it or different",
    )
    ver.add_argument(
        "--since",
        metavar="FILE|JSON",
        help="verify incrementally from this checkpoint (chain, tags, row MACs; no budget replay)",
    )
    ver.add_argument("--archive", metavar="DIR", help="also verify the archived segments in DIR (offline)")
    ver.add_argument("--json", action="store_true")
    ver.set_defaults(func=cmd_verify)

    cp = lsub.add_parser("checkpoint", help="print (and write) a signed checkpoint of the ledger's head")
    _source_args(cp)
    cp.add_argument("--out", metavar="FILE", help="also write it to FILE (atomically)")
    cp.add_argument(
        "--since",
        metavar="FILE|JSON",
        help="the previous checkpoint: verify the trail from it first and refuse to sign a broken one",
    )
    cp.set_defaults(func=cmd_checkpoint)

    pr = lsub.add_parser(
        "prune", help="archive audit records older than ledger.retention, prune closed windows"
    )
    pr.add_argument("--config", metavar="FILE", required=True, help="router config file")
    pr.add_argument("--key-file", help="audit keyring file (default: the config's)")
    pr.set_defaults(func=cmd_prune)

    bk = lsub.add_parser("backup", help="a consistent copy of a live SQLite ledger (online backup API)")
    _source_args(bk, dsn=False, key=False)
    bk.add_argument("--out", metavar="FILE", required=True, help="the backup file (must not exist)")
    bk.set_defaults(func=cmd_backup)

    rs = lsub.add_parser("restore", help="restore a SQLite ledger from a backup (no router may be using it)")
    _source_args(rs, dsn=False)
    rs.add_argument("--from", dest="backup", metavar="FILE", required=True, help="the backup file")
    rs.add_argument("--force", action="store_true", help="overwrite an existing ledger database")
    rs.set_defaults(func=cmd_restore)

    mg = lsub.add_parser("migrate", help="convert a schema 1 ledger to schema 2 (verifies it first)")
    _source_args(mg)
    mg.set_defaults(func=cmd_migrate)


def _source_args(
    p: argparse.ArgumentParser, *, required: bool = True, dsn: bool = True, key: bool = True
) -> None:
    src = p.add_mutually_exclusive_group(required=required)
    src.add_argument("--sqlite", metavar="PATH", help="SQLite ledger file")
    if dsn:
        src.add_argument("--dsn", help="PostgreSQL DSN")
    src.add_argument("--config", metavar="FILE", help="router config file (uses its ledger section)")
    if key:
        p.add_argument("--key-file", help="audit keyring file (default: config / $FDP_AUDIT_KEY / dev key)")


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


class _NoDatabase(Exception):
    """The named ledger database does not exist (exit 2; nothing is created)."""


def _ledger_cfg(args: argparse.Namespace) -> tuple[LedgerConfig, str]:
    """The ledger config the arguments name, and a phrase for messages."""
    if getattr(args, "config", None):
        return load_config(args.config).ledger, f"the ledger of {args.config}"
    if getattr(args, "sqlite", None):
        return LedgerConfig(backend="sqlite", sqlite_path=args.sqlite), args.sqlite
    return LedgerConfig(backend="postgres"), "the PostgreSQL ledger"


def _keyring(args: argparse.Namespace, ledger_cfg: LedgerConfig) -> Keyring:
    from fdp_router.privacy.audit import load_keyring, parse_keyring

    if getattr(args, "key_file", None):
        return parse_keyring(Path(args.key_file).read_text(encoding="utf-8"), "--key-file")
    if ledger_cfg.backend == "sqlite":
        path = Path(ledger_cfg.sqlite_path)
        dev = path.with_name(path.name + ".audit-key")
        return load_keyring(ledger_cfg, dev_key_path=dev if dev.exists() else None)
    return load_keyring(ledger_cfg)


def _driver(args: argparse.Namespace, ledger_cfg: LedgerConfig, *, read_only: bool) -> SqlDriver:
    """The database driver; an SQLite file must exist (never created here)."""
    if ledger_cfg.backend == "sqlite":
        from fdp_router.privacy.ledger.sqlite import SqliteDriver

        path = Path(ledger_cfg.sqlite_path)
        if not path.is_file():
            where = f" (ledger.sqlite_path in {args.config})" if getattr(args, "config", None) else ""
            raise _NoDatabase(f"no ledger database at {path}{where}; nothing was created")
        return SqliteDriver(path, ledger_cfg.timeouts, read_only=read_only)
    from fdp_router.privacy.ledger import postgres_dsn
    from fdp_router.privacy.ledger.postgres import PostgresDriver

    return PostgresDriver(getattr(args, "dsn", None) or postgres_dsn(ledger_cfg), ledger_cfg.timeouts)


def _checkpoint_arg(value: str | None, flag: str) -> Checkpoint | None:
    from fdp_router.privacy.audit import parse_checkpoint

    if value is None:
        return None
    text = value if value.lstrip().startswith("{") else Path(value).read_text(encoding="utf-8")
    return parse_checkpoint(text, flag)


def _guarded(fn: Callable[[], int]) -> int:
    """Run a ledger command: bad input, a missing database or an unreadable ledger exit 2."""
    from fdp_router.privacy.api import LedgerIntegrityError, LedgerUnavailable

    try:
        return fn()
    except (InvalidPrivacyRequest, _NoDatabase, LedgerIntegrityError, OSError, ValueError) as exc:
        return _fail(str(exc))
    except LedgerUnavailable as exc:
        return _fail(str(exc))
    except Exception as exc:  # a database error (connection refused, not a ledger...)
        if type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg"):
            return _fail(f"{type(exc).__name__}: {exc}")
        raise


def cmd_verify(args: argparse.Namespace) -> int:
    return _guarded(lambda: _verify(args))


def _verify(args: argparse.Namespace) -> int:
    from fdp_router.privacy.ledger import verify_archive, verify_ledger

    expect = _checkpoint_arg(args.expect_head, "--expect-head")
    since = _checkpoint_arg(args.since, "--since")
    if not (args.sqlite or args.dsn or args.config):
        if not args.archive:
            raise InvalidPrivacyRequest("--sqlite/--dsn/--config", "name the ledger (or --archive DIR alone)")
        if args.key_file is None:
            raise InvalidPrivacyRequest("--key-file", "is required to verify an archive on its own")
        result = verify_archive(args.archive, _keyring(args, LedgerConfig()))
    else:
        ledger_cfg, _ = _ledger_cfg(args)
        driver = _driver(args, ledger_cfg, read_only=True)
        try:
            result = verify_ledger(
                driver, _keyring(args, ledger_cfg), expect_head=expect, since=since, archive=args.archive
            )
        finally:
            driver.close()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": result.ok,
                    "checked": result.checked,
                    "first_bad_seq": result.first_bad_seq,
                    "reason": result.reason,
                    "head_seq": result.head_seq,
                    "start_seq": result.start_seq,
                    "notes": list(result.notes),
                }
            )
        )
    elif result.ok:
        print(f"ok: {result.checked} audit records, chain intact")
        for note in result.notes:
            print(f"  note: {note}")
    elif result.first_bad_seq is None:
        print(f"BROKEN: {result.reason} (the {result.checked} audit records themselves are intact)")
    else:
        print(
            f"BROKEN at record {result.first_bad_seq}: {result.reason} "
            f"({result.checked} records verified before it)"
        )
    return 0 if result.ok else 1


def cmd_checkpoint(args: argparse.Namespace) -> int:
    return _guarded(lambda: _checkpoint(args))


def _checkpoint(args: argparse.Namespace) -> int:
    from fdp_router.privacy.ledger import verify_ledger
    from fdp_router.privacy.ledger.maintenance import make_checkpoint

    ledger_cfg, _ = _ledger_cfg(args)
    driver = _driver(args, ledger_cfg, read_only=True)
    try:
        keyring = _keyring(args, ledger_cfg)
        since = _checkpoint_arg(args.since, "--since")
        if since is not None:
            result = verify_ledger(driver, keyring, since=since)
            if not result.ok:
                print(f"BROKEN since the previous checkpoint: {result.reason}; not signed", file=sys.stderr)
                return 1
        cp = make_checkpoint(driver, keyring)
    finally:
        driver.close()
    text = cp.to_json()
    if args.out:
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, out)
    print(text)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    return _guarded(lambda: _prune(args))


def _prune(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fdp_router.privacy.ledger.maintenance import prune

    cfg = load_config(args.config)
    if cfg.ledger.retention.audit_seconds is None:
        raise InvalidPrivacyRequest("ledger.retention.audit_seconds", "is not set: nothing to prune")
    driver = _driver(args, cfg.ledger, read_only=False)
    try:
        report = prune(
            driver, _keyring(args, cfg.ledger), cfg.privacy, cfg.ledger.retention, datetime.now(UTC)
        )
    finally:
        driver.close()
    print(report.describe())
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    return _guarded(lambda: _backup(args))


def _backup(args: argparse.Namespace) -> int:
    ledger_cfg, _ = _ledger_cfg(args)
    if ledger_cfg.backend != "sqlite":
        raise InvalidPrivacyRequest(
            "ledger.backend",
            "PostgreSQL ledgers are backed up with PostgreSQL's tools (pg_dump, or pg_basebackup with WAL "
            'archiving): docs/ledger-operations.md, "Backup and restore"',
        )
    driver = _driver(args, ledger_cfg, read_only=True)
    try:
        driver.backup_to(args.out)  # type: ignore[attr-defined]
    finally:
        driver.close()
    print(f"backup written to {args.out}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    return _guarded(lambda: _restore(args))


def _restore(args: argparse.Namespace) -> int:
    from fdp_router.privacy.ledger import verify_ledger
    from fdp_router.privacy.ledger.sqlite import SqliteDriver

    ledger_cfg, _ = _ledger_cfg(args)
    if ledger_cfg.backend != "sqlite":
        raise InvalidPrivacyRequest(
            "ledger.backend", "restore PostgreSQL ledgers with pg_restore: docs/ledger-operations.md"
        )
    backup = Path(args.backup)
    if not backup.is_file():
        raise _NoDatabase(f"no backup at {backup}")
    target = Path(ledger_cfg.sqlite_path)
    if target.exists() and not args.force:
        raise InvalidPrivacyRequest(
            "--force", f"{target} exists; pass --force to overwrite it with the backup"
        )
    keyring = _keyring(args, ledger_cfg)
    source = SqliteDriver(backup, read_only=True)
    try:
        checked = verify_ledger(source, keyring)
    finally:
        source.close()
    if not checked.ok:
        print(f"the backup does not verify: {checked.reason}; nothing restored", file=sys.stderr)
        return 1
    SqliteDriver(target, ledger_cfg.timeouts).restore_from(backup)
    print(
        f"restored {target} from {backup} (head: record {checked.head_seq}). A router with "
        "ledger.checkpoint_file refuses it if a later checkpoint was exported (ledger.restore_gap)."
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    return _guarded(lambda: _migrate(args))


def _migrate(args: argparse.Namespace) -> int:
    from fdp_router.privacy.ledger.maintenance import migrate

    ledger_cfg, _ = _ledger_cfg(args)
    driver = _driver(args, ledger_cfg, read_only=False)
    try:
        report = migrate(driver, _keyring(args, ledger_cfg))
    finally:
        driver.close()
    print(report.detail)
    return 0
