"""The ledger engine shared by the SQLite and PostgreSQL backends: group commit over SQL.

``reserve``/``commit``/``release`` enqueue an operation and await its future. One writer
thread per ledger takes every pending operation (a batch), opens ONE transaction, takes the
database's write lock first (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE``
on the single head row), and for each operation reads the current unit state *inside* that
transaction, checks the Rényi filter, and writes the spend, the reservation and its audit
record. It commits once (durably: SQLite WAL with synchronous=FULL, PostgreSQL fsync +
synchronous_commit) and only then resolves the futures, with one wake-up of each caller's event
loop per batch (not one per operation: on a busy loop the self-pipe write, the wake-up and the
cross-thread future chaining cost more than the operation's own work). Check and record are therefore one
atomic step, serialised across threads, processes and router replicas; a crash before the
commit acknowledges nothing, a crash after it loses nothing.

Unit rows hold, per (scope, key, window), the running RDP sums at ``filter.ORDERS`` and the
sum of reported per-query epsilons. A release subtracts exactly what its reservation added.

Callers: ``open_ledger`` (ledger/__init__.py) builds a backend; the router awaits the methods.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import math
import queue
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from fdp_router.config import PrivacyConfig
from fdp_router.privacy import audit as audit_mod
from fdp_router.privacy import events as ev
from fdp_router.privacy import filter as flt
from fdp_router.privacy.accounting import fast_epsilon
from fdp_router.privacy.api import (
    BudgetExceeded,
    BudgetStatus,
    Charge,
    InvalidPrivacyRequest,
    Ledger,
    PrivacyError,
    Reservation,
    Scope,
    UnknownReservation,
)
from fdp_router.privacy.policy import budget_of, check_policy, guarantee, window_of

log = logging.getLogger(__name__)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fdp_units (
        scope TEXT NOT NULL, unit_key TEXT NOT NULL, window_id BIGINT NOT NULL,
        rdp TEXT NOT NULL, basic_eps DOUBLE PRECISION NOT NULL, n_queries BIGINT NOT NULL,
        PRIMARY KEY (scope, unit_key, window_id))""",
    """CREATE TABLE IF NOT EXISTS fdp_reservations (
        id TEXT PRIMARY KEY, window_id BIGINT NOT NULL, units TEXT NOT NULL, event TEXT NOT NULL,
        rdp TEXT NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL, created_at TEXT NOT NULL, settled_at TEXT)""",
    """CREATE TABLE IF NOT EXISTS fdp_audit (
        seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, reservation_id TEXT NOT NULL,
        epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL, key_id TEXT NOT NULL,
        nonce TEXT NOT NULL, ciphertext TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fdp_head (
        id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)""",
)
AUDIT_COLUMNS = (
    "seq",
    "ts",
    "kind",
    "reservation_id",
    "epsilon",
    "delta",
    "key_id",
    "nonce",
    "ciphertext",
    "prev_hash",
    "hash",
)
MAX_BATCH = 512
DEFERRED_MAX_DELAY_SECONDS = 0.05  # a deferred commit record waits at most this for company
MAX_SQL_PARAMS = 999  # per statement: SQLite's lowest default limit
MAX_CACHED_UNITS = 100_000  # unit states kept between batches (all windows)


@dataclass(slots=True)
class _Op:
    kind: str  # reserve | commit | release | stop
    future: asyncio.Future[Any] | None  # on the caller's loop; None for stop
    charge: Charge | None = None
    cost: tuple[float, ...] = ()
    epsilon: float = 0.0
    window_id: int = 0
    now: datetime | None = None
    reservation_id: str = ""
    nodes: tuple[str, ...] = ()
    deferred: bool = False  # nobody waits for it: may ride along with a later batch


class SqlDriver(abc.ABC):
    """What differs between SQLite and PostgreSQL (connections, locking, placeholders)."""

    @abc.abstractmethod
    def connect_writer(self) -> Any: ...

    @abc.abstractmethod
    def connect_reader(self) -> Any: ...

    @abc.abstractmethod
    def begin_locked(self, conn: Any) -> Any:
        """Start a transaction holding the ledger-wide write lock; return a cursor."""

    def sql(self, text: str) -> str:
        return text

    def init_schema(self, conn: Any) -> None:
        cur = conn.cursor()
        for stmt in SCHEMA:
            cur.execute(stmt)
        cur.execute(
            self.sql("INSERT INTO fdp_head (id, seq, hash) VALUES (1, 0, ?) ON CONFLICT (id) DO NOTHING"),
            (audit_mod.GENESIS,),
        )
        self.extra_schema(cur)
        conn.commit()

    @abc.abstractmethod
    def extra_schema(self, cur: Any) -> None:
        """Append-only guards (triggers) on the audit table."""


def units_of(charge: Charge) -> list[tuple[Scope, str]]:
    units = [(Scope.USER, charge.user_id), (Scope.DEPARTMENT, charge.department)]
    units += [(Scope.HOSPITAL, h) for h in dict.fromkeys(charge.hospitals)]
    return units


def validate_charge(charge: Charge) -> None:
    if not isinstance(charge, Charge):
        raise InvalidPrivacyRequest("charge", f"must be a Charge, got {type(charge).__name__}")
    for name in ("user_id", "department"):
        v = getattr(charge, name)
        if not isinstance(v, str) or not v.strip():
            raise InvalidPrivacyRequest(name, "must be a non-empty string")
    if not isinstance(charge.hospitals, tuple) or not all(isinstance(h, str) and h for h in charge.hospitals):
        raise InvalidPrivacyRequest("hospitals", "must be a tuple of non-empty strings")
    ev.flatten(charge.event)  # rejects unknown events


class SqlLedger(Ledger):
    """Ledger over a SqlDriver, with a group-commit writer thread."""

    def __init__(
        self,
        driver: SqlDriver,
        privacy_cfg: PrivacyConfig,
        keyring: audit_mod.Keyring,
        now: Callable[[], datetime] | None = None,
        *,
        deferred_commit: bool = False,
    ) -> None:
        check_policy(privacy_cfg)
        self._deferred_commit = deferred_commit
        self._driver = driver
        self._cfg = privacy_cfg
        self._keyring = keyring
        self._now = now or (lambda: datetime.now(UTC))
        self._guarantee = guarantee(privacy_cfg).text
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._stopped: Future[None] = Future()
        # Unit states as of our last commit; valid while the audit head's seq is unchanged.
        self._units: dict[tuple[str, str, int], _UnitState] = {}
        self._units_seq = -1
        self._closed = False
        self._writer_conn = driver.connect_writer()
        driver.init_schema(self._writer_conn)
        self._reader_conn = driver.connect_reader()
        self._reader_lock = threading.Lock()
        self._thread = threading.Thread(target=self._writer_loop, name="fdp-ledger-writer", daemon=True)
        self._thread.start()

    @property
    def keyring(self) -> audit_mod.Keyring:
        return self._keyring

    def query_hash(self, text: str) -> str:
        return audit_mod.query_hash(self._keyring.query_hash_key, text)

    # --- public API -----------------------------------------------------------------------

    async def reserve(self, charge: Charge) -> Reservation:
        validate_charge(charge)
        cost = flt.rdp_curve(charge.event)
        eps = fast_epsilon(charge.event, self._cfg.delta)
        if not all(math.isfinite(c) for c in cost) or not math.isfinite(eps):
            raise InvalidPrivacyRequest("event", "has infinite privacy cost")
        now = self._now()
        op = _Op(
            "reserve",
            asyncio.get_running_loop().create_future(),
            charge=charge,
            cost=cost,
            epsilon=eps,
            now=now,
            window_id=window_of(self._cfg, now).id,
        )
        result: Reservation = await self._submit(op)
        return result

    async def commit(self, reservation_id: str, nodes: tuple[str, ...] = ()) -> None:
        op = _Op(
            "commit",
            asyncio.get_running_loop().create_future(),
            reservation_id=reservation_id,
            nodes=tuple(nodes),
            now=self._now(),
        )
        if not self._deferred_commit:
            await self._submit(op)
            return
        # Deferred: queued for the next group commit, not awaited. The spend has been durable
        # since the reservation; losing this record (crash) leaves it counted as spent. The
        # queue is drained by close(), so a clean shutdown or hot reload loses nothing.
        if self._closed:
            raise PrivacyError("ledger is closed")
        assert op.future is not None
        op.deferred = True
        op.future.add_done_callback(_log_failed_commit)
        self._queue.put(op)

    async def release(self, reservation_id: str) -> None:
        await self._submit(
            _Op(
                "release",
                asyncio.get_running_loop().create_future(),
                reservation_id=reservation_id,
                now=self._now(),
            )
        )

    async def budget(self, scope: Scope, key: str) -> BudgetStatus:
        scope = Scope(scope)
        win = window_of(self._cfg, self._now())
        row = await asyncio.to_thread(self._read_unit, scope, key, win.id)
        spent = tuple(json.loads(row[0])) if row else flt.zero()
        total = budget_of(self._cfg, scope)
        consumed = flt.filter_epsilon(spent, self._cfg.delta)
        default_cost = flt.rdp_curve(ev.event_for_request(self._cfg, None))
        return BudgetStatus(
            scope=scope,
            key=key,
            total_epsilon=total,
            consumed_epsilon=consumed,
            remaining_epsilon=max(0.0, total - consumed),
            delta=self._cfg.delta,
            window_start=win.start,
            window_end=win.end,
            guarantee=self._guarantee,
            extra={
                "reported_epsilon_sum": float(row[1]) if row else 0.0,
                "queries": float(row[2]) if row else 0.0,
                "queries_remaining_at_default_epsilon": float(
                    _remaining_count(spent, default_cost, total, self._cfg.delta)
                ),
            },
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_Op("stop", None))
        await asyncio.wrap_future(self._stopped)
        await asyncio.to_thread(self._thread.join)
        with self._reader_lock:
            self._reader_conn.close()

    async def _submit(self, op: _Op) -> Any:
        if self._closed:
            raise PrivacyError("ledger is closed")
        assert op.future is not None
        self._queue.put(op)
        return await op.future

    # --- reads ----------------------------------------------------------------------------

    def _read_unit(self, scope: Scope, key: str, window_id: int) -> Any:
        with self._reader_lock:
            cur = self._reader_conn.cursor()
            cur.execute(
                self._driver.sql(
                    "SELECT rdp, basic_eps, n_queries FROM fdp_units "
                    "WHERE scope=? AND unit_key=? AND window_id=?"
                ),
                (scope.value, key, window_id),
            )
            row = cur.fetchone()
            self._reader_conn.commit()
            return row

    # --- the writer -----------------------------------------------------------------------

    def _writer_loop(self) -> None:
        stop: _Op | None = None
        held: list[_Op] = []  # deferred commits waiting for a batch somebody waits on
        held_since = 0.0
        while stop is None:
            try:
                timeout = (
                    max(0.0, held_since + DEFERRED_MAX_DELAY_SECONDS - time.monotonic()) if held else None
                )
                first = self._queue.get(timeout=timeout)
            except queue.Empty:  # nobody else came: write the held records on their own
                first = None
            batch = [*held, *([first] if first is not None else [])]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = next((op for op in batch if op.kind == "stop"), None)
            if first is not None and stop is None and all(op.deferred for op in batch):
                # Only deferred records: hold them (up to DEFERRED_MAX_DELAY_SECONDS) so that
                # they share the next waited-for batch's transaction and fsync instead of
                # costing one of their own in front of it.
                if not held:
                    held_since = time.monotonic()
                held = batch
                continue
            held = []
            # A caller that gave up (cancelled) before its turn records nothing. (Reading the
            # flag from this thread is a benign race: a caller cancelled after this check has
            # its reservation recorded and never refunded, which is the safe side.)
            work = [op for op in batch if op.future is not None and not op.future.cancelled()]
            if work:
                self._run_batch(work)
        try:
            self._writer_conn.close()
        finally:
            self._stopped.set_result(None)

    def _run_batch(self, batch: Sequence[_Op]) -> None:
        outcomes: list[tuple[_Op, Any, BaseException | None]] = []
        conn = self._writer_conn
        try:
            cur = self._driver.begin_locked(conn)
            cur.execute(self._driver.sql("SELECT seq, hash FROM fdp_head WHERE id = 1"))
            seq, head_hash = cur.fetchone()
            if int(seq) != self._units_seq:  # another process wrote since our last batch
                self._units.clear()
            tx = _Batch(cur, self._driver, int(seq), str(head_hash), self._units)
            # Settlements first (a release frees room for a reservation in the same batch):
            # any order of one batch's operations is a valid serialisation, they were concurrent.
            settles = [op for op in batch if op.kind != "reserve"]
            rows = tx.settle(settles) if settles else {}
            for op in (*settles, *(op for op in batch if op.kind == "reserve")):
                try:
                    value = (
                        self._reserve_in(tx, op) if op.kind == "reserve" else self._settle_in(tx, op, rows)
                    )
                    outcomes.append((op, value, None))
                except PrivacyError as exc:
                    outcomes.append((op, None, exc))
            tx.flush()
            conn.commit()
            self._units_seq = tx.seq
        except BaseException as exc:  # nothing was committed: nothing is acknowledged
            self._units.clear()  # states may hold this batch's uncommitted spends
            log.exception("ledger transaction failed; %d operations not recorded", len(batch))
            try:
                conn.rollback()
            except Exception:  # the connection is gone: open a new one for the next batch
                self._reconnect_writer()
            err = PrivacyError(f"ledger write failed: {exc}")
            _resolve([(op, None, err) for op in batch])
            return
        if len(self._units) > MAX_CACHED_UNITS:
            self._units.clear()
        _resolve(outcomes)

    def _reconnect_writer(self) -> None:
        try:
            self._writer_conn.close()
        except Exception:  # noqa: S110 (already broken)
            pass
        try:
            self._writer_conn = self._driver.connect_writer()
        except Exception:
            log.exception("ledger: reconnect failed; will retry on the next operation")

    def _audit(
        self, tx: _Batch, *, kind: str, rid: str, eps: float, ts: str, sensitive: dict[str, Any]
    ) -> None:
        rec = audit_mod.seal(
            self._keyring,
            seq=tx.seq + 1,
            prev_hash=tx.head_hash,
            ts=ts,
            kind=kind,
            reservation_id=rid,
            epsilon=eps,
            delta=self._cfg.delta,
            sensitive=sensitive,
        )
        tx.audits.append(tuple(rec[c] for c in AUDIT_COLUMNS))
        tx.seq, tx.head_hash = rec["seq"], rec["hash"]

    def _reserve_in(self, tx: _Batch, op: _Op) -> Reservation:
        assert op.now is not None and op.charge is not None
        now = op.now.isoformat()
        charge = op.charge
        units = units_of(charge)
        states = []
        for scope, key in units:
            state = tx.unit(scope.value, key, op.window_id)
            total = budget_of(self._cfg, scope)
            if not flt.admits(state.spent, op.cost, total, self._cfg.delta):
                available = max(0.0, total - flt.filter_epsilon(state.spent, self._cfg.delta))
                raise BudgetExceeded(scope, key, op.epsilon, available)
            states.append(state)
        for state in states:  # every unit fits: now record the spend on all of them
            state.spent = flt.add(state.spent, op.cost)
            state.basic += op.epsilon
            state.n += 1
            tx.dirty[state.ident] = state
        # units_of puts the user first; its state now includes this spend.
        user_total = budget_of(self._cfg, Scope.USER)
        user_remaining = max(0.0, user_total - flt.filter_epsilon(states[0].spent, self._cfg.delta))
        rid = secrets.token_hex(16)
        event_json = _event_json(charge.event)
        tx.reservations.append(
            (
                rid,
                op.window_id,
                orjson.dumps([[s.value, k] for s, k in units]).decode(),
                event_json,
                _cost_json(op.cost),
                op.epsilon,
                self._cfg.delta,
                now,
            )
        )
        self._audit(
            tx,
            kind="reserve",
            rid=rid,
            eps=op.epsilon,
            ts=now,
            sensitive={
                "user_id": charge.user_id,
                "department": charge.department,
                "hospitals": list(charge.hospitals),
                "query_hash": charge.query_hash,
                "request_id": charge.request_id,
                "window_id": op.window_id,
                "event": _event_dict(charge.event),
            },
        )
        return Reservation(
            id=rid,
            charge=charge,
            epsilon=op.epsilon,
            delta=self._cfg.delta,
            created_at=op.now,
            user_remaining_epsilon=user_remaining,
        )

    def _settle_in(self, tx: _Batch, op: _Op, rows: dict[int, tuple[Any, ...] | None]) -> None:
        assert op.now is not None
        row = rows.get(id(op))
        if row is None:
            tx.cur.execute(
                self._driver.sql("SELECT state FROM fdp_reservations WHERE id=?"), (op.reservation_id,)
            )
            found = tx.cur.fetchone()
            state_name = "unknown" if found is None else f"already {found[0]}"
            raise UnknownReservation(f"reservation {op.reservation_id!r} is {state_name}")
        window_id, units_json, cost_json, eps = row
        if op.kind == "release":  # refund exactly what the reservation added, in its own window
            cost = tuple(json.loads(cost_json))
            for scope_v, key in json.loads(units_json):
                state = tx.unit(scope_v, key, int(window_id))
                if not state.exists and state.n == 0:
                    continue
                state.spent = flt.subtract(state.spent, cost)
                state.basic = max(0.0, state.basic - float(eps))
                state.n = max(0, state.n - 1)
                tx.dirty[state.ident] = state
        self._audit(
            tx,
            kind=op.kind,
            rid=op.reservation_id,
            eps=float(eps),
            ts=op.now.isoformat(),
            sensitive={"nodes": list(op.nodes)},
        )


def _log_failed_commit(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("deferred commit failed; the reservation stays spent", exc_info=fut.exception())


def _resolve(outcomes: Sequence[tuple[_Op, Any, BaseException | None]]) -> None:
    """Hand each outcome to its caller's loop: one thread-safe call per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Op, Any, BaseException | None]]] = {}
    for item in outcomes:
        fut = item[0].future
        assert fut is not None
        by_loop.setdefault(fut.get_loop(), []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:  # the caller's loop is closed: nobody is waiting any more
            log.warning("ledger: %d results for a closed event loop dropped", len(items))


def _settle(items: Sequence[tuple[_Op, Any, BaseException | None]]) -> None:
    for op, value, error in items:
        fut = op.future
        if fut is None or fut.cancelled():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


@dataclass(slots=True)
class _UnitState:
    scope: str
    key: str
    window_id: int
    spent: tuple[float, ...]
    basic: float
    n: int
    exists: bool

    @property
    def ident(self) -> tuple[str, str, int]:
        return (self.scope, self.key, self.window_id)


class _Batch:
    """One locked transaction: rows collected while the operations are applied, written with
    one ``executemany`` per table at the end (fewer round trips, and for SQLite fewer GIL
    hand-offs between the writer thread and the event loop).

    Unit states come from ``units`` (kept by the ledger across batches while the audit head
    shows that nobody else wrote) or are read *inside* this transaction. Valid because the
    batch holds the ledger's write lock from its first read to its commit.
    """

    def __init__(
        self,
        cur: Any,
        driver: SqlDriver,
        seq: int,
        head_hash: str,
        units: dict[tuple[str, str, int], _UnitState],
    ) -> None:
        self.cur = cur
        self._driver = driver
        self.seq = seq
        self.head_hash = head_hash
        self._units = units
        self.dirty: dict[tuple[str, str, int], _UnitState] = {}
        self.reservations: list[tuple[Any, ...]] = []
        self.audits: list[tuple[Any, ...]] = []

    def unit(self, scope: str, key: str, window_id: int) -> _UnitState:
        ident = (scope, key, window_id)
        state = self._units.get(ident)
        if state is None:
            self.cur.execute(
                self._driver.sql(
                    "SELECT rdp, basic_eps, n_queries FROM fdp_units "
                    "WHERE scope=? AND unit_key=? AND window_id=?"
                ),
                ident,
            )
            row = self.cur.fetchone()
            if row is None:
                state = _UnitState(scope, key, window_id, flt.zero(), 0.0, 0, False)
            else:
                state = _UnitState(
                    scope, key, window_id, tuple(json.loads(row[0])), float(row[1]), int(row[2]), True
                )
            self._units[ident] = state
        return state

    def settle(self, ops: Sequence[_Op]) -> dict[int, tuple[Any, ...] | None]:
        """Mark the reservations of these commit/release operations settled: one UPDATE ...
        RETURNING per kind. Returns, per operation (by id()), the reservation's (window_id,
        units, rdp, epsilon), or None when it was unknown or already settled (a duplicate
        in the batch gets None: the first one settled it)."""
        out: dict[int, tuple[Any, ...] | None] = {}
        for kind, new_state in (("commit", "committed"), ("release", "released")):
            group = [op for op in ops if op.kind == kind]
            if not group:
                continue
            ids = list(dict.fromkeys(op.reservation_id for op in group))
            settled_at = max(op.now for op in group if op.now is not None).isoformat()
            found: dict[str, tuple[Any, ...]] = {}
            for chunk in _chunks(ids, MAX_SQL_PARAMS - 2):
                self.cur.execute(
                    self._driver.sql(
                        "UPDATE fdp_reservations SET state=?, settled_at=? WHERE state='reserved' AND id IN "  # noqa: S608
                        f"({', '.join('?' for _ in chunk)}) RETURNING id, window_id, units, rdp, epsilon"
                    ),
                    (new_state, settled_at, *chunk),
                )
                found.update((r[0], tuple(r[1:])) for r in self.cur.fetchall())
            for op in group:
                out[id(op)] = found.pop(op.reservation_id, None)
        return out

    def flush(self) -> None:
        if self.reservations:
            self._insert(
                "fdp_reservations (id, window_id, units, event, rdp, epsilon, delta, state, created_at)",
                "(?, ?, ?, ?, ?, ?, ?, 'reserved', ?)",
                self.reservations,
            )
        if self.audits:
            marks = "(" + ", ".join("?" for _ in AUDIT_COLUMNS) + ")"
            self._insert(f"fdp_audit ({', '.join(AUDIT_COLUMNS)})", marks, self.audits)
            self.cur.execute(
                self._driver.sql("UPDATE fdp_head SET seq=?, hash=? WHERE id = 1"), (self.seq, self.head_hash)
            )
        if self.dirty:
            rows = [
                (u.scope, u.key, u.window_id, orjson.dumps(u.spent).decode(), u.basic, u.n)
                for u in self.dirty.values()
            ]
            self._insert(
                "fdp_units (scope, unit_key, window_id, rdp, basic_eps, n_queries)",
                "(?, ?, ?, ?, ?, ?)",
                rows,
                " ON CONFLICT (scope, unit_key, window_id) DO UPDATE SET "
                "rdp = excluded.rdp, basic_eps = excluded.basic_eps, n_queries = excluded.n_queries",
            )
            for u in self.dirty.values():
                u.exists = True

    def _insert(self, into: str, marks: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
        """Multi-row INSERT: one statement (one SQLite step, one GIL hand-off) per chunk,
        where executemany takes one per row."""
        per_row = marks.count("?")
        for chunk in _chunks(rows, max(1, MAX_SQL_PARAMS // per_row)):
            values = ", ".join(marks for _ in chunk)
            self.cur.execute(
                self._driver.sql(f"INSERT INTO {into} VALUES {values}{tail}"),  # noqa: S608
                [v for row in chunk for v in row],
            )


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@lru_cache(maxsize=1024)
def _cost_json(cost: tuple[float, ...]) -> str:
    return json.dumps(cost)


@lru_cache(maxsize=1024)
def _event_json(event: Any) -> str:
    return json.dumps(ev.to_dict(event))


@lru_cache(maxsize=1024)
def _event_dict(event: Any) -> dict[str, Any]:
    """Shared between records: only ever serialised, never mutated."""
    return dict(json.loads(_event_json(event)))


def _remaining_count(spent: Sequence[float], cost: Sequence[float], total: float, delta: float) -> int:
    best = 0
    for s, c, b in zip(spent, cost, flt.budget_curve(total, delta), strict=True):
        if c > 0 and b - s >= 0:
            best = max(best, int((b - s) // c))
    return best
