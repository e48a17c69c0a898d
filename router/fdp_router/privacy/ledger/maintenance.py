"""Keeping a ledger for years: checkpoints, retention and archival, schema migration.

- `make_checkpoint`: a signed checkpoint of the current head (``fdp-router ledger
  checkpoint``), to keep where the database's writers cannot change it.
- `prune` (``ledger.retention``; the router runs it every ``interval_seconds``, or
  ``fdp-router ledger prune`` does): audit records older than ``audit_seconds`` are written
  to a sealed segment ending in a signed checkpoint (archive.py) and then deleted from the
  live database in short transactions (each holds the write lock for one chunk); what they
  added to each unit of a still-open window is kept as a MACed *carried sum*, so that
  ``ledger verify`` still replays every live unit row; their reservation rows go with them
  (a later refund of such a reservation is refused: it stays spent, the safe side). Unit
  rows of closed windows are dropped. The head row's ``base_seq``/``base_hash`` (under its
  MAC) say where the live chain starts.
- `migrate`: schema 1 -> 2 (pseudonymous keys, row MACs), after verifying the trail.

Used by the CLI (privacy/cli.py) and by SqlLedger's pruning thread (core.py).
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from fdp_router.config import LedgerRetention, PrivacyConfig
from fdp_router.privacy import filter as flt
from fdp_router.privacy.api import LedgerIntegrityError
from fdp_router.privacy.audit import GENESIS, ChainCheck, Checkpoint, Keyring, sign_checkpoint
from fdp_router.privacy.ledger import archive
from fdp_router.privacy.ledger.core import (
    AUDIT_COLUMNS,
    SCHEMA,
    SELECT_HEAD,
    SqlDriver,
    _chunks,
    event_cost,
    load_integrity,
    write_meta,
)
from fdp_router.privacy.ledger.integrity import Head, Integrity, ledger_row
from fdp_router.privacy.ledger.verify import _event_key, _rows, verify_ledger
from fdp_router.privacy.policy import window_of

log = logging.getLogger(__name__)

CHUNK = 2000  # records deleted per transaction (bounds how long the write lock is held)


def _head(cur: Any, integrity: Integrity) -> Head:
    cur.execute(SELECT_HEAD)
    head = Head(*cur.fetchone())
    if not integrity.head_ok(head):
        raise LedgerIntegrityError("the ledger's head row fails its MAC (changed without the audit key)")
    return head


def make_checkpoint(driver: SqlDriver, keyring: Keyring, now: datetime | None = None) -> Checkpoint:
    """A signed checkpoint of the ledger's head as it is now."""
    conn = driver.connect_reader()
    try:
        cur = conn.cursor()
        integrity = load_integrity(cur, driver, keyring)
        head = _head(cur, integrity)
        conn.rollback()
    finally:
        conn.close()
    return sign_checkpoint(
        keyring,
        integrity.key_id,
        ledger_id=integrity.ledger_id,
        seq=head.seq,
        head=head.hash,
        time=(now or datetime.now(UTC)).isoformat(),
    )


# --- retention --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PruneReport:
    archived: int = 0
    first: int = 0
    last: int = 0
    segment: str = ""
    windows_before: int = 0
    units_dropped: int = 0

    def describe(self) -> str:
        if not self.archived:
            return (
                f"nothing to archive; unit rows of windows before {self.windows_before} dropped: "
                f"{self.units_dropped}"
            )
        return (
            f"archived records {self.first}..{self.last} ({self.archived}) to {self.segment}; unit rows of "
            f"windows before {self.windows_before} dropped: {self.units_dropped}"
        )


@dataclass(slots=True)
class _Carry:
    counts: dict[str, int]  # event -> net count
    basic: float = 0.0


def prune(
    driver: SqlDriver,
    keyring: Keyring,
    privacy_cfg: PrivacyConfig,
    retention: LedgerRetention,
    now: datetime,
) -> PruneReport:
    """Archive audit records older than the retention, then prune them and the unit rows of
    closed windows. Safe to run while routers write; concurrent runs serialise on the head."""
    if retention.audit_seconds is None or not retention.archive_dir:
        raise LedgerIntegrityError("ledger.retention: audit_seconds and archive_dir are needed to prune")
    cutoff = now - timedelta(seconds=retention.audit_seconds)
    window = window_of(privacy_cfg, now).id
    conn = driver.connect_writer()
    try:
        cur = conn.cursor()
        integrity = load_integrity(cur, driver, keyring)
        head = _head(cur, integrity)
        # 1. read what is old enough, checking it as it goes (never archive a broken chain)
        check = ChainCheck(keyring, (head.base_seq, head.base_hash))
        records: list[dict[str, Any]] = []
        datas: list[dict[str, Any]] = []
        cur.execute(
            driver.sql(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM fdp_audit WHERE seq > ? ORDER BY seq"),  # noqa: S608
            (head.base_seq,),
        )
        for row in _rows(cur):
            rec = dict(zip(AUDIT_COLUMNS, row, strict=True))
            if datetime.fromisoformat(rec["ts"]) >= cutoff or len(records) >= retention.max_records_per_run:
                break
            data = check.feed(rec)
            if check.failure is not None:
                raise LedgerIntegrityError(
                    "refusing to archive a broken trail: record "
                    f"{check.failure.first_bad_seq}: {check.failure.reason}"
                )
            assert data is not None
            records.append(rec)
            datas.append(data)
        conn.rollback()
        report = PruneReport(windows_before=max(window, head.base_window))
        if records:
            # 2. the segment, durable before anything is deleted
            end = sign_checkpoint(
                keyring,
                integrity.key_id,
                ledger_id=integrity.ledger_id,
                seq=int(records[-1]["seq"]),
                head=str(records[-1]["hash"]),
                time=now.isoformat(),
            )
            path = archive.write_segment(
                retention.archive_dir,
                ledger_id=integrity.ledger_id,
                prev=(head.base_seq, head.base_hash),
                records=records,
                checkpoint=end,
            )
            # 3. the database, chunk by chunk
            done = 0
            state: _CarryState | None = None
            for chunk in _chunks(list(zip(records, datas, strict=True)), CHUNK):
                state = _prune_chunk(conn, driver, integrity, chunk, window, state)
                if state is None:
                    log.warning("ledger prune: another pruner moved the base; stopping")
                    break
                done += len(chunk)
            report = PruneReport(
                archived=done,
                first=int(records[0]["seq"]),
                last=int(records[0]["seq"]) + done - 1,
                segment=str(path),
                windows_before=report.windows_before,
            )
        dropped = _prune_windows(conn, driver, integrity, window)
        return PruneReport(
            report.archived, report.first, report.last, report.segment, report.windows_before, dropped
        )
    finally:
        conn.close()


_CarryState = dict[tuple[str, str, int], tuple[tuple[float, ...], float, int]]


def _prune_chunk(
    conn: Any,
    driver: SqlDriver,
    integrity: Integrity,
    chunk: Sequence[tuple[Any, ...]],
    window: int,
    state: _CarryState | None,
) -> _CarryState | None:
    """One transaction: carry what the chunk's records added to open windows, delete their
    reservations and the records, move the base. Returns the carried sums as now stored
    (read, MACs checked, in the first chunk's transaction; only pruners write them, one at a
    time), or None if the base moved meanwhile (another pruner)."""
    records = [r for r, _ in chunk]
    first, last = int(records[0]["seq"]), int(records[-1]["seq"])
    cur = driver.begin_locked(conn)
    try:
        head = _head(cur, integrity)
        if head.base_seq != first - 1:
            conn.rollback()
            return None
        base_window = max(head.base_window, window)
        if state is None:
            state = _read_carries(cur, driver, integrity, base_window)
        carries: dict[tuple[str, str, int], _Carry] = {}
        reserved: list[str] = []
        for rec, data in chunk:
            _carry(carries, rec, data, integrity, base_window)
            if rec["kind"] == "reserve":
                reserved.append(str(rec["reservation_id"]))
        _write_carries(cur, driver, integrity, carries, state)
        for ids in _chunks(reserved, 500):
            cur.execute(
                driver.sql(f"DELETE FROM fdp_reservations WHERE id IN ({', '.join('?' for _ in ids)})"),  # noqa: S608
                list(ids),
            )
        moved = Head(
            head.seq, head.hash, head.key_id, head.key_count, last, str(records[-1]["hash"]), base_window, ""
        )
        cur.execute(
            driver.sql("UPDATE fdp_head SET base_seq=?, base_hash=?, base_window=?, mac=? WHERE id = 1"),
            (last, moved.base_hash, base_window, integrity.head_mac(moved)),
        )
        cur.execute(driver.sql("DELETE FROM fdp_audit WHERE seq <= ?"), (last,))
        conn.commit()
        return state
    except BaseException:
        conn.rollback()
        raise


def _carry(
    carries: dict[tuple[str, str, int], _Carry],
    rec: dict[str, Any],
    data: dict[str, Any],
    integrity: Integrity,
    base_window: int,
) -> None:
    """What one archived record added to (or refunded from) the units of open windows."""
    if rec["kind"] == "reserve":
        win = int(data["window_id"])
        units = [
            ("user", integrity.stored_key("user", data["user_id"])),
            ("department", integrity.stored_key("department", data["department"])),
        ]
        units += [("hospital", h) for h in dict.fromkeys(data["hospitals"])]
        sign = 1
    elif rec["kind"] == "release" and "units" in data:
        win = int(data["window_id"])
        units = [(str(s), str(k)) for s, k in data["units"]]
        sign = -1
    else:
        return
    if win < base_window:
        return
    event = _event_key(data["event"])
    for scope, key in units:
        c = carries.setdefault((scope, key, win), _Carry({}))
        c.counts[event] = c.counts.get(event, 0) + sign
        c.basic += sign * float(rec["epsilon"])


def _read_carries(cur: Any, driver: SqlDriver, integrity: Integrity, base_window: int) -> _CarryState:
    cur.execute(
        driver.sql(
            "SELECT scope, unit_key, window_id, rdp, basic_eps, n_queries, mac FROM fdp_carry "
            "WHERE window_id >= ?"
        ),
        (base_window,),
    )
    state: _CarryState = {}
    for scope, key, win, rdp, basic, n, mac in _rows(cur):
        if integrity.carry_mac(scope, key, int(win), str(rdp), float(basic), int(n)) != mac:
            raise LedgerIntegrityError(f"a carried-sum row of {scope} unit (window {win}) fails its MAC")
        state[(str(scope), str(key), int(win))] = (tuple(json.loads(rdp)), float(basic), int(n))
    return state


def _write_carries(
    cur: Any,
    driver: SqlDriver,
    integrity: Integrity,
    carries: dict[tuple[str, str, int], _Carry],
    state: _CarryState,
) -> None:
    rows = []
    for unit, c in carries.items():
        spent, basic, n = state.get(unit, (flt.zero(), 0.0, 0))
        for event, k in c.counts.items():
            spent = tuple(s + k * x for s, x in zip(spent, event_cost(event), strict=True))
            n += k
        basic += c.basic
        state[unit] = (spent, basic, n)
        rdp = orjson.dumps(spent).decode()
        rows.append((*unit, rdp, basic, n, integrity.carry_mac(*unit, rdp, basic, n)))
    for part in _chunks(rows, 100):
        cur.execute(
            driver.sql(
                "INSERT INTO fdp_carry (scope, unit_key, window_id, rdp, basic_eps, n_queries, mac) VALUES "  # noqa: S608
                + ", ".join("(?, ?, ?, ?, ?, ?, ?)" for _ in part)
                + " ON CONFLICT (scope, unit_key, window_id) DO UPDATE SET rdp = excluded.rdp, "
                "basic_eps = excluded.basic_eps, n_queries = excluded.n_queries, mac = excluded.mac"
            ),
            [v for row in part for v in row],
        )


def _prune_windows(conn: Any, driver: SqlDriver, integrity: Integrity, window: int) -> int:
    """Drop unit and carried-sum rows of windows before `window` (closed). Returns rows dropped."""
    cur = driver.begin_locked(conn)
    try:
        head = _head(cur, integrity)
        base_window = max(head.base_window, window)
        if base_window != head.base_window:
            moved = replace(head, base_window=base_window, mac="")
            cur.execute(
                driver.sql("UPDATE fdp_head SET base_window=?, mac=? WHERE id = 1"),
                (base_window, integrity.head_mac(moved)),
            )
        cur.execute(driver.sql("DELETE FROM fdp_units WHERE window_id < ?"), (base_window,))
        dropped = int(cur.rowcount or 0)
        cur.execute(driver.sql("DELETE FROM fdp_carry WHERE window_id < ?"), (base_window,))
        conn.commit()
        return dropped
    except BaseException:
        conn.rollback()
        raise


# --- schema 1 -> 2 ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MigrateReport:
    migrated: bool
    detail: str


def migrate(driver: SqlDriver, keyring: Keyring) -> MigrateReport:
    """Convert a schema 1 ledger in place: verify it first (chain, tags, replay), then, in
    one locked transaction, pseudonymize its unit and reservation keys and MAC every row.
    No router may be using it (a schema 2 router refuses it anyway)."""
    conn = driver.connect_writer()
    try:
        cur = driver.begin_schema(conn)
        if not driver.table_exists(cur, "fdp_head"):
            conn.rollback()
            return MigrateReport(False, "no ledger in this database: nothing to migrate")
        if driver.table_exists(cur, "fdp_meta"):
            conn.rollback()
            return MigrateReport(False, "already schema 2")
        conn.rollback()
    finally:
        conn.close()
    checked = verify_ledger(driver, keyring)
    if not checked.ok:
        raise LedgerIntegrityError(
            f"refusing to migrate a ledger that does not verify: {checked.reason} "
            f"(record {checked.first_bad_seq})"
        )
    conn = driver.connect_writer()
    try:
        cur = driver.begin_schema(conn)
        if driver.table_exists(cur, "fdp_meta"):  # someone migrated it meanwhile
            conn.rollback()
            return MigrateReport(False, "already schema 2")
        _convert(cur, driver, keyring)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()
    return MigrateReport(True, f"migrated to schema 2 ({checked.checked} audit records verified first)")


def _convert(cur: Any, driver: SqlDriver, keyring: Keyring) -> None:
    for table, column, decl in (
        ("fdp_units", "mac", "TEXT NOT NULL DEFAULT ''"),
        ("fdp_reservations", "mac", "TEXT NOT NULL DEFAULT ''"),
        ("fdp_head", "key_id", "TEXT NOT NULL DEFAULT ''"),
        ("fdp_head", "key_count", "BIGINT NOT NULL DEFAULT 0"),
        ("fdp_head", "base_seq", "BIGINT NOT NULL DEFAULT 0"),
        ("fdp_head", "base_hash", f"TEXT NOT NULL DEFAULT '{GENESIS}'"),
        ("fdp_head", "base_window", "BIGINT NOT NULL DEFAULT 0"),
        ("fdp_head", "mac", "TEXT NOT NULL DEFAULT ''"),
    ):
        cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    for stmt in SCHEMA:
        cur.execute(stmt)
    driver.drop_old_triggers(cur)
    driver.extra_schema(cur)
    ledger_id, key_id = secrets.token_hex(8), keyring.active_id
    value, mac = ledger_row(keyring, ledger_id, key_id)
    cur.execute(driver.sql("INSERT INTO fdp_meta (name, value, mac) VALUES ('ledger', ?, ?)"), (value, mac))
    integrity = Integrity(keyring, ledger_id, key_id)
    sk = integrity.stored_key
    cur.execute("SELECT scope, unit_key, window_id, rdp, basic_eps, n_queries FROM fdp_units")
    units = cur.fetchall()
    cur.execute("DELETE FROM fdp_units")
    for scope, key, win, rdp, basic, n in units:
        skey = sk(scope, key)
        cur.execute(
            driver.sql(
                "INSERT INTO fdp_units (scope, unit_key, window_id, rdp, basic_eps, n_queries, mac) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)"
            ),
            (
                scope,
                skey,
                win,
                rdp,
                basic,
                n,
                integrity.unit_mac(scope, skey, int(win), rdp, float(basic), int(n)),
            ),
        )
    cur.execute("SELECT id, window_id, units, event, epsilon, delta, created_at FROM fdp_reservations")
    for rid, win, units_json, event, eps, delta, created in cur.fetchall():
        stored = orjson.dumps([[s, sk(s, k)] for s, k in json.loads(units_json)]).decode()
        cur.execute(
            driver.sql("UPDATE fdp_reservations SET units=?, mac=? WHERE id=?"),
            (
                stored,
                integrity.reservation_mac(rid, int(win), stored, event, float(eps), float(delta), created),
                rid,
            ),
        )
    cur.execute("SELECT key_id, count(*) FROM fdp_audit GROUP BY key_id")
    usage = {str(k): int(n) for k, n in cur.fetchall()}
    cur.execute("SELECT key_id FROM fdp_audit ORDER BY seq DESC LIMIT 1")
    last = cur.fetchone()
    last_key = str(last[0]) if last else ""
    cur.execute("SELECT seq, hash FROM fdp_head WHERE id = 1")
    seq, head_hash = cur.fetchone()
    head = integrity.signed_head(
        Head(int(seq), str(head_hash), last_key, usage.pop(last_key, 0), 0, GENESIS, 0, "")
    )
    cur.execute(
        driver.sql(
            "UPDATE fdp_head SET key_id=?, key_count=?, base_seq=0, base_hash=?, base_window=0, mac=? "
            "WHERE id = 1"
        ),
        (head.key_id, head.key_count, GENESIS, head.mac),
    )
    write_meta(cur, driver, integrity, "key_usage", json.dumps(usage, sort_keys=True))


def load_checkpoint_file(path: str | Path, source: str) -> Checkpoint | None:
    """The checkpoint in `path`; None if the file is absent or empty (none exported yet)."""
    from fdp_router.privacy.audit import parse_checkpoint

    p = Path(path)
    if not p.is_file():
        return None
    text = p.read_text(encoding="utf-8").strip()
    return parse_checkpoint(text, source) if text else None
