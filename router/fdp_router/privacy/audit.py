"""The audit trail: append-only, hash-chained, encrypted records of every reserve/commit/release.

Each record keeps in clear only what an auditor needs to sum budgets (sequence number, time,
kind, reservation id, epsilon, delta, key id) and seals the rest (user, department,
hospitals, nodes, the keyed query hash, request id) with AES-256-GCM. The GCM associated
data binds the ciphertext to the clear fields and to the previous record's hash, and each
record's hash is SHA-256 over the previous hash and all of its stored fields: editing,
reordering or deleting a record breaks the chain at that record, and forging one needs the
key. (Truncating the tail is caught against the stored head row; keep an external copy of
the head hash if the database administrator is not trusted.)

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
    return orjson.dumps(dict(sensitive), option=orjson.OPT_SORT_KEYS)


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
    rec: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "reservation_id": reservation_id,
        "epsilon": float(epsilon),
        "delta": float(delta),
        "key_id": keyring.active_id,
        "prev_hash": prev_hash,
    }
    nonce = secrets.token_bytes(12)
    aad = _canonical_flat(rec)  # the clear fields and prev_hash
    ct = _aead(keyring.active_key).encrypt(nonce, _plaintext(sensitive), aad)
    rec["nonce"] = nonce.hex()
    rec["ciphertext"] = ct.hex()
    rec["hash"] = record_hash(rec)
    return rec


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


def verify_chain(
    records: Iterable[Mapping[str, Any]], keyring: Keyring | None, head: tuple[int, str] | None = None
) -> VerifyResult:
    """Check sequence, chaining, hashes and (with a keyring) each record's authentication tag."""
    prev_hash, expected_seq, n = GENESIS, 1, 0
    for rec in records:
        seq = int(rec["seq"])
        if seq != expected_seq:
            return VerifyResult(False, n, expected_seq, f"record {expected_seq} missing (found {seq} next)")
        if rec["prev_hash"] != prev_hash:
            return VerifyResult(False, n, seq, "prev_hash does not match the previous record's hash")
        if record_hash(rec) != rec["hash"]:
            return VerifyResult(False, n, seq, "hash mismatch (record edited)")
        if keyring is not None:
            try:
                unseal(keyring, rec)
            except ValueError as exc:
                return VerifyResult(False, n, seq, str(exc))
        prev_hash, expected_seq, n = rec["hash"], seq + 1, n + 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq != expected_seq - 1 or (head_seq > 0 and head_hash != prev_hash):
            return VerifyResult(
                False, n, expected_seq, f"chain ends at {expected_seq - 1} but the head says {head_seq}"
            )
    return VerifyResult(True, n)
