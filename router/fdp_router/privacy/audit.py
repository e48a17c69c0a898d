"""The audit trail: append-only, hash-chained, encrypted records of every reserve/commit/release.

Each record keeps in clear only what an auditor needs to sum budgets (sequence number, time,
kind, reservation id, epsilon, delta, key id) and seals the rest (user, department,
hospitals, nodes, the keyed query hash, request id) with AES-256-GCM. The GCM associated
data binds the ciphertext to the clear fields and to the previous record's hash, and each
record's hash is SHA-256 over the previous hash and all of its stored fields: editing,
reordering or deleting a record breaks the chain at that record, and forging one needs the
key. Truncating the tail is caught against the head row (itself under a keyed MAC) and, when
whoever can write the database is not trusted, against a signed checkpoint kept outside it
(`Checkpoint`; ``fdp-router ledger checkpoint`` / ``ledger verify --expect-head``).

AES-GCM with random 96-bit nonces is safe for at most 2^32 encryptions under one key (NIST
SP 800-38D, 8.3): the ledger counts the records each key sealed and refuses to seal more than
`NONCE_LIMIT` under one key (rotate: append a key to the ring), warning from `NONCE_WARN` on.

Keys derived from the ring (`derive`: HMAC-SHA256 of a label, never a key used as is for two
purposes) key the query hash, the ledger's row MACs and pseudonyms (ledger/integrity.py) and
the checkpoints.

Keys: a keyring of 32-byte keys, each with an id stored per record, so keys can be rotated
(new records use the active key; old ones stay readable while their key is in the ring).
Keyring text (file or environment variable): lines ``<key-id> <64 hex chars>``; the *last*
line is the active key. A bare 64-hex-char key (id ``k0``) is accepted too.

Called by the ledger backends (sealing, inside their transaction), by ``ledger verify`` and by
the router (``query_hash``). The prompt text is never stored: only its keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from json.encoder import encode_basestring_ascii as _json_str  # the stdlib's C string encoder
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fdp_router.config import LedgerConfig
from fdp_router.privacy.api import InvalidPrivacyRequest

log = logging.getLogger(__name__)

GENESIS = "0" * 64
CLEAR_FIELDS = ("seq", "ts", "kind", "reservation_id", "epsilon", "delta", "key_id")
NONCE_LIMIT = 1 << 32  # records one key may seal (random 96-bit GCM nonces)
NONCE_WARN = 1 << 31  # from here on, every NONCE_WARN_STEP records sealed: a warning
NONCE_WARN_STEP = 1 << 24
CHECKPOINT_VERSION = 1


def derive(key: bytes, label: str) -> bytes:
    """A 32-byte key for one purpose (`label`) derived from a ring key."""
    return hmac.digest(key, b"fdp-derive " + label.encode("ascii"), "sha256")


def mac_hex(key: bytes, data: bytes) -> str:
    """HMAC-SHA256 truncated to 128 bits, as hex (what the ledger stores per row)."""
    return hmac.digest(key, data, "sha256")[:16].hex()


def query_hash(key: bytes, text: str) -> str:
    """Keyed HMAC-SHA256 of the query text: lets auditors match queries without storing them."""
    return hmac.digest(key, text.encode("utf-8"), "sha256").hex()


@dataclass(frozen=True)
class Keyring:
    keys: Mapping[str, bytes]
    active_id: str

    @property
    def active_key(self) -> bytes:
        return self.keys[self.active_id]

    @cached_property
    def query_hash_key(self) -> bytes:
        """A key for query_hash derived from the active key (never the encryption key itself)."""
        return hmac.new(self.active_key, b"fdp query hash v1", hashlib.sha256).digest()


def parse_keyring(text: str, source: str) -> Keyring:
    keys: dict[str, bytes] = {}
    active = ""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise InvalidPrivacyRequest(source, "audit keyring is empty")
    for ln in lines:
        parts = ln.split()
        key_id, hex_key = ("k0", parts[0]) if len(parts) == 1 else (parts[0], parts[1])
        try:
            raw = bytes.fromhex(hex_key)
        except ValueError:
            raise InvalidPrivacyRequest(source, f"key {key_id!r} is not hex") from None
        if len(raw) != 32:
            raise InvalidPrivacyRequest(
                source, f"key {key_id!r} must be 32 bytes (64 hex chars), got {len(raw)}"
            )
        keys[key_id] = raw
        active = key_id
    return Keyring(keys=keys, active_id=active)


def load_keyring(ledger_cfg: LedgerConfig, *, dev_key_path: Path | None = None) -> Keyring:
    """Key from ledger.audit_key_file, else the env var ledger.audit_key_env, else (SQLite only)
    a development key generated next to the database, with a loud warning."""
    if ledger_cfg.audit_key_file:
        path = Path(ledger_cfg.audit_key_file)
        if not path.is_file():
            raise InvalidPrivacyRequest("ledger.audit_key_file", f"{path} does not exist")
        data = path.read_bytes()
        if len(data) == 32 and not all(chr(b) in "0123456789abcdefABCDEF \n\r\t" for b in data):
            return Keyring(keys={"k0": data}, active_id="k0")
        return parse_keyring(data.decode("utf-8"), "ledger.audit_key_file")
    if ledger_cfg.audit_key_env and os.environ.get(ledger_cfg.audit_key_env):
        return parse_keyring(os.environ[ledger_cfg.audit_key_env], f"${ledger_cfg.audit_key_env}")
    if dev_key_path is None:
        raise InvalidPrivacyRequest(
            "ledger.audit_key_file",
            "no audit key: set ledger.audit_key_file or the audit key environment variable",
        )
    if not dev_key_path.exists():
        fd = os.open(dev_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"dev {secrets.token_hex(32)}\n")
    log.warning(
        "!!! AUDIT KEY: using a DEVELOPMENT key generated in %s. Configure ledger.audit_key_file "
        "(or $%s) with a managed secret in production. !!!",
        dev_key_path,
        ledger_cfg.audit_key_env,
    )
    return parse_keyring(dev_key_path.read_text(encoding="utf-8"), str(dev_key_path))


@lru_cache(maxsize=16)
def _aead(key: bytes) -> AESGCM:
    """One cipher object per key (its key schedule is computed once, not per record)."""
    return AESGCM(key)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _canonical_flat(fields: Mapping[str, Any]) -> bytes:
    """Byte for byte `_canonical` of a flat dict of str, int and finite float values (what
    the hash and the associated data cover), about 5x faster: the standard encoder builds
    a new encoder object per call. Anything else takes the general path."""
    parts = []
    for key in sorted(fields):
        v = fields[key]
        t = type(v)
        if t is str:
            text = _json_str(v)
        elif t is int:
            text = int.__repr__(v)
        elif t is float and math.isfinite(v):
            text = float.__repr__(v)
        else:
            return _canonical(dict(fields))
        parts.append(f"{_json_str(key)}:{text}")
    return ("{" + ",".join(parts) + "}").encode("ascii")


def _plaintext(sensitive: Mapping[str, Any]) -> bytes:
    """The sealed fields as JSON. Only ever decrypted and parsed (never hashed as text), so
    any JSON encoding will do: orjson, sorted for stable output."""
    return orjson.dumps(
        sensitive if type(sensitive) is dict else dict(sensitive), option=orjson.OPT_SORT_KEYS
    )


def _clear(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: rec[k] for k in CLEAR_FIELDS}


def record_hash(rec: Mapping[str, Any]) -> str:
    body = {**_clear(rec), "nonce": rec["nonce"], "ciphertext": rec["ciphertext"]}
    return hashlib.sha256(rec["prev_hash"].encode("ascii") + _canonical_flat(body)).hexdigest()


def seal(
    keyring: Keyring,
    *,
    seq: int,
    prev_hash: str,
    ts: str,
    kind: str,
    reservation_id: str,
    epsilon: float,
    delta: float,
    sensitive: Mapping[str, Any],
) -> dict[str, Any]:
    """A complete audit record (a dict of stored columns) chained after `prev_hash`."""
    return dict(
        zip(
            STORED_COLUMNS,
            seal_row(
                keyring,
                seq=seq,
                prev_hash=prev_hash,
                ts=ts,
                kind=kind,
                reservation_id=reservation_id,
                epsilon=epsilon,
                delta=delta,
                sensitive=sensitive,
            ),
            strict=True,
        )
    )


# The stored columns of a record, in the order `seal_row` returns them (the ledger's table).
STORED_COLUMNS = (*CLEAR_FIELDS, "nonce", "ciphertext", "prev_hash", "hash")


def seal_row(
    keyring: Keyring,
    *,
    seq: int,
    prev_hash: str,
    ts: str,
    kind: str,
    reservation_id: str,
    epsilon: float,
    delta: float,
    sensitive: Mapping[str, Any],
) -> tuple[Any, ...]:
    """`seal` as a tuple in ``STORED_COLUMNS`` order (what the ledger inserts). The
    associated data and the hashed body are the bytes `_canonical_flat` makes of the same
    fields (so `unseal` and `record_hash` check them), written out directly: each value is
    encoded once for both, with the keys in their sorted order, and the hex nonce and
    ciphertext need no escaping. Values outside the flat types take the general path."""
    epsilon, delta = float(epsilon), float(delta)
    key_id = keyring.active_id
    flat = type(seq) is int and math.isfinite(epsilon) and math.isfinite(delta)
    texts = type(ts) is str and type(kind) is str and type(reservation_id) is str
    if not (flat and texts and type(prev_hash) is str and type(key_id) is str):
        return _seal_row_general(keyring, seq, prev_hash, ts, kind, reservation_id, epsilon, delta, sensitive)
    nonce = secrets.token_bytes(12)
    d, e = float.__repr__(delta), float.__repr__(epsilon)
    kid, knd, rid = _json_str(key_id), _json_str(kind), _json_str(reservation_id)
    tail = f',"reservation_id":{rid},"seq":{int.__repr__(seq)},"ts":{_json_str(ts)}}}'
    aad = f'{{"delta":{d},"epsilon":{e},"key_id":{kid},"kind":{knd},"prev_hash":{_json_str(prev_hash)}{tail}'
    ct = _aead(keyring.active_key).encrypt(nonce, _plaintext(sensitive), aad.encode("ascii")).hex()
    nonce_hex = nonce.hex()
    body = (
        f'{prev_hash}{{"ciphertext":"{ct}","delta":{d},"epsilon":{e},"key_id":{kid},"kind":{knd},'
        f'"nonce":"{nonce_hex}"{tail}'
    )
    digest = hashlib.sha256(body.encode("ascii")).hexdigest()
    return (seq, ts, kind, reservation_id, epsilon, delta, key_id, nonce_hex, ct, prev_hash, digest)


def _seal_row_general(
    keyring: Keyring,
    seq: int,
    prev_hash: str,
    ts: str,
    kind: str,
    reservation_id: str,
    epsilon: float,
    delta: float,
    sensitive: Mapping[str, Any],
) -> tuple[Any, ...]:
    """`seal_row` for values the direct encoding does not cover (the encoders decide)."""
    rec: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "reservation_id": reservation_id,
        "epsilon": epsilon,
        "delta": delta,
        "key_id": keyring.active_id,
        "prev_hash": prev_hash,
    }
    nonce = secrets.token_bytes(12)
    aad = _canonical_flat(rec)  # the clear fields and prev_hash
    ct = _aead(keyring.active_key).encrypt(nonce, _plaintext(sensitive), aad)
    rec["nonce"] = nonce.hex()
    rec["ciphertext"] = ct.hex()
    rec["hash"] = record_hash(rec)
    return tuple(rec[c] for c in STORED_COLUMNS)


def unseal(keyring: Keyring, rec: Mapping[str, Any]) -> dict[str, Any]:
    """Decrypt the sensitive fields; raises ValueError if the record was altered or the key is unknown."""
    key = keyring.keys.get(rec["key_id"])
    if key is None:
        raise ValueError(f"unknown key id {rec['key_id']!r}")
    aad = _canonical_flat({**_clear(rec), "prev_hash": rec["prev_hash"]})
    try:
        plain = _aead(key).decrypt(bytes.fromhex(rec["nonce"]), bytes.fromhex(rec["ciphertext"]), aad)
    except (InvalidTag, ValueError):
        raise ValueError("authentication failed (record or ciphertext altered)") from None
    data: dict[str, Any] = json.loads(plain)
    return data


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""
    head_seq: int | None = None  # the chain's last record (None: not known)
    start_seq: int = 0  # the chain was checked from the record after this one
    notes: tuple[str, ...] = ()  # what was and was not checked


class ChainCheck:
    """Streaming check of sequence, chaining, hashes and (with a keyring) each record's tag:
    feed records in sequence order, read `failure` after each. Starts after (seq, hash)
    `start` (the genesis, an archived prefix's end, a checkpoint)."""

    def __init__(self, keyring: Keyring | None, start: tuple[int, str] = (0, GENESIS)) -> None:
        self.keyring = keyring
        self.start_seq = start[0]
        self.prev_hash = start[1]
        self.expected_seq = start[0] + 1
        self.checked = 0
        self.failure: VerifyResult | None = None

    @property
    def last(self) -> tuple[int, str]:
        return self.expected_seq - 1, self.prev_hash

    def feed(self, rec: Mapping[str, Any]) -> dict[str, Any] | None:
        """Check one record; returns its unsealed fields (with a keyring), else None. After a
        failure (`self.failure` set) nothing more is checked."""
        if self.failure is not None:
            return None
        seq = int(rec["seq"])
        if seq != self.expected_seq:
            self._fail(self.expected_seq, f"record {self.expected_seq} missing (found {seq} next)")
        elif rec["prev_hash"] != self.prev_hash:
            self._fail(seq, "prev_hash does not match the previous record's hash")
        elif record_hash(rec) != rec["hash"]:
            self._fail(seq, "hash mismatch (record edited)")
        if self.failure is not None:
            return None
        data = None
        if self.keyring is not None:
            try:
                data = unseal(self.keyring, rec)
            except ValueError as exc:
                self._fail(seq, str(exc))
                return None
        self.prev_hash, self.expected_seq, self.checked = rec["hash"], seq + 1, self.checked + 1
        return data

    def _fail(self, seq: int, reason: str) -> None:
        self.failure = VerifyResult(False, self.checked, seq, reason, start_seq=self.start_seq)

    def finish(self, head: tuple[int, str] | None = None) -> VerifyResult:
        """The result, checking that the chain ends where `head` (seq, hash) says."""
        if self.failure is not None:
            return self.failure
        end_seq, end_hash = self.last
        if head is not None:
            head_seq, head_hash = head
            if head_seq != end_seq or head_hash != end_hash:
                return VerifyResult(
                    False,
                    self.checked,
                    self.expected_seq,
                    f"chain ends at {end_seq} but the head says {head_seq}"
                    + ("" if head_seq != end_seq else " (with another hash)"),
                    start_seq=self.start_seq,
                )
        return VerifyResult(True, self.checked, head_seq=end_seq, start_seq=self.start_seq)


def verify_chain(
    records: Iterable[Mapping[str, Any]],
    keyring: Keyring | None,
    head: tuple[int, str] | None = None,
    *,
    start: tuple[int, str] = (0, GENESIS),
) -> VerifyResult:
    """Check sequence, chaining, hashes and (with a keyring) each record's authentication tag."""
    check = ChainCheck(keyring, start)
    for rec in records:
        check.feed(rec)
        if check.failure is not None:
            break
    return check.finish(head)


# --- checkpoints ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement "ledger `ledger_id` had `seq` records ending in hash `head` at
    `time`", MACed with a key derived from ring key `key_id`. Kept outside the database (a
    Secret, an object store, the FederatedRouter status): a ledger shorter than it or
    different from it was truncated, rolled back or rewritten."""

    ledger_id: str
    seq: int
    head: str
    time: str
    key_id: str
    mac: str

    def body(self) -> dict[str, Any]:
        return {
            "v": CHECKPOINT_VERSION,
            "ledger_id": self.ledger_id,
            "seq": self.seq,
            "head": self.head,
            "time": self.time,
            "key_id": self.key_id,
        }

    def to_json(self) -> str:
        return json.dumps({**self.body(), "mac": self.mac}, sort_keys=True)


def _checkpoint_mac(key: bytes, body: Mapping[str, Any]) -> str:
    return hmac.digest(derive(key, "checkpoint v1"), _canonical(dict(body)), "sha256").hex()


def sign_checkpoint(
    keyring: Keyring, key_id: str, *, ledger_id: str, seq: int, head: str, time: str
) -> Checkpoint:
    unsigned = Checkpoint(ledger_id, int(seq), head, time, key_id, "")
    return Checkpoint(
        ledger_id, int(seq), head, time, key_id, _checkpoint_mac(keyring.keys[key_id], unsigned.body())
    )


def parse_checkpoint(text: str, source: str) -> Checkpoint:
    """A checkpoint from its JSON text; InvalidPrivacyRequest naming `source` if malformed."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("v") != CHECKPOINT_VERSION:
            raise ValueError(f"not a version {CHECKPOINT_VERSION} ledger checkpoint")
        cp = Checkpoint(
            ledger_id=str(data["ledger_id"]),
            seq=int(data["seq"]),
            head=str(data["head"]),
            time=str(data["time"]),
            key_id=str(data["key_id"]),
            mac=str(data["mac"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidPrivacyRequest(source, f"not a ledger checkpoint ({exc})") from None
    if cp.seq < 0 or len(cp.head) != 64:
        raise InvalidPrivacyRequest(source, "not a ledger checkpoint (seq or head out of range)")
    return cp


def check_checkpoint(keyring: Keyring, cp: Checkpoint) -> None:
    """Raise ValueError unless `cp` was signed with a key of this ring."""
    key = keyring.keys.get(cp.key_id)
    if key is None:
        raise ValueError(
            f"the checkpoint is signed with key {cp.key_id!r}, which is not in the audit keyring"
        )
    if not hmac.compare_digest(_checkpoint_mac(key, cp.body()), cp.mac):
        raise ValueError("the checkpoint's MAC is wrong (edited, or signed with another key)")
