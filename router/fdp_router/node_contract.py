"""The router <-> hospital node privacy contract (docs/privacy.md, "The node contract").

The router sends each node the (epsilon, delta) it reserved and the mechanism the node
declared, in the body (``fdp_privacy``) and in ``X-FDP-Privacy-*`` headers; the node answers
with what it actually spent, in the same headers (so a stream can be checked before its first
byte) and in a ``privacy`` object. `check_report` decides whether an answer may be released.

Called by ``backends.py`` (building the request, parsing the report) and by the request path
(checking it). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple

from fdp_router.config import DataClass, NodeMechanism, NodePrivacy

EPSILON_HEADER = "X-FDP-Privacy-Epsilon"
DELTA_HEADER = "X-FDP-Privacy-Delta"
MECHANISM_HEADER = "X-FDP-Privacy-Mechanism"
PURPOSE_HEADER = "X-FDP-Purpose"
# Float rounding between the router's repr and the node's parse; anything larger is a violation.
RELATIVE_SLACK = 1e-9
# The most a node's answer may hold, decoded (whole, or the text of a stream): a chat answer
# is kilobytes; a node that keeps sending must not hold the router's memory.
MAX_ANSWER_BYTES = 64 * 1024 * 1024


class Purpose(StrEnum):
    RELEASE = "release"  # the answer goes to the clinician: the node's mechanism must run
    CONSENSUS_VOTE = "consensus_vote"  # the answer is one vote to the router's GNMax aggregator


class SentPrivacy(NamedTuple):
    """What the router tells a node it may spend for one call. Immutable (a NamedTuple, not a
    frozen dataclass: built on every call, and a tuple builds about twice as fast)."""

    epsilon: float
    delta: float
    mechanism: NodeMechanism
    purpose: Purpose = Purpose.RELEASE
    options: tuple[str, ...] = ()

    # str() of a StrEnum member is its value (and a third of the cost of ``.value``).
    def body(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "mechanism": str(self.mechanism),
            "purpose": str(self.purpose),
        }

    def headers(self) -> dict[str, str]:
        return {
            EPSILON_HEADER: repr(float(self.epsilon)),
            DELTA_HEADER: repr(float(self.delta)),
            PURPOSE_HEADER: str(self.purpose),
        }


class PrivacyReport(NamedTuple):
    """What a node says it spent on one answer. Immutable (a NamedTuple, as `SentPrivacy`)."""

    epsilon: float
    delta: float
    mechanism: str
    basis: str = ""
    consistent: bool = True  # headers and body agree


class Violation(StrEnum):
    """Why an answer was not released (the metric label; a bounded set)."""

    NO_REPORT = "no_report"
    INCONSISTENT = "inconsistent_report"
    MECHANISM = "mechanism_mismatch"
    EPSILON = "epsilon_over_reservation"
    DELTA = "delta_over_reservation"


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) and v >= 0 else None


def _single_valued(headers: Mapping[str, str]) -> bool:
    """False if a report header came twice with different values: a report that contradicts
    itself (`get` would read only the first)."""
    getall = getattr(headers, "getall", None)
    if getall is None:
        return True
    for name in (EPSILON_HEADER, DELTA_HEADER, MECHANISM_HEADER):
        values = getall(name, ())
        if len(values) > 1 and len(set(values)) > 1:
            return False
    return True


def parse_report(headers: Mapping[str, str], body: Any) -> PrivacyReport | None:
    """The spend a node reported, from its headers and/or its body's ``privacy`` object.
    None when it reported nothing usable (a missing or malformed number counts as nothing)."""
    from_headers: PrivacyReport | None = None
    if EPSILON_HEADER in headers:
        eps, delta = _number(headers.get(EPSILON_HEADER)), _number(headers.get(DELTA_HEADER, "0"))
        if eps is not None and delta is not None:
            from_headers = PrivacyReport(
                eps, delta, str(headers.get(MECHANISM_HEADER, "")), consistent=_single_valued(headers)
            )
    from_body: PrivacyReport | None = None
    if isinstance(body, dict) and "epsilon" in body:
        eps, delta = _number(body.get("epsilon")), _number(body.get("delta", 0))
        if eps is not None and delta is not None:
            basis = body.get("basis")
            from_body = PrivacyReport(
                eps, delta, str(body.get("mechanism", "")), basis if isinstance(basis, str) else ""
            )
    if from_headers is None or from_body is None:
        readable = from_headers or from_body
        # Present in both places but unreadable in one (inf, NaN, negative, not a number, a
        # delta header without its epsilon): that part may not be dropped in favour of the
        # other; the report contradicts itself.
        if (
            readable is not None
            and (EPSILON_HEADER in headers or DELTA_HEADER in headers)
            and isinstance(body, dict)
            and "epsilon" in body
        ):
            return PrivacyReport(
                readable.epsilon, readable.delta, readable.mechanism, readable.basis, consistent=False
            )
        return readable
    agree = (
        from_headers.consistent
        and from_headers.epsilon == from_body.epsilon
        and from_headers.delta == from_body.delta
        and (not from_headers.mechanism or from_headers.mechanism == from_body.mechanism)
    )
    # The larger spend of the two is the one that counts.
    return PrivacyReport(
        max(from_headers.epsilon, from_body.epsilon),
        max(from_headers.delta, from_body.delta),
        from_body.mechanism or from_headers.mechanism,
        from_body.basis,
        consistent=agree,
    )


def _over(reported: float, allowed: float) -> bool:
    return reported > allowed * (1.0 + RELATIVE_SLACK) + 0.0


def check_report(declared: NodePrivacy, sent: SentPrivacy, report: PrivacyReport | None) -> Violation | None:
    """None if an answer of a node that declared `declared`, called with `sent`, may be
    released; otherwise why not. Public nodes hold no patient data: nothing to check."""
    if declared.data_class == DataClass.PUBLIC:
        return None
    if report is None:
        return Violation.NO_REPORT
    if not report.consistent:
        return Violation.INCONSISTENT
    if report.mechanism != declared.mechanism:  # a StrEnum: compares as its value
        return Violation.MECHANISM
    if _over(report.epsilon, sent.epsilon):
        return Violation.EPSILON
    if _over(report.delta, sent.delta):
        return Violation.DELTA
    return None


def check_stream_report(
    declared: NodePrivacy, sent: SentPrivacy, cleared: PrivacyReport | None, body: Any
) -> Violation | None:
    """A ``privacy`` object a node put in its stream, after its headers' report `cleared` the
    answer: None if it says the same, else why the rest of the stream may not be relayed (the
    same rule as a whole answer whose headers and body disagree)."""
    if declared.data_class == DataClass.PUBLIC:
        return None
    late = parse_report({}, body)
    if late is None or cleared is None:
        return Violation.NO_REPORT if cleared is None else Violation.INCONSISTENT
    same = (
        late.epsilon == cleared.epsilon
        and late.delta == cleared.delta
        and (not cleared.mechanism or late.mechanism == cleared.mechanism)
    )
    return check_report(declared, sent, late) or (None if same else Violation.INCONSISTENT)
