"""What keeps a database writer without the audit key from winning budget back or cutting the
trail undetected (issue 11 item 4): keyed pseudonyms instead of clear identifiers, and keyed
MACs on every row the ledger trusts.

- **Pseudonyms.** User and department keys are stored as ``p:`` + a keyed BLAKE2b (128 bits)
  of the scope and the clear key, under a key derived from the ledger's *integrity key* and
  bound to the ledger's id. Hospital keys stay clear (they name configured hospitals, not people). The
  clear values live only inside the sealed audit records.
- **Row MACs.** Unit rows (the budget), reservation rows (what a release refunds), carried
  sums (what archived records added), the head row (the chain's end, the archived prefix's
  end, the key usage) and the meta rows carry a MAC (keyed BLAKE2b, 128 bits: a PRF like
  HMAC-SHA256, at half its cost on the request path) under a key derived the same way. The
  ledger checks them whenever it reads a row, and ``ledger verify`` checks all of them.
  A MAC does not stop a row being put back to an *older* copy of itself: ``ledger verify``
  replays the trail against every unit row, and checkpoints catch a rolled-back head.
- **The integrity key** is the ring key that was active when the ledger was created, named
  by the ``fdp_meta`` row ``ledger`` (itself MACed with it). It must stay in the keyring as
  long as the ledger lives (rotation appends keys, so it does); rotating the *sealing* key for
  the AES-GCM nonce limit does not change it, so pseudonyms and budgets stay where they are.

Used by core.py (writes and checks), verify.py and maintenance.py.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, replace
from functools import lru_cache
from hashlib import blake2b
from typing import Any

import orjson

from fdp_router.privacy.api import LedgerIntegrityError
from fdp_router.privacy.audit import Keyring, derive, mac_hex

SCHEMA_VERSION = 2
PSEUDONYMIZED = ("user", "department")


@dataclass(frozen=True, slots=True)
class Head:
    """The single ``fdp_head`` row."""

    seq: int
    hash: str
    key_id: str  # the key that sealed the last records ...
    key_count: int  # ... and how many records it has sealed in all
    base_seq: int  # records up to here were archived and pruned ...
    base_hash: str  # ... the last of them had this hash
    base_window: int  # unit rows of windows before this one were pruned
    mac: str

    def fields(self) -> tuple[Any, ...]:
        return (
            self.seq,
            self.hash,
            self.key_id,
            self.key_count,
            self.base_seq,
            self.base_hash,
            self.base_window,
        )


HEAD_COLUMNS = ("seq", "hash", "key_id", "key_count", "base_seq", "base_hash", "base_window", "mac")


class Integrity:
    """Pseudonyms and row MACs of one ledger (`ledger_id`), keyed from ring key `key_id`."""

    def __init__(self, keyring: Keyring, ledger_id: str, key_id: str) -> None:
        key = keyring.keys.get(key_id)
        if key is None:
            raise LedgerIntegrityError(
                f"this ledger's integrity key {key_id!r} (the key active when it was created) is not in "
                "the audit keyring: keep it in the ring (rotation appends keys; the last line seals)"
            )
        self.ledger_id = ledger_id
        self.key_id = key_id
        self._meta_key = derive(key, "meta v2")
        self._row_key = derive(key, f"rows v2 {ledger_id}")
        self._pseudonym_key = derive(key, f"pseudonyms v2 {ledger_id}")
        self.stored_key = lru_cache(maxsize=65536)(self._stored_key)

    def _stored_key(self, scope: str, key: str) -> str:
        """What the database stores for unit (scope, key): a pseudonym for users and departments."""
        if scope not in PSEUDONYMIZED:
            return key
        return "p:" + blake2b(f"{scope}\0{key}".encode(), key=self._pseudonym_key, digest_size=16).hexdigest()

    def _mac(self, *fields: Any) -> str:
        return blake2b(orjson.dumps(fields), key=self._row_key, digest_size=16).hexdigest()

    def unit_mac(self, scope: str, key: str, window_id: int, rdp: str, basic: float, n: int) -> str:
        return self._mac("unit", scope, key, int(window_id), rdp, float(basic), int(n))

    def carry_mac(self, scope: str, key: str, window_id: int, rdp: str, basic: float, n: int) -> str:
        return self._mac("carry", scope, key, int(window_id), rdp, float(basic), int(n))

    def reservation_mac(
        self, rid: str, window_id: int, units: str, event: str, epsilon: float, delta: float, created_at: str
    ) -> str:
        """Over what a reservation row holds that a release uses or an auditor reads (a refund
        recomputes the cost from `event`; the ``rdp`` column is not trusted, and empty in
        rows written by schema 2). Its state is checked against the trail by ``ledger verify``."""
        return self._mac(
            "reservation", rid, int(window_id), units, event, float(epsilon), float(delta), created_at
        )

    def head_mac(self, head: Head) -> str:
        return self._mac("head", *head.fields())

    def head_ok(self, head: Head) -> bool:
        return hmac.compare_digest(self.head_mac(head), head.mac)

    def meta_mac(self, name: str, value: str) -> str:
        return self._mac("meta", name, value)

    def signed_head(self, head: Head) -> Head:
        return replace(head, mac=self.head_mac(head))


def ledger_row(keyring: Keyring, ledger_id: str, key_id: str) -> tuple[str, str]:
    """The ``fdp_meta`` row ``ledger`` (value, mac) naming this ledger and its integrity key."""
    value = json.dumps({"schema": SCHEMA_VERSION, "ledger_id": ledger_id, "key_id": key_id}, sort_keys=True)
    return value, mac_hex(derive(keyring.keys[key_id], "meta v2"), orjson.dumps(("ledger", value)))


def read_ledger_row(keyring: Keyring, value: str, mac: str) -> Integrity:
    """Check the ``ledger`` meta row and return the ledger's Integrity."""
    try:
        data = json.loads(value)
        ledger_id, key_id, schema = str(data["ledger_id"]), str(data["key_id"]), int(data["schema"])
    except (ValueError, KeyError, TypeError):
        raise LedgerIntegrityError("the ledger's identity row (fdp_meta 'ledger') is unreadable") from None
    if schema != SCHEMA_VERSION:
        raise LedgerIntegrityError(
            f"ledger schema {schema} is not supported by this router ({SCHEMA_VERSION})"
        )
    integrity = Integrity(keyring, ledger_id, key_id)
    if not hmac.compare_digest(ledger_row(keyring, ledger_id, key_id)[1], mac):
        raise LedgerIntegrityError(
            "the ledger's identity row (fdp_meta 'ledger') fails its MAC: the database was changed "
            "without the audit key (run `fdp-router ledger verify`)"
        )
    return integrity
