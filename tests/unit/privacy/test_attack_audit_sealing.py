"""Attack review of `audit.seal_row` (the hand-written canonical JSON): for any clear field
values the associated data and the hashed body must be exactly the reference encoder's bytes
(json.dumps, sorted, compact, ASCII), the reference must round-trip (so two different records
can never share an encoding and no value can spill into another field), and a sealed record
must verify and unseal. Text includes quotes, backslashes, control characters, non-ASCII,
U+2028 and lone surrogates; numbers include -0.0, subnormals, huge values, inf and NaN."""

from __future__ import annotations

import hashlib
import json
import math
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from fdp_router.privacy import audit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Every code point, lone surrogates (category Cs) included.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=24)
NASTY_TEXT = st.one_of(
    ANY_TEXT,
    st.sampled_from(
        ['"', "\\", '","seq":1,"ts":"', "\x00", "\x1f\x7f", "\u2028\u2029", "\ud800", "\udfff", "é中🙂"]
    ),
)
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([-0.0, 0.0, 5e-324, 1e308, 1.7976931348623157e308, 0.1 + 0.2, 1e16, 1e-7]),
    st.integers(min_value=-(2**53), max_value=2**53),  # ints: float() of them
)
SEQS = st.one_of(st.integers(min_value=0, max_value=2**63), st.booleans())
HEX64 = st.one_of(st.just(audit.GENESIS), st.binary(min_size=32, max_size=32).map(bytes.hex))


def _ref(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (NaN equals NaN, -0.0 differs from 0.0, bool differs from int)."""
    if type(a) is not type(b):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and not (isinstance(a, bool) or isinstance(b, bool))
            and float(a) == float(b)
        )
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    return bool(a == b)


def _check(key_id: str, seq: Any, prev: str, ts: str, kind: str, rid: str, eps: Any, delta: Any) -> None:
    keyring = audit.Keyring(keys={key_id: secrets.token_bytes(32)}, active_id=key_id)
    sensitive = {"user_id": ts, "department": kind, "hospitals": [rid], "request_id": key_id}
    try:
        row = audit.seal_row(
            keyring,
            seq=seq,
            prev_hash=prev,
            ts=ts,
            kind=kind,
            reservation_id=rid,
            epsilon=eps,
            delta=delta,
            sensitive=sensitive,
        )
    except (TypeError, ValueError) as exc:  # orjson refuses lone surrogates in the sealed part
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in ts + kind + rid + key_id), exc
        return
    rec = dict(zip(audit.STORED_COLUMNS, row, strict=True))
    clear = {k: rec[k] for k in audit.CLEAR_FIELDS}
    aad = _ref({**clear, "prev_hash": prev})
    body = _ref({**clear, "nonce": rec["nonce"], "ciphertext": rec["ciphertext"]})
    # the hash is the reference hash, and the reference associated data opens the ciphertext
    assert rec["hash"] == hashlib.sha256(prev.encode("ascii") + body).hexdigest()
    assert AESGCM(keyring.active_key).decrypt(
        bytes.fromhex(rec["nonce"]), bytes.fromhex(rec["ciphertext"]), aad
    )
    assert audit.record_hash(rec) == rec["hash"]
    assert audit.unseal(keyring, rec) == sensitive
    # no value breaks out of its field: the encoding parses back to exactly these fields
    back = json.loads(aad)
    assert sorted(back) == sorted({**clear, "prev_hash": prev})
    for k, v in {**clear, "prev_hash": prev}.items():
        assert _same(back[k], v), (k, back[k], v)
    assert audit.verify_chain([rec], keyring, start=(int(seq) - 1, prev)).ok


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key_id=NASTY_TEXT.filter(bool),
    seq=SEQS,
    prev=HEX64,
    ts=NASTY_TEXT,
    kind=NASTY_TEXT,
    rid=NASTY_TEXT,
    eps=FLOATS,
    delta=FLOATS,
)
def test_seal_row_is_the_reference_encoding_for_any_clear_values(
    key_id: str, seq: Any, prev: str, ts: str, kind: str, rid: str, eps: Any, delta: Any
) -> None:
    _check(key_id, seq, prev, ts, kind, rid, eps, delta)


@pytest.mark.parametrize(
    "ts",
    ['", "epsilon": 0.0, "x":"', "\\", '\\"', "\ud800", "\x00", "\u2028", "中", '"}{"'],
)
def test_quote_and_escape_injection_cannot_reach_another_field(ts: str) -> None:
    _check("k1", 7, audit.GENESIS, ts, "reserve", "r", 0.25, 1e-5)


def test_two_different_records_never_share_the_hashed_body() -> None:
    """Field boundary shifts (a value ending in a quote, the next starting with one) give
    different bytes: the encoding is injective on the clear fields."""
    keyring = audit.parse_keyring(f"k1 {secrets.token_hex(32)}", "test")
    seen: dict[bytes, tuple[str, str]] = {}
    for kind, rid in [
        ('a","reservation_id":"b', "c"),
        ("a", 'b","reservation_id":"c'),
        ('a"', '"b'),
        ("a", "b"),
    ]:
        row = audit.seal_row(
            keyring,
            seq=1,
            prev_hash=audit.GENESIS,
            ts="t",
            kind=kind,
            reservation_id=rid,
            epsilon=1.0,
            delta=0.0,
            sensitive={},
        )
        rec = dict(zip(audit.STORED_COLUMNS, row, strict=True))
        aad = _ref({**{k: rec[k] for k in audit.CLEAR_FIELDS}, "prev_hash": rec["prev_hash"]})
        assert aad not in seen, (seen[aad], (kind, rid))
        seen[aad] = (kind, rid)
