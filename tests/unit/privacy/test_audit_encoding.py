"""The audit record's hashed and authenticated bytes must not depend on which encoder made
them: a record written by one version must verify under the next. The fast flat encoder is
checked byte for byte against the reference (json.dumps, sorted, compact, ASCII)."""

from __future__ import annotations

import hashlib
import json
import random
import secrets
import string

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fdp_router.privacy import audit

ALPHABET = string.printable + 'éü中\u2028\x00\x1f"\\/'


def _value(rng: random.Random) -> object:
    kind = rng.randrange(6)
    if kind == 0:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 20)))
    if kind == 1:
        return rng.randrange(-(10**20), 10**20)
    if kind == 2:
        return rng.choice([1e-05, 0.1, 1e300, -2.5e-308, 5e-324, 0.0, -0.0, 123456789.125])
    if kind == 3:
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randrange(-12, 12)
    if kind == 4:
        return rng.choice([True, False, None, float("inf"), float("nan")])  # the general path
    return ["nested", 1]  # the general path


def test_flat_encoder_matches_the_reference_byte_for_byte() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        fields = {
            "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 8))): _value(rng)
            for _ in range(rng.randrange(0, 10))
        }
        reference = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
        assert audit._canonical_flat(fields) == reference, fields


def test_a_record_sealed_now_verifies_and_unseals_with_non_ascii_fields() -> None:
    keyring = audit.parse_keyring(f"k1 {secrets.token_hex(32)}", "test")
    sensitive = {"user_id": "zoë", "department": "心臓科", "nodes": ["n1"], "query_hash": "ab"}
    rec = audit.seal(
        keyring,
        seq=1,
        prev_hash=audit.GENESIS,
        ts="2026-11-27T21:00:00+00:00",
        kind="reserve",
        reservation_id="r1",
        epsilon=0.25,
        delta=1e-5,
        sensitive=sensitive,
    )
    assert audit.verify_chain([rec], keyring).ok
    assert audit.unseal(keyring, rec) == sensitive
    tampered = {**rec, "epsilon": 0.125}
    assert not audit.verify_chain([tampered], keyring).ok


def _reference_record(keyring: audit.Keyring, rec: dict[str, object]) -> tuple[bytes, str]:
    """The associated data and hash of a stored record, from the reference encoder."""
    clear = {k: rec[k] for k in audit.CLEAR_FIELDS}
    aad = audit._canonical({**clear, "prev_hash": rec["prev_hash"]})
    body = audit._canonical({**clear, "nonce": rec["nonce"], "ciphertext": rec["ciphertext"]})
    return aad, hashlib.sha256(str(rec["prev_hash"]).encode("ascii") + body).hexdigest()


def test_seal_row_writes_the_reference_bytes_for_any_field_values() -> None:
    """seal_row writes the associated data and the hashed body out directly: byte for byte
    the reference encoding, for odd key ids, kinds, ids and times (escapes, non-ASCII),
    extreme floats, and values that take the general path."""
    rng = random.Random(11)
    for i in range(600):
        key_id = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(1, 6)))
        keyring = audit.Keyring(keys={key_id: secrets.token_bytes(32)}, active_id=key_id)
        text = ["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 12))) for _ in range(3)]
        eps = rng.choice([0.25, 1e-300, 5e-324, 1e300, -0.0, 0.1 + 0.2, rng.uniform(0, 10)])
        delta = rng.choice([1e-5, 1e-9, 0.0, 3.0])
        seq: object = rng.choice([1, 2**40, i]) if i % 50 else True  # a bool: the general path
        prev = secrets.token_hex(32) if i % 3 else audit.GENESIS
        row = audit.seal_row(
            keyring,
            seq=seq,  # type: ignore[arg-type]
            prev_hash=prev,
            ts=text[0],
            kind=text[1],
            reservation_id=text[2],
            epsilon=eps,
            delta=delta,
            sensitive={"user_id": text[0], "i": i},
        )
        rec = dict(zip(audit.STORED_COLUMNS, row, strict=True))
        aad, digest = _reference_record(keyring, rec)
        assert rec["hash"] == digest, rec
        assert audit.record_hash(rec) == digest
        assert audit.unseal(keyring, rec) == {"user_id": text[0], "i": i}
        assert audit.verify_chain([rec], keyring, start=(int(seq) - 1, prev)).ok  # type: ignore[call-overload]
        assert AESGCM(keyring.active_key).decrypt(
            bytes.fromhex(str(rec["nonce"])), bytes.fromhex(str(rec["ciphertext"])), aad
        )


def test_seal_is_seal_row_as_a_dict() -> None:
    keyring = audit.parse_keyring(f"k1 {secrets.token_hex(32)}", "test")
    rec = audit.seal(
        keyring,
        seq=3,
        prev_hash=audit.GENESIS,
        ts="t",
        kind="commit",
        reservation_id="r",
        epsilon=1,
        delta=1e-5,
        sensitive={},
    )
    assert tuple(rec) == audit.STORED_COLUMNS
    assert isinstance(rec["epsilon"], float) and rec["epsilon"] == 1.0
