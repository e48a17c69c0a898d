"""The privacy core's public interface: what the router (and tests) may rely on.

Pure value objects and the abstract ledger live here so that the router's request path and
the ledger backends can be built independently. Implementations live next to this file
(``events.py``, ``accounting.py``, ``filter.py``, ``mechanisms.py``, ``ledger/*.py``).
Nothing here does I/O.
"""

from __future__ import annotations

import abc
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple


class Scope(StrEnum):
    """A privacy unit kind. A request must fit the budget of all three."""

    USER = "user"
    DEPARTMENT = "department"
    HOSPITAL = "hospital"


class PrivacyError(Exception):
    """Base class of the privacy core's errors."""


class InvalidPrivacyRequest(PrivacyError, ValueError):
    """Bad input (epsilon, delta, mechanism...): names the field and why. Nothing is recorded."""

    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


class BudgetExceeded(PrivacyError):
    """The request does not fit one unit's budget. Nothing is recorded."""

    def __init__(self, scope: Scope, key: str, requested: float, available: float) -> None:
        super().__init__(
            f"privacy budget exceeded for {scope.value} {key!r}: requested epsilon {requested:.6g}, "
            f"available {available:.6g}"
        )
        self.scope = scope
        self.key = key
        self.requested = requested
        self.available = available


class UnknownReservation(PrivacyError, KeyError):
    """commit/release of an id the ledger never issued (or already settled)."""


class LedgerIntegrityError(PrivacyError):
    """The ledger's database fails a check that only a holder of the audit key can pass (a row
    MAC, the head, the identity row), or it is behind the last exported checkpoint (a restored
    backup, a truncated database), or its schema predates these checks. Raised when a ledger
    is opened: the router refuses to start; the message says what to do."""


class LedgerUnavailable(PrivacyError):
    """The ledger cannot be used now: its database is down, frozen, unreachable, full,
    read-only, busy beyond ``ledger.timeouts`` or failing over. Transient: retry later.

    Raised instead of waiting longer than the configured bounds. A reservation that raised it
    gave no caller a Reservation, so no node may be called for it; when the failure hit the
    transaction's commit its outcome is unknown and the spend may be recorded (the safe side).
    `kind` is one of `KINDS` (a metric label: bounded); two are not faults of the database:
    ``integrity`` (its head row fails its MAC: it was changed without the key) and
    ``key_exhausted`` (the active audit key sealed its AES-GCM limit of records: rotate it)."""

    KINDS = ("timeout", "connection", "busy", "disk_full", "read_only", "io", "integrity", "key_exhausted")

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"ledger unavailable ({kind}): {detail}")
        self.kind = kind if kind in self.KINDS else "io"
        self.detail = detail


class Charge(NamedTuple):
    """What one request asks to spend. `event` is a privacy event from ``events.py``
    (a frozen value object like dp_accounting's DpEvent) describing the release. Immutable;
    a NamedTuple, as `Reservation`: one of each per request, and a tuple builds about twice as
    fast as a frozen dataclass."""

    user_id: str
    department: str
    hospitals: tuple[str, ...]
    event: object
    query_hash: str = ""  # keyed hash (audit.query_hash); never the prompt text
    request_id: str = ""


class Reservation(NamedTuple):
    id: str
    charge: Charge
    epsilon: float  # the event's epsilon at the policy delta, as reported to clients
    delta: float
    created_at: datetime
    # The user's remaining epsilon right after this spend was recorded, computed in the same
    # transaction as the check (what budget(USER, user).remaining_epsilon would have said at
    # that moment), so the request path needs no separate budget read. None when the ledger
    # does not report it.
    user_remaining_epsilon: float | None = None


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    """One unit's budget in the current window (the seed's budget document)."""

    scope: Scope
    key: str
    total_epsilon: float
    consumed_epsilon: float
    remaining_epsilon: float
    delta: float
    window_start: datetime | None  # None for a lifetime budget
    window_end: datetime | None
    guarantee: str = ""  # e.g. "(10, 1e-05)-DP per user per 24h window"
    extra: dict[str, float] = field(default_factory=dict)


class Ledger(abc.ABC):
    """Reserve -> commit / release, atomically, across threads, processes and replicas.

    reserve() checks every unit's budget and records the spend in ONE atomic step (one
    transaction), durable before it returns. commit() marks it released to a client;
    release() refunds it only when nothing reached a client. A crash between reserve and
    commit leaves the reservation spent (the safe side). Every operation is bounded in time:
    when the ledger's storage cannot be used it raises LedgerUnavailable, never hangs.
    """

    @abc.abstractmethod
    async def reserve(self, charge: Charge, nodes: tuple[str, ...] = ()) -> Reservation:
        """Raises BudgetExceeded or InvalidPrivacyRequest and records nothing in that case.
        `nodes`: the node(s) about to be asked, kept in the reservation's audit record, so the
        trail names them even if the commit record is lost (deferred commit mode, a crash)."""

    @abc.abstractmethod
    async def commit(self, reservation_id: str, nodes: tuple[str, ...] = ()) -> None:
        """Durable before it returns, unless the ledger was opened with a deferred commit
        mode: then it is queued and a failure is only logged (the reservation stays spent)."""

    @abc.abstractmethod
    async def release(self, reservation_id: str) -> None: ...

    @abc.abstractmethod
    async def budget(self, scope: Scope, key: str) -> BudgetStatus: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    def query_hash(self, text: str) -> str:
        """The keyed hash of a query's text that audit records carry (never the text). The SQL
        ledgers key it from the audit key, so auditors holding the key can match queries;
        this default (ledgers without an audit key: test fakes) uses a key of its own."""
        key = self.__dict__.get("_fdp_query_hash_key")
        if key is None:
            key = self.__dict__["_fdp_query_hash_key"] = secrets.token_bytes(32)
        return hmac.digest(key, text.encode("utf-8"), "sha256").hex()

    async def check(self) -> None:
        """Return if the ledger can record a spend now, raise LedgerUnavailable if not (a
        cheap durable write; readiness checks call it about once a second). Default: no check."""
        return None
