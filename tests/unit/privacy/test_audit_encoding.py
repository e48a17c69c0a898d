"""The audit record's hashed and authenticated bytes must not depend on which encoder made
them: a record written by one version must verify under the next. The fast flat encoder is
checked byte for byte against the reference (json.dumps, sorted, compact, ASCII)."""

from __future__ import annotations

import json
import random
import secrets
import string

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
