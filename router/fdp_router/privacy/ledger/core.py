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

**Gathering** (``GATHER_SECONDS``): while other reservations of this process are open (other
requests in flight, whose commits will follow), the writer, having taken a batch's first
operation, waits up to 1 ms for more before it opens the transaction, and stops waiting as soon
as the last open reservation's settlement is queued. A transaction's fixed cost (a dozen
statements, the dirty pages of the head and the tables' last leaves, the durable commit, one
wake-up of each caller's loop) is most of what an operation costs, so under load bigger batches
cut the ledger's CPU per request; a lone request (nothing else open) never waits.

**Idle fast path** (``ledger.idle_fast_path``, drivers with ``inline``: SQLite, a local
file): an operation submitted while the ledger has nothing else pending or running, and no
other reservation of this process is
open (reserved, not yet committed or released: another request in flight, whose operations
group commit should batch), runs as a batch of one on the caller's thread,
the same transaction and the same durable commit, under the same batch lock the writer thread
takes, with SQLite's lock wait off (another process holding the write lock sends it to the
writer thread instead, which waits for the lock). At low concurrency this removes both
thread hand-offs of every operation (a wake-up of the writer, then of the caller's loop),
which on a busy host cost more than the transaction; under load operations are pending and
the writer thread batches them as before. Deferred commit records held for company (the
previous request's, at concurrency 1) do not count as pending work here: the inline batch takes
them (under the batch and deferred locks, as the writer does) into its own transaction, so at
concurrency 1 they ride with the next request's reservation on the caller's thread; the writer
still writes the ones nobody takes within DEFERRED_MAX_DELAY_SECONDS (its clock runs for the
oldest record still held, not for one an inline batch took). The price: the event loop waits
for that fsync itself, so a disk that stalls stalls the loop (the writer thread would cost only
the caller its deadline); one inline transaction slower than IDLE_STALL_SECONDS turns the path
off for a while.

**Writer scheduling** (``writer_scheduling``, Linux): after a batch that carried several
callers' operations the writer thread runs under SCHED_BATCH, after a lone caller's under the
default policy. Under load the loop wakes the writer while it is running itself; a writer woken
under the default policy preempted the loop, then waited for the GIL the loop still held. The
same CPU share either way; the convoy is gone.

Unit rows hold, per (scope, key, window), the running RDP sums at ``filter.ORDERS`` and the
sum of reported per-query epsilons. A release subtracts exactly what its reservation added.
User and department keys are stored as keyed pseudonyms and every trusted row carries a
keyed MAC, checked whenever a row is read (integrity.py); ``SqlLedger`` also checks the
identity and head rows when it opens, and the last exported checkpoint if it is given one.

Bounded (``ledger.timeouts``): every operation has an overall deadline (queueing included),
every transaction and read runs under the driver's watchdog (a frozen server is cut off after
``statement_seconds``), connects and lock waits are bounded by the driver. Whatever stops the
database from being used now (timeouts, refused or lost connections, a full or read-only disk,
lock contention, a restart or failover) is raised as ``LedgerUnavailableError`` (the privacy
core's ``LedgerUnavailable`` and the API's 503 ``ledger_unavailable`` in one), never as a
generic error. A connection that died while idle (a restart, a failover) is replaced and the
batch run once more on the new one: safe, because nothing of it reached a COMMIT.

Callers: ``open_ledger`` (ledger/__init__.py) builds a backend; the router awaits the methods;
``ledger_health.py`` installs an observer (latency and outcome of every operation) and calls
``check()``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import queue
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from itertools import chain
from typing import Any

import orjson

from fdp_router.config import LedgerRetention, LedgerTimeouts, PrivacyConfig
from fdp_router.errors import LedgerUnavailableError
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
    LedgerIntegrityError,
    LedgerUnavailable,
    PrivacyError,
    Reservation,
    Scope,
    UnknownReservation,
)
from fdp_router.privacy.ledger.integrity import HEAD_COLUMNS, Head, Integrity, ledger_row, read_ledger_row
from fdp_router.privacy.ledger.watchdog import Guard, Watchdog
from fdp_router.privacy.policy import budget_of, check_policy, guarantee, window_of

log = logging.getLogger(__name__)

# Schema 2 (ledger/integrity.py): pseudonymous unit keys and a keyed MAC on every trusted row.
# A database of schema 1 (clear identifiers, no MACs) is refused with a pointer to
# `fdp-router ledger migrate` (maintenance.py), which verifies it and converts it in place.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fdp_units (
        scope TEXT NOT NULL, unit_key TEXT NOT NULL, window_id BIGINT NOT NULL,
        rdp TEXT NOT NULL, basic_eps DOUBLE PRECISION NOT NULL, n_queries BIGINT NOT NULL,
        mac TEXT NOT NULL, PRIMARY KEY (scope, unit_key, window_id))""",
    """CREATE TABLE IF NOT EXISTS fdp_reservations (
        id TEXT PRIMARY KEY, window_id BIGINT NOT NULL, units TEXT NOT NULL, event TEXT NOT NULL,
        rdp TEXT NOT NULL, epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL, created_at TEXT NOT NULL, settled_at TEXT, mac TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fdp_audit (
        seq BIGINT PRIMARY KEY, ts TEXT NOT NULL, kind TEXT NOT NULL, reservation_id TEXT NOT NULL,
        epsilon DOUBLE PRECISION NOT NULL, delta DOUBLE PRECISION NOT NULL, key_id TEXT NOT NULL,
        nonce TEXT NOT NULL, ciphertext TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fdp_head (
        id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL,
        key_id TEXT NOT NULL, key_count BIGINT NOT NULL, base_seq BIGINT NOT NULL,
        base_hash TEXT NOT NULL, base_window BIGINT NOT NULL, mac TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS fdp_carry (
        scope TEXT NOT NULL, unit_key TEXT NOT NULL, window_id BIGINT NOT NULL,
        rdp TEXT NOT NULL, basic_eps DOUBLE PRECISION NOT NULL, n_queries BIGINT NOT NULL,
        mac TEXT NOT NULL, PRIMARY KEY (scope, unit_key, window_id))""",
    """CREATE TABLE IF NOT EXISTS fdp_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL, mac TEXT NOT NULL)""",
)
OLD_SCHEMA = (
    "this ledger database has schema 1 (clear user and department identifiers, no row MACs); this "
    "router needs schema 2. Stop every router using it, back it up, and run `fdp-router ledger "
    "migrate --config <router config>` (it verifies the trail, then converts the database in one "
    'transaction): docs/ledger-operations.md, "Upgrading a schema 1 ledger"'
)
SELECT_HEAD = f"SELECT {', '.join(HEAD_COLUMNS)} FROM fdp_head WHERE id = 1"  # noqa: S608
INSERT_HEAD = f"INSERT INTO fdp_head (id, {', '.join(HEAD_COLUMNS)}) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
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
assert AUDIT_COLUMNS == audit_mod.STORED_COLUMNS  # audit.seal_row returns rows in this order
MAX_BATCH = 512
DEFERRED_MAX_DELAY_SECONDS = 0.05  # a deferred commit record waits at most this for company
# While other requests of this process hold open reservations, the writer waits this long after
# the first operation of a batch for more (their commits, the next requests' reservations): see
# SqlLedger._gather. Nothing open (a lone request): no wait.
GATHER_SECONDS = 0.001
MAX_SQL_PARAMS = 999  # per statement: SQLite's lowest default limit
MAX_CACHED_UNITS = 100_000  # unit states kept between batches (all windows)
MAX_CACHED_PLANS = 8192  # (user, department, hospitals) -> stored unit keys and budgets (~1 KB each)
IDLE_LOCK_WAIT_SECONDS = 0.002  # the idle fast path's wait for the batch lock, then the writer thread
# An inline transaction slower than this (a stalling disk: the event loop waited for it) turns
# the idle fast path off for IDLE_STALL_OFF_SECONDS: operations go to the writer thread, where a
# stall costs the caller its deadline (503) and not the whole event loop.
IDLE_STALL_SECONDS = 0.1
IDLE_STALL_OFF_SECONDS = 60.0
OPEN_STALE_SECONDS = 60.0  # an open reservation older than this no longer counts as a request in flight
TOUCH_HEAD = "UPDATE fdp_head SET seq = seq WHERE id = 1"  # check(): a real, tiny durable write

# (operation, seconds, error or None): see SqlLedger.set_observer
Observer = Callable[[str, float, LedgerUnavailable | None], None]
OP_LABELS = {"reserve": "reserve", "commit": "commit", "release": "release", "ping": "check"}


@dataclass(slots=True)
class _Op:
    kind: str  # reserve | commit | release | ping | stop | wake (deferred records held)
    future: asyncio.Future[Any] | None  # on the caller's loop; None for stop
    charge: Charge | None = None
    cost: tuple[float, ...] = ()
    epsilon: float = 0.0
    window_id: int = 0
    now: datetime | None = None
    reservation_id: str = ""
    nodes: tuple[str, ...] = ()
    deferred: bool = False  # nobody waits for it: may ride along with a later batch
    held_at: float = 0.0  # deferred: when it was held (time.monotonic), for the writer's clock
    expired: bool = False  # its caller's deadline passed (the future was cancelled for it)


class SqlDriver(abc.ABC):
    """What differs between SQLite and PostgreSQL (connections, locking, placeholders, how a
    call is aborted, which errors mean "unavailable now"), plus the bounded reader connection
    and the watchdog both use."""

    def __init__(self, timeouts: LedgerTimeouts | None = None) -> None:
        self.timeouts = timeouts or LedgerTimeouts()
        self.watchdog = Watchdog()
        self._reader_conn: Any = None
        self._reader_lock = threading.Lock()

    # Whether an operation may run its transaction on the caller's thread when the ledger is
    # idle (SqlLedger's idle fast path): only for a database whose calls do not wait on a
    # network (SQLite); the caller's thread is an event loop.
    inline = False

    def lock_wait(self, conn: Any, wait: bool) -> None:
        """Whether taking the write lock on `conn` waits (``timeouts.lock_seconds``) or fails at
        once with a busy error (the idle fast path). Only called for ``inline`` drivers."""
        return None

    @abc.abstractmethod
    def connect_writer(self) -> Any: ...

    @abc.abstractmethod
    def connect_reader(self) -> Any: ...

    def begin_snapshot(self, conn: Any) -> None:
        """Make the reads that follow on a fresh reader `conn` one consistent snapshot until it
        commits or rolls back (verify reads several tables while writers go on)."""
        return None

    @abc.abstractmethod
    def begin_locked(self, conn: Any) -> Any:
        """Start a transaction holding the ledger-wide write lock; return a cursor."""

    def sql(self, text: str) -> str:
        return text

    @abc.abstractmethod
    def begin_schema(self, conn: Any) -> Any:
        """Start a transaction that serialises schema creation across processes; a cursor."""

    @abc.abstractmethod
    def table_exists(self, cur: Any, name: str) -> bool: ...

    def init_schema(self, conn: Any, keyring: audit_mod.Keyring) -> Integrity:
        """Create the schema (or find it), in one transaction; returns the ledger's Integrity.
        Raises LedgerIntegrityError for a schema 1 database or a damaged identity row."""
        cur = self.begin_schema(conn)
        existed = self.table_exists(cur, "fdp_head")
        if existed and not self.table_exists(cur, "fdp_meta"):
            raise LedgerIntegrityError(OLD_SCHEMA)
        for stmt in SCHEMA:
            cur.execute(stmt)
        self.extra_schema(cur)
        cur.execute("SELECT value, mac FROM fdp_meta WHERE name = 'ledger'")
        row = cur.fetchone()
        if row is not None:
            integrity = read_ledger_row(keyring, str(row[0]), str(row[1]))
        elif existed:
            raise LedgerIntegrityError(
                "the ledger's identity row (fdp_meta 'ledger') is missing: the database was changed "
                "without the audit key (run `fdp-router ledger verify`)"
            )
        else:
            ledger_id, key_id = secrets.token_hex(8), keyring.active_id
            value, mac = ledger_row(keyring, ledger_id, key_id)
            cur.execute(
                self.sql("INSERT INTO fdp_meta (name, value, mac) VALUES ('ledger', ?, ?)"), (value, mac)
            )
            integrity = Integrity(keyring, ledger_id, key_id)
            head = integrity.signed_head(Head(0, audit_mod.GENESIS, "", 0, 0, audit_mod.GENESIS, 0, ""))
            cur.execute(
                self.sql(INSERT_HEAD),
                (*head.fields(), head.mac),
            )
        conn.commit()
        return integrity

    def drop_old_triggers(self, cur: Any) -> None:
        """Schema 1's guards that schema 2 replaces (``ledger migrate``). Default: none."""
        return None

    @abc.abstractmethod
    def extra_schema(self, cur: Any) -> None:
        """Append-only guards (triggers) on the audit table: no UPDATE; DELETE only of records
        at or below the head's ``base_seq`` (archived, maintenance.py moves it first)."""

    @abc.abstractmethod
    def classify(self, exc: BaseException) -> str | None:
        """The `LedgerUnavailable.KINDS` entry an error of this database means, or None when
        it says nothing about availability (a bug, a violated constraint: stays an error)."""

    def usable(self, conn: Any) -> bool:
        """False once the connection is known to be dead (it is then replaced)."""
        return True

    @contextlib.contextmanager
    def interrupter(self, conn: Any) -> Iterator[Callable[[], None]]:
        """A callable that, from another thread, makes the call running on `conn` fail now."""
        yield _noop

    def simple_abort(self, conn: Any) -> Callable[[], None] | None:
        """The abort callable of `conn` when it needs no setup or cleanup (SQLite's
        ``interrupt``): `bounded` then skips `interrupter`. None: use `interrupter`."""
        return None

    def bounded(self, conn: Any, seconds: float | None = None) -> contextlib.AbstractContextManager[Guard]:
        """Run database calls on `conn` under the watchdog: aborted after `seconds` (default
        ``timeouts.statement_seconds``). `Guard.fired` says whether that happened."""
        abort = self.simple_abort(conn)
        if abort is not None:
            return self.watchdog.guard(seconds or self.timeouts.statement_seconds, abort)
        return self._bounded(conn, seconds)

    @contextlib.contextmanager
    def _bounded(self, conn: Any, seconds: float | None) -> Iterator[Guard]:
        with (
            self.interrupter(conn) as abort,
            self.watchdog.guard(seconds or self.timeouts.statement_seconds, abort) as guard,
        ):
            yield guard

    @contextlib.contextmanager
    def reader(self) -> Iterator[Any]:
        """The connection for reads: one, shared under a lock (waited for at most
        ``operation_seconds``, so that reads queued behind a hung one do not hold threads
        longer than their callers wait), opened on demand and replaced when it died."""
        if not self._reader_lock.acquire(timeout=self.timeouts.operation_seconds):
            raise TimeoutError("the ledger's read connection stayed busy (a read is hung)")
        try:
            if self._reader_conn is None or not self.usable(self._reader_conn):
                _close_quietly(self._reader_conn)
                self._reader_conn = None
                self._reader_conn = self.connect_reader()
            conn = self._reader_conn
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception), self.bounded(conn):
                    conn.rollback()
                if not self.usable(conn):
                    _close_quietly(conn)
                    self._reader_conn = None
                raise
        finally:
            self._reader_lock.release()

    def close(self) -> None:
        """Close the read connection and stop the watchdog (the writer's is the ledger's)."""
        if self._reader_lock.acquire(timeout=self.timeouts.operation_seconds):
            try:
                _close_quietly(self._reader_conn)
                self._reader_conn = None
            finally:
                self._reader_lock.release()
        self.watchdog.stop()


def _noop() -> None:
    pass


def _close_quietly(conn: Any) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()


def describe(exc: BaseException) -> str:
    """One line for logs: the error's class and its first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


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
        idle_fast_path: bool = False,
        retention: LedgerRetention | None = None,
        checkpoint: audit_mod.Checkpoint | None = None,
        restore_gap: str = "refuse",
    ) -> None:
        """Opens (creating if needed) the ledger's schema and checks its identity and head
        rows. With `checkpoint` (the last one exported), refuses a ledger that does not
        contain it (LedgerIntegrityError) unless `restore_gap` is ``charge_full_window``: then
        the gap is recorded and every unit's budget counts as spent until the window closes.
        With `retention` (and ``in_router``), a thread archives and prunes every interval."""
        check_policy(privacy_cfg)
        self._deferred_commit = deferred_commit
        self._idle_fast_path = idle_fast_path and driver.inline
        self._fast_path_off_until = 0.0  # after a stalled inline transaction (IDLE_STALL_SECONDS)
        self._driver = driver
        self._timeouts = driver.timeouts
        self._cfg = privacy_cfg
        self._keyring = keyring
        self._now = now or (lambda: datetime.now(UTC))
        self._guarantee = guarantee(privacy_cfg).text
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        # Deferred commit records, kept apart from the queue: adding one wakes the writer only
        # when the list was empty (it then holds them for company), not once per record.
        self._deferred_ops: deque[_Op] = deque()
        self._deferred_lock = threading.Lock()
        # The writer will look at the held records within DEFERRED_MAX_DELAY_SECONDS without
        # being woken (it waits with that timeout, or is busy and looks again before it waits).
        self._writer_looks = False
        self._stopped: Future[None] = Future()
        # Held while a batch runs (the writer thread, or a caller on the idle fast path).
        self._batch_lock = threading.Lock()
        self._pending = 0  # operations submitted and not yet settled (the idle test)
        # Reservations returned and not yet settled, with when: other requests in flight.
        self._open: dict[str, float] = {}
        # The writer is waiting for company (_gather); set when no other reservation is open.
        self._gathering = False
        self._gathered = threading.Event()
        self._observer: Observer | None = None
        # Operation deadlines, per event loop (_submit): the last one used, and all of them.
        self._deadlines: _Deadlines | None = None
        self._all_deadlines: dict[asyncio.AbstractEventLoop, _Deadlines] = {}
        self._deadlines_lock = threading.Lock()
        # Unit states as of our last commit; valid while the head's (seq, base_seq) is unchanged.
        self._units: dict[tuple[str, str, int], _UnitState] = {}
        self._units_seq: tuple[int, int] = (-1, -1)
        self._plans: dict[tuple[str, str, tuple[str, ...]], _Plan] = {}  # see _units_plan
        self._closed = False
        self._writer_conn: Any = None
        self._gap_until: int | None = None  # windows up to this one count as fully spent
        self._key_usage: tuple[str, int] = (keyring.active_id, 0)
        self._warned_at = 0
        self._tampered_seen: set[tuple[str, str, int]] = set()
        self._retention = retention
        self._maintenance_stop = threading.Event()
        self._maintenance: threading.Thread | None = None
        try:
            self._writer_conn = driver.connect_writer()
            with driver.bounded(self._writer_conn):
                self._integrity = driver.init_schema(self._writer_conn, keyring)
                head, gaps = self._load_state()
                if checkpoint is not None:
                    self._check_checkpoint(checkpoint, restore_gap, head, gaps)
        except Exception as exc:
            _close_quietly(self._writer_conn)
            driver.close()
            error = self._unavailable(exc, fired=False)
            if error is None:
                raise
            raise error from exc
        self._thread = threading.Thread(target=self._writer_loop, name="fdp-ledger-writer", daemon=True)
        self._thread.start()
        if retention is not None and retention.audit_seconds is not None and retention.in_router:
            self._maintenance = threading.Thread(target=self._maintain, name="fdp-ledger-prune", daemon=True)
            self._maintenance.start()

    # --- opening: identity, head, checkpoint, restore gap ---------------------------------

    @property
    def integrity(self) -> Integrity:
        return self._integrity

    @property
    def driver(self) -> SqlDriver:
        return self._driver

    @property
    def key_usage(self) -> tuple[str, int, int]:
        """(the key sealing new records, how many records it has sealed, its limit): for a
        gauge; the ledger refuses to seal past the limit (rotate the key before)."""
        key_id, count = self._key_usage
        return key_id, count, audit_mod.NONCE_LIMIT

    def _load_state(self) -> tuple[Head, list[dict[str, Any]]]:
        """Read and check the head and the accepted restore gaps (writer connection)."""
        conn = self._writer_conn
        cur = conn.cursor()
        cur.execute(SELECT_HEAD)
        head = Head(*cur.fetchone())
        if not self._integrity.head_ok(head):
            raise LedgerIntegrityError(
                "the ledger's head row fails its MAC: the database was changed without the audit key "
                "(run `fdp-router ledger verify`; restore a backup if it reports damage)"
            )
        gaps = read_meta_json(cur, self._driver, self._integrity, "gaps") or []
        conn.commit()
        if gaps:
            self._gap_until = max(int(g["until_window"]) for g in gaps)
        self._key_usage = (head.key_id or self._keyring.active_id, head.key_count)
        self._warn_key_usage(head.key_id, head.key_count)
        return head, gaps

    def _check_checkpoint(
        self, cp: audit_mod.Checkpoint, restore_gap: str, head: Head, gaps: list[dict[str, Any]]
    ) -> None:
        try:
            audit_mod.check_checkpoint(self._keyring, cp)
        except ValueError as exc:
            raise LedgerIntegrityError(f"ledger.checkpoint_file: {exc}") from None
        behind = compare_to_checkpoint(self._writer_conn.cursor(), self._driver, self._integrity, head, cp)
        self._writer_conn.commit()
        if behind is None:
            return
        if any(g["checkpoint"] == cp.body() for g in gaps):
            log.warning(
                "ledger: behind the checkpoint (%s); the gap was accepted earlier and is charged", behind
            )
            return
        if restore_gap != "charge_full_window":
            raise LedgerIntegrityError(
                f"the ledger is behind the last exported checkpoint ({behind}); it may have lost "
                "spends, so serving from it could give budget back. Restore a newer backup, or accept "
                "the gap with ledger.restore_gap: charge_full_window (every unit's budget then counts "
                "as fully spent until the current window closes): docs/ledger-operations.md, "
                '"Backup and restore"'
            )
        self._accept_gap(cp, behind)

    def _accept_gap(self, cp: audit_mod.Checkpoint, behind: str) -> None:
        """Record, in the trail and the (MACed) meta row ``gaps``, that this ledger serves
        although it is behind `cp`, charging every unit its full budget until the current
        window closes. One transaction on the writer connection (before the writer starts)."""
        now = self._now()
        window = window_of(self._cfg, now).id
        conn = self._writer_conn
        cur = self._driver.begin_locked(conn)
        cur.execute(SELECT_HEAD)
        tx = _Batch(cur, self._driver, Head(*cur.fetchone()), self._units, self._integrity)
        gaps = tx.meta_json("gaps") or []
        entry = {
            "checkpoint": cp.body(),
            "until_window": window,
            "accepted_at": now.isoformat(),
            "behind": behind,
        }
        gaps.append(entry)
        tx.meta_writes["gaps"] = json.dumps(gaps, sort_keys=True)
        self._prepare_key(tx, 1)
        self._audit(tx, kind="gap", rid="", eps=0.0, ts=now.isoformat(), sensitive=entry)
        tx.flush()
        conn.commit()
        self._units.clear()
        self._gap_until = max(window, self._gap_until if self._gap_until is not None else window)
        log.error(
            "ledger: serving although behind the last exported checkpoint (%s), as ledger.restore_gap "
            "allows: every unit counts as fully spent until window %d closes",
            behind,
            window,
        )

    # --- retention (maintenance.py does the work) ------------------------------------------

    def _maintain(self) -> None:
        from fdp_router.privacy.ledger import maintenance

        assert self._retention is not None
        while not self._maintenance_stop.wait(self._retention.interval_seconds):
            try:
                report = maintenance.prune(
                    self._driver, self._keyring, self._cfg, self._retention, self._now()
                )
                if report.archived:
                    log.info("ledger: %s", report.describe())
            except Exception:
                log.exception("ledger: pruning failed; the live database keeps the records")

    def _warn_key_usage(self, key_id: str, count: int) -> None:
        if count < audit_mod.NONCE_WARN or count - self._warned_at < audit_mod.NONCE_WARN_STEP:
            return
        self._warned_at = count
        log.warning(
            "ledger: audit key %r has sealed %d records of the %d AES-GCM allows with random nonces; "
            "rotate it (append a new key to the keyring and restart) before it refuses to seal more",
            key_id,
            count,
            audit_mod.NONCE_LIMIT,
        )

    @property
    def keyring(self) -> audit_mod.Keyring:
        return self._keyring

    def query_hash(self, text: str) -> str:
        """HMAC of the query text under a key derived from the active audit key."""
        return audit_mod.query_hash(self._keyring.query_hash_key, text)

    def set_observer(self, observer: Observer | None) -> None:
        """Called on the caller's event loop after every operation with (operation, seconds
        from submission to outcome, the LedgerUnavailable it raised or None). Operations:
        reserve, commit, release, read, check. Budget refusals and bad input are outcomes
        (None): only unavailability counts as an error."""
        self._observer = observer

    # --- public API -----------------------------------------------------------------------

    async def reserve(self, charge: Charge, nodes: tuple[str, ...] = ()) -> Reservation:
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
            nodes=tuple(nodes),
        )
        result: Reservation = await self._submit(op)
        self._open[result.id] = time.monotonic()
        return result

    async def commit(self, reservation_id: str, nodes: tuple[str, ...] = ()) -> None:
        self._open.pop(reservation_id, None)
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
        start = time.perf_counter()
        self._pending += 1
        op.future.add_done_callback(lambda fut: self._deferred_done(fut, start))
        op.held_at = time.monotonic()
        self._hold([op])
        if self._gathering:
            self._end_gather()

    async def release(self, reservation_id: str) -> None:
        self._open.pop(reservation_id, None)
        await self._submit(
            _Op(
                "release",
                asyncio.get_running_loop().create_future(),
                reservation_id=reservation_id,
                now=self._now(),
            )
        )

    async def check(self) -> None:
        """A tiny durable write through the writer (the head row rewritten as it is, in its
        own transaction or riding along with a batch): returns when the ledger can record a
        spend now, raises LedgerUnavailable otherwise. For readiness checks (ledger_health)."""
        await self._submit(_Op("ping", asyncio.get_running_loop().create_future()))

    async def budget(self, scope: Scope, key: str) -> BudgetStatus:
        scope = Scope(scope)
        win = window_of(self._cfg, self._now())
        stored = self._integrity.stored_key(scope.value, key)
        row = await self._read(self._read_unit, scope, stored, win.id)
        spent = tuple(json.loads(row[0])) if row else flt.zero()
        total = budget_of(self._cfg, scope)
        consumed = flt.filter_epsilon(spent, self._cfg.delta)
        if row is not None and not hmac.compare_digest(
            self._integrity.unit_mac(scope.value, stored, win.id, row[0], row[1], row[2]), row[3]
        ):
            self._report_tampered((scope.value, stored, win.id), key)
            consumed = total  # a row changed without the key: counted as fully spent
        if self._gap_until is not None and win.id <= self._gap_until:
            consumed = total  # an accepted restore gap: fully spent until the window closes
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
        """Write what is queued (deferred commit records too), then stop. A second call, even
        while the first is still draining, returns only once the writer has stopped."""
        first = not self._closed
        if first:
            self._closed = True
            self._maintenance_stop.set()
            self._queue.put(_Op("stop", None))
        await asyncio.wrap_future(self._stopped)
        await asyncio.to_thread(self._thread.join)
        if not first:
            return
        if self._maintenance is not None:  # a prune stuck on a frozen database is not waited for
            await asyncio.to_thread(self._maintenance.join, self._timeouts.operation_seconds)
        await asyncio.to_thread(self._driver.close)

    def _report_tampered(self, ident: tuple[str, str, int], clear_key: str) -> None:
        """Log a unit row that fails its MAC, once per unit and process."""
        if ident in self._tampered_seen:
            return
        self._tampered_seen.add(ident)
        log.error(
            "ledger integrity: the %s unit %r (window %d) fails its MAC (changed without the audit key); "
            "it counts as fully spent. Run `fdp-router ledger verify`",
            ident[0],
            clear_key,
            ident[2],
        )

    async def _submit(self, op: _Op) -> Any:
        """Queue `op` for the writer and wait for its outcome, at most
        ``timeouts.operation_seconds``. On that deadline the caller gets LedgerUnavailable
        (timeout) and the future is cancelled: an operation the writer has not started is then
        dropped; one it is running completes or fails on its own (a reservation it records
        nobody will use stays spent: the safe side)."""
        if self._closed:
            raise PrivacyError("ledger is closed")
        fut = op.future
        assert fut is not None
        start = time.perf_counter()
        if (
            # Nothing pending but held deferred commit records (counted in _pending until
            # settled): the inline batch takes them along (_run_inline).
            self._pending == len(self._deferred_ops)
            and self._idle_fast_path
            and not self._others_open()
            and time.monotonic() >= self._fast_path_off_until
            and self._queue.empty()
            # Nothing pending: at most the writer thread is leaving its last batch (it resolved
            # the futures just before it lets go of the lock).
            and self._batch_lock.acquire(timeout=IDLE_LOCK_WAIT_SECONDS)
        ):
            try:
                ran = self._run_inline(op)
            finally:
                self._batch_lock.release()
            if ran:
                try:
                    result = fut.result()
                except LedgerUnavailable as exc:
                    self._observe(OP_LABELS[op.kind], start, exc)
                    raise
                self._observe(OP_LABELS[op.kind], start, None)
                return result
        loop = fut.get_loop()
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines_of(loop)
        deadlines.add(op)
        self._pending += 1
        self._queue.put(op)
        if self._gathering:
            self._end_gather()
        try:
            result = await fut
        except asyncio.CancelledError:
            if not op.expired:  # the caller itself was cancelled
                raise
            error = LedgerUnavailableError(
                "timeout",
                f"no outcome from the ledger database within {self._timeouts.operation_seconds:g} s "
                "(ledger.timeouts.operation_seconds)",
            )
            self._observe(OP_LABELS[op.kind], start, error)
            raise error from None
        except LedgerUnavailable as exc:
            self._observe(OP_LABELS[op.kind], start, exc)
            raise
        finally:
            self._pending -= 1
        self._observe(OP_LABELS[op.kind], start, None)
        return result

    def _deadlines_of(self, loop: asyncio.AbstractEventLoop) -> _Deadlines:
        """The deadline sweep of `loop` (one per event loop that submits operations; the
        map is shared by the loops' threads, hence the lock, taken only here)."""
        with self._deadlines_lock:
            deadlines = self._all_deadlines.get(loop)
            if deadlines is None:
                for other in [lp for lp in self._all_deadlines if lp.is_closed()]:
                    del self._all_deadlines[other]
                deadlines = self._all_deadlines[loop] = _Deadlines(loop, self._timeouts.operation_seconds)
        self._deadlines = deadlines
        return deadlines

    def _others_open(self) -> bool:
        """Whether another request of this process holds an open reservation (its commit or
        release will follow soon: group commit should batch it with this operation). One
        never settled (its caller was cancelled) stops counting after OPEN_STALE_SECONDS."""
        stale = time.monotonic() - OPEN_STALE_SECONDS
        while self._open:
            rid, since = next(iter(self._open.items()))
            if since > stale:
                return True
            del self._open[rid]
        return False

    def _run_inline(self, op: _Op) -> bool:
        """The idle fast path (module docstring): `op` as a batch on this thread, together
        with the deferred commit records held for company (taken as the writer takes them,
        so each is written exactly once), every future settled here (or, for a record of
        another event loop, on that loop). False (nothing done, the future untouched, the
        taken records held again) when there is no live connection, or another process holds
        the write lock: then the writer thread takes it, waiting for the lock as usual.
        Called with the batch lock held."""
        conn = self._writer_conn
        if conn is None or not self._driver.usable(conn):
            return False
        taken = self._take_deferred(everything=False) if self._deferred_ops else []
        held = [d for d in taken if d.future is not None and not d.future.cancelled()]
        batch = [*held, op]
        assert op.future is not None
        loop = op.future.get_loop()
        started = time.monotonic()
        ran = True
        try:
            ran = self._run_batch(batch, lambda outcomes: _settle_from(loop, outcomes), inline=True)
            return ran
        except Exception as exc:  # as in the writer loop: nothing recorded, no crash
            log.exception("ledger: unexpected failure; %d operations not recorded", len(batch))
            _settle_from(loop, [(o, None, PrivacyError(f"ledger write failed: {exc}")) for o in batch])
            return True
        finally:
            if not ran:
                self._hold(held, front=True)
            took = time.monotonic() - started
            if took > IDLE_STALL_SECONDS:
                self._fast_path_off_until = time.monotonic() + IDLE_STALL_OFF_SECONDS
                log.warning(
                    "ledger: a transaction on the event loop took %.0f ms (slow disk?); the idle fast "
                    "path is off for %.0f s (ledger.idle_fast_path)",
                    took * 1000,
                    IDLE_STALL_OFF_SECONDS,
                )

    def _hold(self, ops: list[_Op], *, front: bool = False) -> None:
        """Hold deferred commit records for company (`front`: records an inline batch took
        but did not run, back in front of the others, under the batch lock, so the writer's
        last take at close() sees them). The writer's clock then runs for the first one held:
        it wakes the writer, unless the writer will look within the records' delay anyway
        (waiting with that timeout after a batch that reserved, or busy): at concurrency 1 that
        wake-up came while the loop was sending the answer, and cost it the GIL."""
        if not ops:
            return
        with self._deferred_lock:
            first_held = not self._deferred_ops
            if front:
                self._deferred_ops.extendleft(reversed(ops))
            else:
                self._deferred_ops.extend(ops)
        if first_held and not self._writer_looks:
            self._queue.put(_Op("wake", None))

    def _observe(self, op: str, start: float, error: LedgerUnavailable | None) -> None:
        if self._observer is not None:
            try:
                self._observer(op, time.perf_counter() - start, error)
            except Exception:
                log.exception("ledger observer failed")

    def _deferred_done(self, fut: asyncio.Future[Any], start: float) -> None:
        self._pending -= 1
        if fut.cancelled():
            return
        exc = fut.exception()
        if isinstance(exc, LedgerUnavailable):  # the state change is logged by the observer
            log.debug("deferred commit not recorded (ledger unavailable); the reservation stays spent")
            self._observe("commit", start, exc)
            return
        self._observe("commit", start, None)
        if exc is not None:
            log.error("deferred commit failed; the reservation stays spent", exc_info=exc)

    def _unavailable(self, exc: BaseException, *, fired: bool) -> LedgerUnavailableError | None:
        """The LedgerUnavailableError an error of the database means (None: not one)."""
        if isinstance(exc, LedgerUnavailableError):
            return exc
        if fired:
            return LedgerUnavailableError(
                "timeout",
                f"a ledger database call took longer than {self._timeouts.statement_seconds:g} s "
                f"(ledger.timeouts.statement_seconds) and was aborted ({describe(exc)})",
            )
        kind = "timeout" if isinstance(exc, TimeoutError) else self._driver.classify(exc)
        return None if kind is None else LedgerUnavailableError(kind, describe(exc))

    # --- reads ----------------------------------------------------------------------------

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self._timeouts.operation_seconds):
                result = await asyncio.to_thread(self._read_sync, fn, *args)
        except TimeoutError:
            error = LedgerUnavailableError(
                "timeout",
                f"no answer from the ledger database within {self._timeouts.operation_seconds:g} s "
                "(ledger.timeouts.operation_seconds)",
            )
            self._observe("read", start, error)
            raise error from None
        except LedgerUnavailable as exc:
            self._observe("read", start, exc)
            raise
        self._observe("read", start, None)
        return result

    def _read_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run an idempotent read, once more on a fresh connection if the first one had died
        (a restart or failover since it was last used)."""
        for attempt in (0, 1):
            guard: Guard | None = None
            try:
                with self._driver.reader() as conn, self._driver.bounded(conn) as guard:
                    return fn(conn, *args)
            except Exception as exc:
                error = self._unavailable(exc, fired=guard is not None and guard.fired)
                if error is None:
                    raise
                if attempt == 0 and error.kind == "connection":
                    continue
                raise error from exc
        raise AssertionError("unreachable")

    def _read_unit(self, conn: Any, scope: Scope, key: str, window_id: int) -> Any:
        cur = conn.cursor()
        cur.execute(
            self._driver.sql(
                "SELECT rdp, basic_eps, n_queries, mac FROM fdp_units "
                "WHERE scope=? AND unit_key=? AND window_id=?"
            ),
            (scope.value, key, window_id),
        )
        row = cur.fetchone()
        conn.commit()
        return row

    # --- the writer -----------------------------------------------------------------------

    def _writer_loop(self) -> None:
        stop: _Op | None = None
        busy = False  # the writer's scheduling policy (writer_scheduling): SCHED_BATCH if True
        held_since: float | None = None  # deferred records wait (for company) since then
        reserved = False  # the last batch recorded reservations and no wait has timed out since
        while stop is None:
            # Not looking by itself while it decides (_hold wakes it), whatever it decided last.
            self._writer_looks = False
            if held_since is None:  # held while this thread was busy: their clock runs now
                held_since = self._oldest_held()
            if held_since is not None:
                timeout: float | None = max(0.0, held_since + DEFERRED_MAX_DELAY_SECONDS - time.monotonic())
            elif reserved:
                # The reservations just recorded will be committed, soon if their nodes are
                # fast: look again within the records' delay, so that holding a commit record
                # needs no wake-up of this thread. Once only: a slow node's commit wakes it
                # (one wake-up), where polling while it computes would cost twenty a second.
                timeout = DEFERRED_MAX_DELAY_SECONDS
            else:
                timeout = None
            self._writer_looks = timeout is not None
            try:
                first: _Op | None = self._queue.get(timeout=timeout)
            except queue.Empty:  # nobody else came: write the held records on their own
                first = None
                reserved = False
            batch = [first] if first is not None else []
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = next((op for op in batch if op.kind == "stop"), None)
            if not batch:
                # The clock ran out. An inline batch (idle fast path) may have taken the records
                # it was started for: it runs on for the oldest record still held, if any.
                oldest = self._oldest_held()
                if oldest is None or oldest + DEFERRED_MAX_DELAY_SECONDS > time.monotonic():
                    held_since = oldest
                    continue
            if first is not None and stop is None and all(op.future is None for op in batch):
                # Only wake-ups for deferred records: hold them (up to DEFERRED_MAX_DELAY_SECONDS)
                # so that they share the next waited-for batch's transaction and fsync instead
                # of costing one of their own in front of it.
                if held_since is None:
                    held_since = self._oldest_held()  # None: an inline batch took them already
                continue
            if first is not None and stop is None and self._in_flight():
                self._gather(batch)
                stop = next((op for op in batch if op.kind == "stop"), None)
            work: list[_Op] = []
            try:
                # The held records are taken under the batch lock: an inline batch (idle fast
                # path) takes them under it too, and gives back under it what it did not run,
                # so the last take at close() misses none.
                with self._batch_lock:
                    deferred = self._take_deferred(everything=stop is not None)
                    held_since = self._oldest_held()  # over MAX_BATCH: soon
                    # A caller that gave up (cancelled, or past its deadline) before its turn
                    # records nothing. (Reading the flag from this thread is a benign race: a
                    # caller cancelled after this check has its reservation recorded and never
                    # refunded, which is the safe side.)
                    work = [
                        op
                        for op in chain(deferred, batch)
                        if op.future is not None and not op.future.cancelled()
                    ]
                    if work:
                        self._run_batch(work)
                    reserved = any(op.kind == "reserve" for op in work)
            except BaseException as exc:  # never let the writer die: it serves every request
                log.exception("ledger writer: unexpected failure; %d operations not recorded", len(work))
                _resolve([(op, None, PrivacyError(f"ledger write failed: {exc}")) for op in work])
            # Several callers' operations came in one batch: the loop is busy (see
            # writer_scheduling); one caller's, or held records only: it is idle.
            if (sum(1 for op in batch if op.future is not None) > 1) is not busy:
                busy = not busy
                writer_scheduling(busy)
        try:
            with self._batch_lock:
                _close_quietly(self._writer_conn)
        finally:
            self._stopped.set_result(None)

    def _oldest_held(self) -> float | None:
        """When the oldest deferred record still held was held (None: none is)."""
        with self._deferred_lock:
            return self._deferred_ops[0].held_at if self._deferred_ops else None

    def _take_deferred(self, *, everything: bool) -> list[_Op]:
        """The held deferred commit records to write now (at most MAX_BATCH, unless stopping)."""
        with self._deferred_lock:
            ops = self._deferred_ops
            n = len(ops) if everything else min(len(ops), MAX_BATCH)
            return [ops.popleft() for _ in range(n)]

    def _gather(self, batch: list[_Op]) -> None:
        """Add to `batch` what arrives within GATHER_SECONDS, or until no other reservation
        of this process is open (the last one settled: nobody else is coming soon). Only
        called while some are: those requests' commits and the next requests' reservations
        then share this batch's transaction and fsync instead of paying their own (each one's
        fixed cost, a dozen statements and a durable commit, is most of an operation's CPU);
        a lone request never waits. The writer sleeps once here, with no wake-up per arrival."""
        self._gathered.clear()
        self._gathering = True
        try:
            if self._in_flight():  # again: the last one may have settled before the flag was up
                self._gathered.wait(GATHER_SECONDS)
        finally:
            self._gathering = False
        while len(batch) < MAX_BATCH:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break

    def _end_gather(self) -> None:
        """(Event loop, after queueing an operation.) Stop the writer's wait for company when
        no other reservation is open any more: the last one's settlement is queued."""
        if not self._others_open():
            self._gathered.set()

    def _in_flight(self) -> bool:
        """Whether another reservation of this process is open and not stale (the newest
        one is recent): for the writer thread, which only reads `_open` (the event loop
        prunes it)."""
        try:
            newest = next(reversed(self._open.values()), None)
        except RuntimeError:  # changed under us by the event loop's thread: something is open
            return True
        return newest is not None and newest > time.monotonic() - OPEN_STALE_SECONDS

    def _run_batch(
        self,
        batch: Sequence[_Op],
        resolve: Callable[[Sequence[_Outcome]], None] | None = None,
        *,
        inline: bool = False,
    ) -> bool:
        """Run `batch` in one transaction and hand every outcome to `resolve` (default: to
        each caller's loop, from the writer thread). Returns True; False only `inline`, when
        the write lock was busy and nothing was done or resolved."""
        resolve = resolve or _resolve
        retried = False
        while True:
            progress = _Progress()
            try:
                outcomes = self._transaction(batch, progress, inline=inline)
            except BaseException as exc:  # nothing was committed: nothing is acknowledged
                self._units.clear()  # states may hold this batch's uncommitted spends
                self._abandon_transaction()
                error = self._unavailable(exc, fired=progress.fired)
                if inline and error is not None and error.kind == "busy" and not progress.committing:
                    return False  # another process holds the write lock: the writer thread waits
                if (
                    error is not None
                    and error.kind == "connection"
                    and progress.reused_connection
                    and not progress.committing
                    and not retried
                ):
                    # The connection died while idle (a restart, a failover). Nothing of this
                    # batch reached a COMMIT: run it again, once, on a new connection.
                    if inline:  # the writer thread reconnects and runs it
                        return False
                    log.info("ledger: connection lost while idle (%s); reconnected", describe(exc))
                    retried = True
                    batch = [op for op in batch if op.future is not None and not op.future.cancelled()]
                    if batch:
                        continue
                    return True
                if error is None:
                    log.exception("ledger transaction failed; %d operations not recorded", len(batch))
                    resolve([(op, None, PrivacyError(f"ledger write failed: {exc}")) for op in batch])
                else:  # expected while the database is down: ledger_health logs the state change
                    log.debug("ledger unavailable; not recorded: %s: %s", _kinds(batch), error)
                    resolve([(op, None, LedgerUnavailableError(error.kind, error.detail)) for op in batch])
                return True
            if len(self._units) > MAX_CACHED_UNITS:
                self._units.clear()
            resolve(outcomes)
            return True

    def _writer(self, progress: _Progress) -> Any:
        """The writer connection, (re)connected if there is none or it died."""
        conn = self._writer_conn
        if conn is not None and self._driver.usable(conn):
            progress.reused_connection = True
            return conn
        self._drop_writer()
        self._writer_conn = self._driver.connect_writer()
        return self._writer_conn

    def _drop_writer(self) -> None:
        _close_quietly(self._writer_conn)
        self._writer_conn = None

    def _abandon_transaction(self) -> None:
        conn = self._writer_conn
        if conn is None:
            return
        try:
            if not self._driver.usable(conn):
                raise ConnectionError("connection is dead")
            with self._driver.bounded(conn):
                conn.rollback()
        except Exception:  # the connection is gone: the next batch opens a new one
            self._drop_writer()

    def _transaction(
        self, batch: Sequence[_Op], progress: _Progress, *, inline: bool = False
    ) -> list[_Outcome]:
        """One locked transaction for the whole batch, committed once; raises (with nothing
        committed, unless `progress.committing`) if the database fails."""
        outcomes: list[_Outcome] = []
        conn = self._writer(progress)
        if self._driver.inline:  # the idle fast path never waits for another process's lock
            self._driver.lock_wait(conn, not inline)
        with self._driver.bounded(conn) as guard:
            try:
                cur = self._driver.begin_locked(conn)
                cur.execute(SELECT_HEAD)
                head = Head(*cur.fetchone())
                if not self._integrity.head_ok(head):
                    raise LedgerUnavailableError(
                        "integrity",
                        "the ledger's head row fails its MAC: the database was changed without the audit "
                        "key; nothing is recorded until it is repaired (run `fdp-router ledger verify`)",
                    )
                if (head.seq, head.base_seq) != self._units_seq:  # another writer since our last batch
                    self._units.clear()
                tx = _Batch(cur, self._driver, head, self._units, self._integrity)
                self._prepare_key(tx, sum(1 for op in batch if op.kind != "ping"))
                # Settlements first (a release frees room for a reservation in the same batch):
                # any order of one batch's operations is a valid serialisation, they were concurrent.
                settles = [op for op in batch if op.kind in ("commit", "release")]
                rows = tx.settle(settles) if settles else {}
                for op in (*settles, *(op for op in batch if op.kind == "reserve")):
                    try:
                        if op.kind == "reserve":
                            outcomes.append((op, self._reserve_in(tx, op), None))
                        else:
                            self._settle_in(tx, op, rows)
                            outcomes.append((op, None, None))
                    except PrivacyError as exc:
                        outcomes.append((op, None, exc))
                pings = [op for op in batch if op.kind == "ping"]
                if pings:
                    cur.execute(TOUCH_HEAD)
                    outcomes.extend((op, None, None) for op in pings)
                tx.flush()
                progress.committing = True
                conn.commit()
            finally:
                progress.fired = guard.fired
        self._units_seq = (tx.seq, head.base_seq)
        self._key_usage = (tx.key_id or self._keyring.active_id, tx.key_count)
        self._warn_key_usage(tx.key_id, tx.key_count)
        return outcomes

    def _prepare_key(self, tx: _Batch, records: int) -> None:
        """Seal with the active key from now on (its earlier count comes back from the meta
        row ``key_usage``), and refuse the batch if its `records` would take the key past
        the AES-GCM random-nonce limit."""
        active = self._keyring.active_id
        key_id, count = tx.key_id, tx.key_count
        if key_id != active:
            usage = tx.meta_json("key_usage") or {}
            if key_id:
                usage[key_id] = count
            count = int(usage.get(active, 0))
            if records:  # only a batch that seals switches (a check() only asks whether it could)
                tx.key_id, tx.key_count = active, count
                tx.meta_writes["key_usage"] = json.dumps(usage, sort_keys=True)
        if count + max(records, 1) > audit_mod.NONCE_LIMIT:
            raise LedgerUnavailableError(
                "key_exhausted",
                f"audit key {active!r} has sealed {count} records; AES-GCM with random nonces "
                f"allows {audit_mod.NONCE_LIMIT} per key. Rotate it: append a new key line to the "
                'audit keyring and restart the router (docs/privacy.md, "Key rotation")',
            )

    def _audit(
        self, tx: _Batch, *, kind: str, rid: str, eps: float, ts: str, sensitive: dict[str, Any]
    ) -> None:
        row = audit_mod.seal_row(
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
        tx.audits.append(row)  # in AUDIT_COLUMNS order (audit.STORED_COLUMNS)
        tx.seq, tx.head_hash = row[0], row[-1]
        tx.key_count += 1

    def _units_plan(self, charge: Charge) -> _Plan:
        """The units `charge` spends on, as stored, with their budgets (cached per user,
        department and hospitals: the same few combinations recur on every request)."""
        ident = (charge.user_id, charge.department, charge.hospitals)
        plan = self._plans.get(ident)
        if plan is None:
            if len(self._plans) >= MAX_CACHED_PLANS:
                self._plans.clear()
            stored_key = self._integrity.stored_key
            units = tuple(
                (scope, scope.value, key, stored_key(scope.value, key), budget_of(self._cfg, scope))
                for scope, key in units_of(charge)
            )
            units_json = orjson.dumps([[value, skey] for _, value, _, skey, _ in units]).decode()
            plan = self._plans[ident] = (units, units_json)
        return plan

    def _reserve_in(self, tx: _Batch, op: _Op) -> Reservation:
        assert op.now is not None and op.charge is not None
        now = op.now.isoformat()
        charge = op.charge
        if self._gap_until is not None and op.window_id <= self._gap_until:
            raise BudgetExceeded(Scope.USER, charge.user_id, op.epsilon, 0.0)  # accepted restore gap
        units, units_json = self._units_plan(charge)
        delta = self._cfg.delta
        cost = op.cost
        states = []
        for scope, value, key, skey, total in units:
            state = tx.unit(value, skey, op.window_id)
            if state.tampered:
                self._report_tampered(state.ident, key)
                raise BudgetExceeded(scope, key, op.epsilon, 0.0)
            if not flt.admits(state.spent, cost, total, delta):
                available = max(0.0, total - flt.filter_epsilon(state.spent, delta))
                raise BudgetExceeded(scope, key, op.epsilon, available)
            states.append(state)
        for state in states:  # every unit fits: now record the spend on all of them
            state.spent = flt.add(state.spent, cost)
            state.basic += op.epsilon
            state.n += 1
            tx.dirty[state.ident] = state
        # units_of puts the user first; its state now includes this spend.
        user_total = units[0][4]
        user_remaining = max(0.0, user_total - flt.filter_epsilon(states[0].spent, delta))
        rid = secrets.token_hex(16)
        event_json = _event_json(charge.event)
        tx.reservations.append(  # rdp '': a refund recomputes the cost from the (MACed) event
            (
                rid,
                op.window_id,
                units_json,
                event_json,
                "",
                op.epsilon,
                delta,
                now,
                self._integrity.reservation_mac(
                    rid, op.window_id, units_json, event_json, op.epsilon, delta, now
                ),
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
                "nodes": list(op.nodes),
            },
        )
        return Reservation(
            id=rid,
            charge=charge,
            epsilon=op.epsilon,
            delta=delta,
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
        window_id, units_json, event_json, eps, delta, created_at, mac = row
        intact = hmac.compare_digest(
            self._integrity.reservation_mac(
                op.reservation_id, window_id, units_json, event_json, eps, delta, created_at
            ),
            mac,
        )
        if not intact:
            log.error(
                "ledger integrity: reservation %r fails its MAC (changed without the audit key)%s",
                op.reservation_id,
                "; nothing refunded" if op.kind == "release" else "",
            )
            if op.kind == "release":
                raise UnknownReservation(
                    f"reservation {op.reservation_id!r} fails its integrity check; nothing refunded"
                )
        sensitive: dict[str, Any] = {"nodes": list(op.nodes)}
        if op.kind == "release":  # refund exactly what the reservation added, in its own window
            cost = event_cost(event_json)
            units = json.loads(units_json)
            for scope_v, key in units:
                state = tx.unit(scope_v, key, int(window_id))
                if state.tampered or (not state.exists and state.n == 0):
                    continue
                state.spent = flt.subtract(state.spent, cost)
                state.basic = max(0.0, state.basic - float(eps))
                state.n = max(0, state.n - 1)
                tx.dirty[state.ident] = state
            # What the refund changed, so that the trail replays without the reserve record
            # (archived by then, maintenance.py).
            sensitive.update(window_id=int(window_id), units=units, event=json.loads(event_json))
        self._audit(
            tx,
            kind=op.kind,
            rid=op.reservation_id,
            eps=float(eps),
            ts=op.now.isoformat(),
            sensitive=sensitive,
        )


_Outcome = tuple[_Op, Any, BaseException | None]
# A charge's units (scope, its value, clear key, stored key, budget epsilon) and their
# stored JSON list.
_Plan = tuple[tuple[tuple[Scope, str, str, str, float], ...], str]


def writer_scheduling(busy: bool) -> bool:
    """Run the calling thread (the writer) under Linux's SCHED_BATCH policy while `busy`, the
    default policy otherwise. Same CPU share either way; what changes is a wake-up. Under
    load the event loop wakes the writer while it is itself running: a writer woken under
    the default policy took the loop's CPU at once and then waited for the GIL the preempted
    loop still held, two context switches and an idle GIL per wake-up; under SCHED_BATCH it
    waits for a free CPU or the loop's next pause. A lone request's loop goes to sleep right
    after queueing, so there the default policy's immediate wake-up is what cuts latency
    (docs/benchmarks/router.md, "Round 8"). Lowering and restoring one's own policy needs no
    privilege; where it is unavailable (not Linux, a seccomp profile that refuses it)
    nothing changes. Returns whether the policy is now the one asked for."""
    setter = getattr(os, "sched_setscheduler", None)
    policy = getattr(os, "SCHED_BATCH" if busy else "SCHED_OTHER", None)
    if setter is None or policy is None:  # not Linux (SCHED_BATCH is Linux's own)
        return False
    try:
        setter(0, policy, os.sched_param(0))  # 0: the calling thread (Linux)
    except Exception as exc:  # refused (seccomp, a platform's own rules): the writer must live on
        log.debug("ledger writer: scheduling policy %d refused (%s)", policy, exc)
        return False
    return True


def _expire(op: _Op) -> None:
    """The caller's deadline: cancel its future (the writer skips cancelled operations)."""
    if op.future is not None and not op.future.done():
        op.expired = True
        op.future.cancel()


class _Deadlines:
    """The deadlines (``timeouts.operation_seconds`` after submission) of the operations one
    event loop is waiting for, with ONE timer: the operations in submission order, which is
    deadline order (the bound is the same for all), and a timer at the earliest deadline of
    an operation still waiting. When it fires, every operation past its deadline and not yet
    settled is expired (`_expire`: its caller gets LedgerUnavailable ``timeout``) and the timer
    moves to the next one. One ``loop.call_at`` per operation (a TimerHandle, a heap push with
    Python comparisons, a cancel) cost more than the rest of the caller's side of an operation.
    Used only on its loop's thread."""

    __slots__ = ("loop", "seconds", "timer", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        self.loop = loop
        self.seconds = seconds
        self.waiting: deque[tuple[float, _Op]] = deque()
        self.timer: asyncio.TimerHandle | None = None

    def add(self, op: _Op) -> None:
        waiting = self.waiting
        while waiting and waiting[0][1].future.done():  # type: ignore[union-attr]  # settled: forget
            waiting.popleft()
        deadline = self.loop.time() + self.seconds
        waiting.append((deadline, op))
        if self.timer is None:
            self.timer = self.loop.call_at(deadline, self.sweep)

    def sweep(self) -> None:
        self.timer = None
        now = self.loop.time()
        waiting = self.waiting
        while waiting:
            deadline, op = waiting[0]
            if op.future is not None and not op.future.done():
                if deadline > now:  # the earliest deadline still ahead: wait for it
                    self.timer = self.loop.call_at(deadline, self.sweep)
                    return
                _expire(op)
            waiting.popleft()


def _kinds(batch: Sequence[_Op]) -> str:
    counts: dict[str, int] = {}
    for op in batch:
        counts[op.kind] = counts.get(op.kind, 0) + 1
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


@dataclass(slots=True)
class _Progress:
    """How far one attempt at a batch got (decides whether running it again is safe)."""

    reused_connection: bool = False  # the connection predates this batch (it may have died idle)
    committing: bool = False  # COMMIT was sent: the outcome may be unknown
    fired: bool = False  # the watchdog aborted the transaction (timeout)


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
    """Set each outcome on its future; one already done (cancelled, or settled before a
    failure later in its batch) is left as it is."""
    for op, value, error in items:
        fut = op.future
        if fut is None or fut.done():
            continue
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(value)


def _settle_from(loop: asyncio.AbstractEventLoop, items: Sequence[_Outcome]) -> None:
    """(On `loop`'s thread: an inline batch.) Settle the outcomes of `loop`'s futures here
    and hand the others to their loops (a deferred record committed by another loop)."""
    here: list[_Outcome] = []
    elsewhere: list[_Outcome] = []
    for item in items:
        fut = item[0].future
        assert fut is not None
        (here if fut.get_loop() is loop else elsewhere).append(item)
    _settle(here)
    _resolve(elsewhere)


@dataclass(slots=True)
class _UnitState:
    scope: str
    key: str  # as stored: a pseudonym for users and departments
    window_id: int
    spent: tuple[float, ...]
    basic: float
    n: int
    exists: bool
    tampered: bool = False  # the row fails its MAC: never trusted, never written

    @property
    def ident(self) -> tuple[str, str, int]:
        return (self.scope, self.key, self.window_id)


def read_meta_json(cur: Any, driver: SqlDriver, integrity: Integrity, name: str) -> Any:
    """The JSON value of meta row `name` (None if absent); LedgerUnavailableError(integrity)
    if its MAC fails."""
    cur.execute(driver.sql("SELECT value, mac FROM fdp_meta WHERE name = ?"), (name,))
    row = cur.fetchone()
    if row is None:
        return None
    if not hmac.compare_digest(integrity.meta_mac(name, str(row[0])), str(row[1])):
        raise LedgerUnavailableError(
            "integrity", f"the ledger's meta row {name!r} fails its MAC: changed without the audit key"
        )
    return json.loads(row[0])


def load_integrity(cur: Any, driver: SqlDriver, keyring: audit_mod.Keyring) -> Integrity:
    """The ledger's Integrity from its identity row (LedgerIntegrityError if absent or bad)."""
    cur.execute("SELECT value, mac FROM fdp_meta WHERE name = 'ledger'")
    row = cur.fetchone()
    if row is None:
        raise LedgerIntegrityError("the ledger's identity row (fdp_meta 'ledger') is missing")
    return read_ledger_row(keyring, str(row[0]), str(row[1]))


def write_meta(cur: Any, driver: SqlDriver, integrity: Integrity, name: str, value: str) -> None:
    cur.execute(
        driver.sql(
            "INSERT INTO fdp_meta (name, value, mac) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value, mac = excluded.mac"
        ),
        (name, value, integrity.meta_mac(name, value)),
    )


def hash_at(cur: Any, driver: SqlDriver, head: Head, seq: int) -> str | None:
    """The hash of record `seq` as this database knows it: the genesis, the archived prefix's
    end, a live record; None if it has no such record (or it was archived)."""
    if seq == 0:
        return audit_mod.GENESIS
    if seq == head.base_seq:
        return head.base_hash
    if seq < head.base_seq or seq > head.seq:
        return None
    cur.execute(driver.sql("SELECT hash FROM fdp_audit WHERE seq = ?"), (seq,))
    row = cur.fetchone()
    return None if row is None else str(row[0])


def compare_to_checkpoint(
    cur: Any, driver: SqlDriver, integrity: Integrity, head: Head, cp: audit_mod.Checkpoint
) -> str | None:
    """None when this ledger contains checkpoint `cp` (its record `cp.seq` has the hash `cp`
    names); else why not, in words. A checkpoint inside the archived prefix counts as
    contained (the prefix's end is under the head's MAC; `ledger verify --archive` checks it)."""
    if cp.ledger_id != integrity.ledger_id:
        return f"the checkpoint is of ledger {cp.ledger_id}, this database is ledger {integrity.ledger_id}"
    if head.seq < cp.seq:
        return (
            f"its head is record {head.seq}, the checkpoint's is record {cp.seq} of {cp.time}: "
            f"{cp.seq - head.seq} records missing (a restored backup or a truncated database)"
        )
    if 0 < cp.seq < head.base_seq:
        return None
    got = hash_at(cur, driver, head, cp.seq)
    if got != cp.head:
        return f"its record {cp.seq} is not the checkpoint's (the trail was rewritten or replaced)"
    return None


class _Batch:
    """One locked transaction: rows collected while the operations are applied, written with
    one ``executemany`` per table at the end (fewer round trips, and for SQLite fewer GIL
    hand-offs between the writer thread and the event loop).

    Unit states come from ``units`` (kept by the ledger across batches while the head shows
    that nobody else wrote) or are read, and their MACs checked, *inside* this transaction.
    Valid because the batch holds the ledger's write lock from its first read to its commit.
    """

    def __init__(
        self,
        cur: Any,
        driver: SqlDriver,
        head: Head,
        units: dict[tuple[str, str, int], _UnitState],
        integrity: Integrity,
    ) -> None:
        self.cur = cur
        self._driver = driver
        self._integrity = integrity
        self.head = head
        self.seq = head.seq
        self.head_hash = head.hash
        self.key_id = head.key_id
        self.key_count = head.key_count
        self._units = units
        self.dirty: dict[tuple[str, str, int], _UnitState] = {}
        self.reservations: list[tuple[Any, ...]] = []
        self.audits: list[tuple[Any, ...]] = []
        self.meta_writes: dict[str, str] = {}

    def meta_json(self, name: str) -> Any:
        return read_meta_json(self.cur, self._driver, self._integrity, name)

    def unit(self, scope: str, key: str, window_id: int) -> _UnitState:
        ident = (scope, key, window_id)
        state = self._units.get(ident)
        if state is None:
            self.cur.execute(
                self._driver.sql(
                    "SELECT rdp, basic_eps, n_queries, mac FROM fdp_units "
                    "WHERE scope=? AND unit_key=? AND window_id=?"
                ),
                ident,
            )
            row = self.cur.fetchone()
            if row is None:
                state = _UnitState(scope, key, window_id, flt.zero(), 0.0, 0, False)
            else:
                rdp, basic, n, mac = str(row[0]), float(row[1]), int(row[2]), str(row[3])
                intact = hmac.compare_digest(
                    self._integrity.unit_mac(scope, key, window_id, rdp, basic, n), mac
                )
                state = _UnitState(scope, key, window_id, tuple(json.loads(rdp)), basic, n, True, not intact)
            self._units[ident] = state
        return state

    def settle(self, ops: Sequence[_Op]) -> dict[int, tuple[Any, ...] | None]:
        """Mark the reservations of these commit/release operations settled: one UPDATE ...
        RETURNING per kind. Returns, per operation (by id()), the reservation's (window_id,
        units, event, epsilon, delta, created_at, mac), or None when it was unknown or
        already settled (a duplicate in the batch gets None: the first one settled it)."""
        out: dict[int, tuple[Any, ...] | None] = {}
        for kind, new_state in (("commit", "committed"), ("release", "released")):
            group = [op for op in ops if op.kind == kind]
            if not group:
                continue
            ids = list(dict.fromkeys(op.reservation_id for op in group))
            settled_at = max(op.now for op in group if op.now is not None).isoformat()
            found: dict[str, tuple[Any, ...]] = {}
            for chunk in _chunks(ids, MAX_SQL_PARAMS - 2):
                self.cur.execute(self._driver.sql(_settle_sql(len(chunk))), (new_state, settled_at, *chunk))
                found.update((r[0], tuple(r[1:])) for r in self.cur.fetchall())
            for op in group:
                out[id(op)] = found.pop(op.reservation_id, None)
        return out

    def flush(self) -> None:
        if self.reservations:
            self._insert(
                "fdp_reservations (id, window_id, units, event, rdp, epsilon, delta, state, created_at, mac)",
                "(?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?)",
                self.reservations,
            )
        if self.audits:
            marks = "(" + ", ".join("?" for _ in AUDIT_COLUMNS) + ")"
            self._insert(f"fdp_audit ({', '.join(AUDIT_COLUMNS)})", marks, self.audits)
            h = self.head
            head = Head(
                self.seq,
                self.head_hash,
                self.key_id,
                self.key_count,
                h.base_seq,
                h.base_hash,
                h.base_window,
                "",
            )
            self.cur.execute(
                self._driver.sql(
                    "UPDATE fdp_head SET seq=?, hash=?, key_id=?, key_count=?, mac=? WHERE id = 1"
                ),
                (self.seq, self.head_hash, self.key_id, self.key_count, self._integrity.head_mac(head)),
            )
        for name, value in self.meta_writes.items():
            write_meta(self.cur, self._driver, self._integrity, name, value)
        if self.dirty:
            mac = self._integrity.unit_mac
            rows = []
            for u in self.dirty.values():
                rdp = orjson.dumps(u.spent).decode()
                rows.append(
                    (
                        u.scope,
                        u.key,
                        u.window_id,
                        rdp,
                        u.basic,
                        u.n,
                        mac(u.scope, u.key, u.window_id, rdp, u.basic, u.n),
                    )
                )
            self._insert(
                "fdp_units (scope, unit_key, window_id, rdp, basic_eps, n_queries, mac)",
                "(?, ?, ?, ?, ?, ?, ?)",
                rows,
                " ON CONFLICT (scope, unit_key, window_id) DO UPDATE SET "
                "rdp = excluded.rdp, basic_eps = excluded.basic_eps, n_queries = excluded.n_queries, "
                "mac = excluded.mac",
            )
            for u in self.dirty.values():
                u.exists = True

    def _insert(self, into: str, marks: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> None:
        """Multi-row INSERT: one statement (one SQLite step, one GIL hand-off) per chunk,
        where executemany takes one per row."""
        per_row = marks.count("?")
        for chunk in _chunks(rows, max(1, MAX_SQL_PARAMS // per_row)):
            self.cur.execute(
                self._driver.sql(_insert_sql(into, marks, len(chunk), tail)), list(chain.from_iterable(chunk))
            )


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    if 0 < len(items) <= size:  # the common case: one chunk, no copy
        return [items]
    return [items[i : i + size] for i in range(0, len(items), size)]


# The statement texts of multi-row writes, by row count (built once, not per batch).
@lru_cache(maxsize=2048)
def _insert_sql(into: str, marks: str, rows: int, tail: str) -> str:
    values = ", ".join(marks for _ in range(rows))
    return f"INSERT INTO {into} VALUES {values}{tail}"  # noqa: S608


@lru_cache(maxsize=1024)
def _settle_sql(ids: int) -> str:
    return (
        "UPDATE fdp_reservations SET state=?, settled_at=? WHERE state='reserved' AND id IN "  # noqa: S608
        f"({', '.join('?' for _ in range(ids))}) RETURNING id, window_id, units, event, "
        "epsilon, delta, created_at, mac"
    )


@lru_cache(maxsize=4096)
def event_cost(event_json: str) -> tuple[float, ...]:
    """The RDP cost curve of a stored event (what its reservation added to each unit)."""
    return flt.rdp_curve(ev.from_dict(json.loads(event_json)))


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
