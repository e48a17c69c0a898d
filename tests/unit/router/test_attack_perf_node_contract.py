"""Attacks on the node contract's cheaper parsing (002e0d4) and its NamedTuple values. Each
test is a control that held.

- A node's privacy headers repeated (same or different values), differently cased, with
  whitespace, or with odd values (inf, NaN, negative, hex, underscores, bools, empty), alone
  or with a body report: the new parse_report gives exactly what the previous one gave, so a
  node cannot get a report accepted that was refused before.
- check_report compares the node's mechanism to the declared StrEnum member (no `.value`):
  a differently cased, padded or empty mechanism is still a MECHANISM violation, and a report
  over what the router sent is still refused.
- SentPrivacy.body()/headers() (str() of the enums instead of .value) send the same bytes.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from typing import Any

import pytest
from fdp_router.config import DataClass, NodeMechanism, NodePrivacy
from fdp_router.node_contract import (
    DELTA_HEADER,
    EPSILON_HEADER,
    MECHANISM_HEADER,
    PURPOSE_HEADER,
    Purpose,
    SentPrivacy,
    Violation,
    _number,
    check_report,
    parse_report,
)
from multidict import CIMultiDict


def old_parse_report(headers: Mapping[str, str], body: Any) -> tuple | None:
    """parse_report as at d747923, returning (epsilon, delta, mechanism, basis, consistent)."""
    from_headers = None
    if EPSILON_HEADER in headers:
        eps, delta = _number(headers.get(EPSILON_HEADER)), _number(headers.get(DELTA_HEADER, "0"))
        if eps is not None and delta is not None:
            getall = getattr(headers, "getall", None)
            single = getall is None or all(
                len(set(getall(h, ()))) <= 1 for h in (EPSILON_HEADER, DELTA_HEADER, MECHANISM_HEADER)
            )
            from_headers = (eps, delta, str(headers.get(MECHANISM_HEADER, "")), "", single)
    from_body = None
    if isinstance(body, dict) and "epsilon" in body:
        eps, delta = _number(body.get("epsilon")), _number(body.get("delta", 0))
        if eps is not None and delta is not None:
            basis = body.get("basis")
            from_body = (
                eps,
                delta,
                str(body.get("mechanism", "")),
                basis if isinstance(basis, str) else "",
                True,
            )
    if from_headers is None or from_body is None:
        readable = from_headers or from_body
        if (
            readable is not None
            and (EPSILON_HEADER in headers or DELTA_HEADER in headers)
            and isinstance(body, dict)
            and "epsilon" in body
        ):
            return (*readable[:4], False)
        return readable
    agree = (
        from_headers[4]
        and from_headers[0] == from_body[0]
        and from_headers[1] == from_body[1]
        and (not from_headers[2] or from_headers[2] == from_body[2])
    )
    return (
        max(from_headers[0], from_body[0]),
        max(from_headers[1], from_body[1]),
        from_body[2] or from_headers[2],
        from_body[3],
        agree,
    )


def _as_tuple(report: Any) -> tuple | None:
    return None if report is None else tuple(report)


def _same(a: tuple | None, b: tuple | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(
        (x == y) or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True)
    )


VALUES = [
    "0.5",
    "0.50",
    " 0.5",
    "0.5 ",
    "5e-1",
    "0x1p-1",
    "1_0",
    "inf",
    "nan",
    "-0.1",
    "-0",
    "",
    "true",
    "0.1",
    "1e999",
]
NAMES = {
    EPSILON_HEADER: [EPSILON_HEADER, EPSILON_HEADER.lower(), EPSILON_HEADER.upper()],
    DELTA_HEADER: [DELTA_HEADER, DELTA_HEADER.lower()],
    MECHANISM_HEADER: [MECHANISM_HEADER, MECHANISM_HEADER.lower()],
}
MECHS = ["gaussian", "Gaussian", " gaussian", "gaussian ", "laplace", "", "none"]
BODIES: list[Any] = [
    None,
    {"epsilon": 0.5, "delta": 1e-6, "mechanism": "gaussian"},
    {"epsilon": 0.1, "mechanism": "gaussian"},
    {"epsilon": "0.5", "delta": "1e-6", "mechanism": "gaussian", "basis": "b"},
    {"epsilon": True},
    {"epsilon": float("nan")},
    {"epsilon": 0.5, "delta": -1},
    {"delta": 0.1},
]


def test_parse_report_is_unchanged_on_hostile_headers() -> None:
    rng = random.Random(1130)
    for _ in range(20000):
        pairs: list[tuple[str, str]] = []
        for header, names in NAMES.items():
            for _ in range(rng.choice([0, 1, 1, 2, 3])):
                value = rng.choice(MECHS) if header == MECHANISM_HEADER else rng.choice(VALUES)
                pairs.append((rng.choice(names), value))
        rng.shuffle(pairs)
        headers = CIMultiDict(pairs)
        body = rng.choice(BODIES)
        new, old = _as_tuple(parse_report(headers, body)), old_parse_report(headers, body)
        assert _same(new, old), (pairs, body, new, old)
        plain = dict(pairs)  # a mapping without getall
        assert _same(_as_tuple(parse_report(plain, body)), old_parse_report(plain, body)), (pairs, body)


def test_a_repeated_header_with_a_cheaper_second_value_is_refused() -> None:
    """The old and the new check: `get` reads the first; any disagreement is INCONSISTENT,
    whatever the case of the repeated name and in which order the values come."""
    declared = NodePrivacy(data_class=DataClass.PHI, mechanism=NodeMechanism.GAUSSIAN)
    sent = SentPrivacy(0.5, 1e-6, NodeMechanism.GAUSSIAN)
    for first, second in itertools.permutations(["0.5", "0.05", "0.50", "5e-1"], 2):
        for name in NAMES[EPSILON_HEADER]:
            h = CIMultiDict([(EPSILON_HEADER, first), (name, second), (MECHANISM_HEADER, "gaussian")])
            assert check_report(declared, sent, parse_report(h, None)) is Violation.INCONSISTENT
    h = CIMultiDict(
        [(EPSILON_HEADER, "0.5"), (MECHANISM_HEADER, "gaussian"), (MECHANISM_HEADER.lower(), "laplace")]
    )
    assert check_report(declared, sent, parse_report(h, None)) is Violation.INCONSISTENT
    h = CIMultiDict([(EPSILON_HEADER, "0.5"), (DELTA_HEADER, "0"), (DELTA_HEADER.upper(), "0.9")])
    assert check_report(declared, sent, parse_report(h, None)) is Violation.INCONSISTENT


@pytest.mark.parametrize("mech", ["Gaussian", "GAUSSIAN", " gaussian", "gaussian\t", "", "laplace", "none"])
def test_a_mechanism_that_is_not_the_declared_value_is_refused(mech: str) -> None:
    declared = NodePrivacy(data_class=DataClass.PHI, mechanism=NodeMechanism.GAUSSIAN)
    sent = SentPrivacy(0.5, 1e-6, NodeMechanism.GAUSSIAN)
    h = CIMultiDict([(EPSILON_HEADER, "0.5"), (DELTA_HEADER, "1e-6"), (MECHANISM_HEADER, mech)])
    assert check_report(declared, sent, parse_report(h, None)) is Violation.MECHANISM


def test_over_spend_and_exact_spend() -> None:
    declared = NodePrivacy(data_class=DataClass.PHI, mechanism=NodeMechanism.GAUSSIAN)
    sent = SentPrivacy(0.5, 1e-6, NodeMechanism.GAUSSIAN)
    ok = CIMultiDict([(EPSILON_HEADER, "0.5"), (DELTA_HEADER, "1e-6"), (MECHANISM_HEADER, "gaussian")])
    assert check_report(declared, sent, parse_report(ok, None)) is None
    over = CIMultiDict([(EPSILON_HEADER, "0.6"), (DELTA_HEADER, "1e-6"), (MECHANISM_HEADER, "gaussian")])
    assert check_report(declared, sent, parse_report(over, None)) is Violation.EPSILON


def test_sent_privacy_wire_format_is_unchanged() -> None:
    for mech, purpose in itertools.product(NodeMechanism, Purpose):
        sent = SentPrivacy(0.25, 1e-7, mech, purpose)
        assert sent.body() == {
            "epsilon": 0.25,
            "delta": 1e-7,
            "mechanism": mech.value,
            "purpose": purpose.value,
        }
        assert all(type(v) is str or type(v) is float for v in sent.body().values())
        assert sent.headers()[PURPOSE_HEADER] == purpose.value and type(sent.headers()[PURPOSE_HEADER]) is str
