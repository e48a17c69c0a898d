"""``fdp-router ledger verify``: everything a holder of the audit key can check about a ledger.

Full (default), on the live database:

1. the identity row and the head row (their MACs);
2. the chain from the archived prefix's end (or the genesis) to the head: sequence, chaining,
   every hash and every AES-GCM tag, and that it ends exactly at the head row;
3. every unit, carried-sum and reservation row's MAC;
4. the replay: every unit row of an unpruned window equals what the live trail plus the
   carried sums of archived records add up to (so deleting, editing or rolling back budget
   rows to win budget back is caught), every reservation row's state is what its records say,
   and every reservation row has its reserve record;
5. with ``expect_head`` (a checkpoint exported earlier): the ledger contains it — a ledger
   shorter than it, or different at its record, fails;
6. with ``archive`` (the retention directory): the archived segments, offline
   (chain, hashes, tags, each segment's signed end checkpoint) and that the live database
   starts where the archive ends.

Incremental (``since``: the last checkpoint): the chain and tags from that checkpoint on, and
every row's MAC, without re-reading older records or replaying budgets (the replay needs the
whole live trail). What was not checked is listed in ``VerifyResult.notes``.

Schema 1 databases (before migration) get the old checks: chain, tags, replay by clear key.
Memory: about 150 bytes per live reservation (their states) plus the units.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fdp_router.privacy import filter as flt
from fdp_router.privacy.api import LedgerIntegrityError
from fdp_router.privacy.audit import GENESIS, ChainCheck, Checkpoint, Keyring, VerifyResult, check_checkpoint
from fdp_router.privacy.ledger.archive import list_segments, open_segment
from fdp_router.privacy.ledger.core import (
    AUDIT_COLUMNS,
    SELECT_HEAD,
    SqlDriver,
    compare_to_checkpoint,
    event_cost,
    load_integrity,
)
from fdp_router.privacy.ledger.integrity import Head, Integrity

FETCH = 5000
Unit = tuple[str, str, int]  # (scope, stored key, window)


def _fail(result: VerifyResult, reason: str, seq: int | None = None) -> VerifyResult:
    return replace(result, ok=False, reason=reason, first_bad_seq=seq)


def _event_key(event: Any) -> str:
    return json.dumps(event, sort_keys=True)


@dataclass(slots=True)
class Replay:
    """Per unit: how many times each distinct cost was added (minus refunded). Summing
    costs by count at the end is far cheaper than adding 30-order curves per record; the
    comparison allows for the different float summation order."""

    base_window: int
    stored_key: Any  # (scope, key) -> stored key
    counts: dict[Unit, dict[str, int]] = field(default_factory=dict)
    names: dict[tuple[str, str], str] = field(default_factory=dict)
    reserves: dict[str, tuple[list[Unit], str]] = field(default_factory=dict)  # rid -> (units, event)
    wanted: set[str] = field(default_factory=set)  # rids released in the live trail
    states: dict[str, str] = field(default_factory=dict)  # rid -> state the trail says

    def feed(self, rec: dict[str, Any], data: dict[str, Any] | None) -> None:
        kind, rid = rec["kind"], rec["reservation_id"]
        if kind == "reserve":
            self.states[rid] = "reserved"
            if data is None:
                return
            win = int(data["window_id"])
            units = [
                ("user", self._name("user", data["user_id"]), win),
                ("department", self._name("department", data["department"]), win),
            ]
            units += [("hospital", h, win) for h in dict.fromkeys(data["hospitals"])]
            event = _event_key(data["event"])
            if rid in self.wanted:
                self.reserves[rid] = (units, event)
            self._apply(units, event, 1)
        elif kind in ("commit", "release"):
            if rid in self.states:
                self.states[rid] = "committed" if kind == "commit" else "released"
            if kind != "release" or data is None:
                return
            found = self.reserves.pop(rid, None)
            if found is None and "units" in data:  # its reserve record was archived
                win = int(data["window_id"])
                found = ([(str(s), str(k), win) for s, k in data["units"]], _event_key(data["event"]))
            if found is not None:
                self._apply(found[0], found[1], -1)

    def _name(self, scope: str, clear: str) -> str:
        stored: str = self.stored_key(scope, clear)
        self.names[(scope, stored)] = clear
        return stored

    def _apply(self, units: list[Unit], event: str, sign: int) -> None:
        for u in units:
            if u[2] < self.base_window:
                continue
            per = self.counts.get(u)
            if per is None:
                per = self.counts[u] = {}
            per[event] = per.get(event, 0) + sign

    def expected(self) -> dict[Unit, tuple[tuple[float, ...], int]]:
        out = {}
        for u, per in self.counts.items():
            spent = [0.0] * len(flt.ORDERS)
            n = 0
            for event, k in per.items():
                n += k
                for i, c in enumerate(event_cost(event)):
                    spent[i] += k * c
            out[u] = (tuple(spent), n)
        return out

    def label(self, u: Unit) -> str:
        return f"unit {u[0]} {self.names.get((u[0], u[1]), u[1])!r} (window {u[2]})"


def _rows(cur: Any) -> Iterator[tuple[Any, ...]]:
    while True:
        batch = cur.fetchmany(FETCH)
        if not batch:
            return
        yield from batch


def verify_ledger(
    driver: SqlDriver,
    keyring: Keyring | None,
    *,
    expect_head: Checkpoint | None = None,
    since: Checkpoint | None = None,
    archive: str | Path | None = None,
) -> VerifyResult:
    """Check a ledger (see the module docstring); never writes."""
    conn = driver.connect_reader()
    try:
        # One snapshot: a live router's writes between two of its reads would otherwise look
        # like a reservation whose state its records do not explain.
        driver.begin_snapshot(conn)
        cur = conn.cursor()
        if not driver.table_exists(cur, "fdp_head"):
            result = VerifyResult(True, 0, head_seq=0, notes=("no ledger in this database (0 records)",))
            if expect_head is not None and expect_head.seq > 0:
                return _fail(
                    result, f"the database holds no ledger, the checkpoint has {expect_head.seq} records"
                )
            return result
        if not driver.table_exists(cur, "fdp_meta"):
            return _verify_schema1(cur, keyring)
        return _verify(cur, driver, keyring, expect_head, since, archive)
    finally:
        with contextlib.suppress(Exception):
            conn.rollback()
        conn.close()


def _verify(
    cur: Any,
    driver: SqlDriver,
    keyring: Keyring | None,
    expect_head: Checkpoint | None,
    since: Checkpoint | None,
    archive: str | Path | None,
) -> VerifyResult:
    notes: list[str] = []
    integrity: Integrity | None = None
    if keyring is not None:
        try:
            integrity = load_integrity(cur, driver, keyring)
        except LedgerIntegrityError as exc:
            # A wrong or incomplete keyring fails here first: name the first record it cannot
            # authenticate too, as a check of the chain alone would.
            cur.execute(SELECT_HEAD)
            row = cur.fetchone()
            start = (int(row[4]), str(row[5])) if row else (0, GENESIS)
            chain = _chain(cur, driver, keyring, start, None)
            if not chain.ok:
                return replace(chain, reason=f"{chain.reason} ({exc})")
            return VerifyResult(False, 0, None, str(exc))
    else:
        notes.append("no audit key: chain and hashes only (no tags, row MACs, replay or checkpoints)")
    cur.execute(SELECT_HEAD)
    row = cur.fetchone()
    if row is None:
        return VerifyResult(False, 0, None, "the head row is missing (deleted without the audit key)")
    head = Head(*row)
    if integrity is not None and not integrity.head_ok(head):
        return VerifyResult(False, 0, None, "the head row fails its MAC (changed without the audit key)")
    result = VerifyResult(True, 0, head_seq=head.seq, start_seq=head.base_seq)
    for cp, what in ((expect_head, "--expect-head"), (since, "--since")):
        if cp is None:
            continue
        if keyring is None:
            return _fail(result, f"{what} needs the audit key")
        try:
            check_checkpoint(keyring, cp)
        except ValueError as exc:
            return _fail(result, f"{what}: {exc}")
    if expect_head is not None:
        assert integrity is not None
        why = compare_to_checkpoint(cur, driver, integrity, head, expect_head)
        if why is not None:
            return _fail(result, f"not the ledger of the checkpoint: {why}", expect_head.seq)
        if 0 < expect_head.seq < head.base_seq and archive is None:
            return _fail(
                result, f"checkpoint record {expect_head.seq} is archived: pass --archive DIR to check it"
            )
        if 0 < expect_head.seq < head.base_seq:
            got = archived_hash(archive, expect_head.seq) if archive is not None else None
            if got != expect_head.head:
                return _fail(
                    result, f"archived record {expect_head.seq} is not the checkpoint's", expect_head.seq
                )
    if archive is not None:
        check = ChainCheck(keyring)
        arch = _verify_segments(archive, keyring, integrity.ledger_id if integrity else None, check)
        if not arch.ok:
            return replace(arch, reason=f"archive: {arch.reason}")
        end, end_hash = check.last
        if end < head.base_seq:
            return _fail(
                result, f"the archive ends at record {end}, the live database starts after {head.base_seq}"
            )
        # The archive is read outside this snapshot: a prune may have written a segment whose
        # records it has not deleted yet (or did so after the snapshot). Those records must be
        # the live ones: the same hash at the archive's end binds every record before it.
        live_hash = head.base_hash
        if end > head.base_seq:
            cur.execute(driver.sql("SELECT hash FROM fdp_audit WHERE seq = ?"), (end,))
            row = cur.fetchone()
            live_hash = str(row[0]) if row is not None else ""
        if end_hash != live_hash:
            return _fail(result, f"the archive's record {end} is not the live trail's record {end}")
        notes.append(f"archive: {arch.checked} records in segments verified, the live trail continues it")
    elif head.base_seq > 0:
        notes.append(f"records 1..{head.base_seq} are archived (check them with --archive DIR)")

    # The chain, from the archived prefix's end or from the `since` checkpoint.
    start = (head.base_seq, head.base_hash)
    incremental = since is not None and integrity is not None
    if incremental:
        assert since is not None and integrity is not None
        why = compare_to_checkpoint(cur, driver, integrity, head, since)
        if why is not None:
            return _fail(result, f"--since: this ledger does not contain the checkpoint: {why}")
        if since.seq >= head.base_seq:
            start = (since.seq, since.head)
        notes.append(f"incremental from record {start[0]}: no budget replay (run a full verify for it)")
    replay = None
    if integrity is not None and not incremental:
        replay = Replay(head.base_window, integrity.stored_key)
        cur.execute(
            driver.sql("SELECT reservation_id FROM fdp_audit WHERE kind = 'release' AND seq > ?"), (start[0],)
        )
        replay.wanted = {str(r[0]) for r in _rows(cur)}
    chain = _chain(cur, driver, keyring, start, replay, (head.seq, head.hash))
    if not chain.ok:
        return replace(chain, head_seq=head.seq, notes=tuple(notes))
    result = replace(result, checked=chain.checked, start_seq=start[0], notes=tuple(notes))

    if integrity is not None:
        tampered: dict[Unit, str] = {}
        bad = _check_rows(cur, driver, integrity, replay, tampered)
        if bad is not None:
            return _fail(result, bad)
        if replay is not None:  # a tampered row that also disagrees with the trail: say both
            bad = _check_replay(cur, driver, replay, tampered)
            if bad is not None:
                return _fail(result, bad)
        if tampered:
            return _fail(result, next(iter(tampered.values())))
    return result


def _chain(
    cur: Any,
    driver: SqlDriver,
    keyring: Keyring | None,
    start: tuple[int, str],
    replay: Replay | None,
    head: tuple[int, str] | None = None,
) -> VerifyResult:
    """The live chain from `start` (sequence, chaining, hashes, tags; ending at `head`), each
    record fed to `replay`."""
    check = ChainCheck(keyring, start)
    cur.execute(
        driver.sql(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit WHERE seq > ? ORDER BY seq"),  # noqa: S608
        (start[0],),
    )
    for row in _rows(cur):
        rec = dict(zip(AUDIT_COLUMNS, row, strict=True))
        data = check.feed(rec)
        if check.failure is not None:
            return check.failure
        if replay is not None:
            replay.feed(rec, data)
    return check.finish(head)


def _check_rows(
    cur: Any, driver: SqlDriver, integrity: Integrity, replay: Replay | None, tampered: dict[Unit, str]
) -> str | None:
    """Every carry and reservation row's MAC and reservation states against the trail: the
    first failure. Unit rows failing their MAC go to `tampered` (the replay then says what
    they should hold)."""
    for table, mac in (("fdp_units", integrity.unit_mac), ("fdp_carry", integrity.carry_mac)):
        cur.execute(f"SELECT scope, unit_key, window_id, rdp, basic_eps, n_queries, mac FROM {table}")  # noqa: S608
        for scope, key, win, rdp, basic, n, got in _rows(cur):
            if not hmac.compare_digest(mac(scope, key, int(win), rdp, float(basic), int(n)), got):
                name = (
                    replay.label((scope, key, int(win))) if replay else f"unit {scope} {key!r} (window {win})"
                )
                if table == "fdp_units":
                    tampered[(scope, key, int(win))] = (
                        f"{name}: its budget row fails its MAC (changed without the audit key)"
                    )
                    continue
                return f"{name}: its carried-sum row fails its MAC (changed without the audit key)"
    cur.execute(
        "SELECT id, window_id, units, event, epsilon, delta, created_at, mac, state FROM fdp_reservations"
    )
    for rid, win, units, event, eps, delta, created, got, state in _rows(cur):
        want = integrity.reservation_mac(rid, int(win), units, event, float(eps), float(delta), created)
        if not hmac.compare_digest(want, got):
            return f"reservation {rid!r} fails its MAC (changed without the audit key)"
        if replay is not None:
            trail = replay.states.pop(rid, None)
            if trail is None:
                return f"reservation {rid!r} has no reserve record in the live trail"
            if trail != state:
                return f"reservation {rid!r} is {state!r} but its records say {trail!r}"
    if replay is not None:
        # Reservations the trail knows but the table lacks were deleted (only pruning may).
        for rid in replay.states:
            return f"reservation {rid!r} is in the trail but its row is missing"
    return None


def _check_replay(cur: Any, driver: SqlDriver, replay: Replay, tampered: dict[Unit, str]) -> str | None:
    expected = replay.expected()
    cur.execute(
        driver.sql("SELECT scope, unit_key, window_id, rdp, n_queries FROM fdp_carry WHERE window_id >= ?"),
        (replay.base_window,),
    )
    for scope, key, win, rdp, n in _rows(cur):
        u = (str(scope), str(key), int(win))
        spent, k = expected.get(u, (flt.zero(), 0))
        expected[u] = (flt.add(spent, json.loads(rdp)), k + int(n))
    cur.execute(
        driver.sql("SELECT scope, unit_key, window_id, rdp, n_queries FROM fdp_units WHERE window_id >= ?"),
        (replay.base_window,),
    )
    stored = {(str(s), str(k), int(w)): (tuple(json.loads(r)), int(n)) for s, k, w, r, n in _rows(cur)}
    for u in sorted(set(expected) | set(stored)):
        exp_spent, exp_n = expected.get(u, (flt.zero(), 0))
        got_spent, got_n = stored.get(u, (flt.zero(), 0))
        close = all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(exp_spent, got_spent, strict=True)
        )
        if exp_n != got_n or not close:
            return (
                f"{replay.label(u)} records {got_n} queries but the audit trail replays to {exp_n}"
                + ("" if close else " (RDP sums differ)")
                + ("; its row fails its MAC (changed without the audit key)" if u in tampered else "")
            )
    return None


def archived_hash(archive: str | Path, seq: int) -> str | None:
    for info in list_segments(archive):
        if info.first <= seq <= info.last:
            for rec in open_segment(info).records():
                if int(rec["seq"]) == seq:
                    return str(rec["hash"])
    return None


def verify_archive(
    archive: str | Path, keyring: Keyring | None, *, ledger_id: str | None = None
) -> VerifyResult:
    """Check the archived segments offline: one chain from the genesis, every hash and tag,
    each segment's signed end checkpoint (ledger id, record, hash). `head_seq`: the last
    archived record."""
    return _verify_segments(archive, keyring, ledger_id, ChainCheck(keyring))


def _verify_segments(
    archive: str | Path, keyring: Keyring | None, ledger_id: str | None, check: ChainCheck
) -> VerifyResult:
    """`verify_archive`, feeding `check` (whose `last` is then the last archived record)."""
    path = Path(archive)
    if not path.is_dir():
        return VerifyResult(False, 0, None, f"{path} is not a directory")
    prev_hashes: dict[int, str] = {}
    segments = list_segments(path)
    for info in segments:
        seg = open_segment(info)
        header = seg.header
        if ledger_id is not None and header.get("ledger_id") != ledger_id:
            return VerifyResult(
                False,
                check.checked,
                info.first,
                f"{info.path.name} is of ledger {header.get('ledger_id')}, not {ledger_id}",
            )
        ledger_id = str(header.get("ledger_id"))
        if info.first > check.expected_seq:
            return VerifyResult(
                False,
                check.checked,
                check.expected_seq,
                f"records {check.expected_seq}..{info.first - 1} are not in the archive",
            )
        # A copy overlapping what was checked (an interrupted prune, then a longer one) must
        # hold the same records; its own end checkpoint is checked like any other.
        seg_last = (info.first - 1, str(header.get("prev_hash", "")))
        for rec in seg.records():
            seq = int(rec["seq"])
            if seq < check.expected_seq:
                if prev_hashes.get(seq) != rec["hash"]:
                    return VerifyResult(
                        False,
                        check.checked,
                        seq,
                        f"{info.path.name}: record {seq} differs from the copy in an earlier segment",
                    )
            else:
                check.feed(rec)
                if check.failure is not None:
                    return replace(check.failure, reason=f"{info.path.name}: {check.failure.reason}")
                prev_hashes[seq] = rec["hash"]
            seg_last = (seq, str(rec["hash"]))
        cp = seg.checkpoint
        if cp is None:
            return VerifyResult(
                False, check.checked, info.last, f"{info.path.name} has no end checkpoint (truncated)"
            )
        if keyring is not None:
            try:
                check_checkpoint(keyring, cp)
            except ValueError as exc:
                return VerifyResult(
                    False, check.checked, info.last, f"{info.path.name}: end checkpoint: {exc}"
                )
        if (cp.seq, cp.head, cp.ledger_id) != (*seg_last, ledger_id) or seg_last[0] != info.last:
            return VerifyResult(
                False,
                check.checked,
                info.last,
                f"{info.path.name}: the end checkpoint does not match its records",
            )
        prev_hashes = {k: v for k, v in prev_hashes.items() if k >= info.first}
    if not segments:
        return VerifyResult(True, 0, head_seq=0, notes=("the archive is empty",))
    return VerifyResult(True, check.checked, head_seq=check.last[0], notes=(f"{len(segments)} segments",))


# --- schema 1 (before `ledger migrate`) -----------------------------------------------------


def _verify_schema1(cur: Any, keyring: Keyring | None) -> VerifyResult:
    cur.execute("SELECT seq, hash FROM fdp_head WHERE id = 1")
    head_row = cur.fetchone()
    head = (int(head_row[0]), str(head_row[1])) if head_row else (0, GENESIS)
    replay = Replay(-1, lambda scope, key: key) if keyring is not None else None
    if replay is not None:
        cur.execute("SELECT reservation_id FROM fdp_audit WHERE kind = 'release'")
        replay.wanted = {str(r[0]) for r in _rows(cur)}
    check = ChainCheck(keyring)
    cur.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit ORDER BY seq")  # noqa: S608
    for row in _rows(cur):
        rec = dict(zip(AUDIT_COLUMNS, row, strict=True))
        data = check.feed(rec)
        if check.failure is not None:
            break
        if replay is not None:
            replay.feed(rec, data)
    result = check.finish(head)
    result = replace(
        result, notes=("schema 1 (clear identifiers, no row MACs): run `fdp-router ledger migrate`",)
    )
    if not result.ok or replay is None:
        return result
    expected = replay.expected()
    cur.execute("SELECT scope, unit_key, window_id, rdp, n_queries FROM fdp_units")
    stored = {(str(s), str(k), int(w)): (tuple(json.loads(r)), int(n)) for s, k, w, r, n in _rows(cur)}
    for u in sorted(set(expected) | set(stored)):
        exp_spent, exp_n = expected.get(u, (flt.zero(), 0))
        got_spent, got_n = stored.get(u, (flt.zero(), 0))
        close = all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(exp_spent, got_spent, strict=True)
        )
        if exp_n != got_n or not close:
            return _fail(
                result,
                f"{replay.label(u)} records {got_n} queries but the audit trail replays to {exp_n}"
                + ("" if close else " (RDP sums differ)"),
            )
    return result
