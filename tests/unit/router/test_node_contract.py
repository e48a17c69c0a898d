"""The router <-> node privacy contract, as an attacker-node would try to bend it: a node
that reports more than it was given, nothing, another mechanism, or headers that disagree
with its body must never have its answer released."""

from __future__ import annotations

import pytest
from fdp_router.config import DataClass, NodeMechanism, NodePrivacy
from fdp_router.node_contract import (
    PrivacyReport,
    Purpose,
    SentPrivacy,
    Violation,
    check_report,
    parse_report,
)

PHI_PURE = NodePrivacy(data_class=DataClass.PHI, mechanism=NodeMechanism.PURE_DP)
PHI_GAUSS = NodePrivacy(data_class=DataClass.PHI, mechanism=NodeMechanism.GAUSSIAN)
PUBLIC = NodePrivacy(data_class=DataClass.PUBLIC)
SENT_PURE = SentPrivacy(0.5, 0.0, NodeMechanism.PURE_DP)
SENT_GAUSS = SentPrivacy(0.5, 1e-6, NodeMechanism.GAUSSIAN)


def test_the_request_carries_the_reservation_in_body_and_headers() -> None:
    sent = SentPrivacy(0.25, 1e-7, NodeMechanism.GAUSSIAN)
    assert sent.body() == {"epsilon": 0.25, "delta": 1e-7, "mechanism": "gaussian", "purpose": "release"}
    h = sent.headers()
    assert float(h["X-FDP-Privacy-Epsilon"]) == 0.25
    assert float(h["X-FDP-Privacy-Delta"]) == 1e-7
    assert h["X-FDP-Purpose"] == "release"
    assert SentPrivacy(0, 0, NodeMechanism.NONE, Purpose.CONSENSUS_VOTE).headers()["X-FDP-Purpose"] == (
        "consensus_vote"
    )


@pytest.mark.parametrize(
    ("declared", "sent", "report", "expected"),
    [
        (PHI_PURE, SENT_PURE, PrivacyReport(0.5, 0.0, "pure_dp"), None),
        (PHI_PURE, SENT_PURE, PrivacyReport(0.1, 0.0, "pure_dp"), None),  # spent less: fine
        (PHI_PURE, SENT_PURE, None, Violation.NO_REPORT),
        (PHI_PURE, SENT_PURE, PrivacyReport(0.5000001, 0.0, "pure_dp"), Violation.EPSILON),
        (PHI_PURE, SENT_PURE, PrivacyReport(5.0, 0.0, "pure_dp"), Violation.EPSILON),
        (PHI_PURE, SENT_PURE, PrivacyReport(0.5, 1e-9, "pure_dp"), Violation.DELTA),
        (PHI_PURE, SENT_PURE, PrivacyReport(0.5, 0.0, "gaussian"), Violation.MECHANISM),
        (PHI_PURE, SENT_PURE, PrivacyReport(0.5, 0.0, ""), Violation.MECHANISM),
        (PHI_PURE, SENT_PURE, PrivacyReport(0.5, 0.0, "pure_dp", consistent=False), Violation.INCONSISTENT),
        (PHI_GAUSS, SENT_GAUSS, PrivacyReport(0.5, 1e-6, "gaussian"), None),
        (PHI_GAUSS, SENT_GAUSS, PrivacyReport(0.5, 2e-6, "gaussian"), Violation.DELTA),
        (PUBLIC, SentPrivacy(0.0, 0.0, NodeMechanism.NONE), None, None),  # no patient data
    ],
)
def test_check_report(
    declared: NodePrivacy, sent: SentPrivacy, report: PrivacyReport | None, expected: Violation | None
) -> None:
    assert check_report(declared, sent, report) is expected


def test_float_rounding_of_the_wire_is_not_a_violation() -> None:
    eps = 0.1 + 0.2  # 0.30000000000000004
    sent = SentPrivacy(eps, 0.0, NodeMechanism.PURE_DP)
    back = float(sent.headers()["X-FDP-Privacy-Epsilon"])
    assert check_report(PHI_PURE, sent, PrivacyReport(back, 0.0, "pure_dp")) is None


def test_parse_report_from_headers_body_or_both() -> None:
    headers = {
        "X-FDP-Privacy-Epsilon": "0.5",
        "X-FDP-Privacy-Delta": "0",
        "X-FDP-Privacy-Mechanism": "pure_dp",
    }
    body = {"epsilon": 0.5, "delta": 0.0, "mechanism": "pure_dp", "basis": "noisy max"}
    assert parse_report(headers, None) == PrivacyReport(0.5, 0.0, "pure_dp")
    assert parse_report({}, body) == PrivacyReport(0.5, 0.0, "pure_dp", "noisy max")
    both = parse_report(headers, body)
    assert both is not None and both.consistent and both.basis == "noisy max"
    assert parse_report({}, None) is None
    assert parse_report({}, {"basis": "no numbers"}) is None


@pytest.mark.parametrize(
    "bad",
    ["nan", "inf", "-1", "abc", ""],
)
def test_a_malformed_number_is_no_report(bad: str) -> None:
    assert parse_report({"X-FDP-Privacy-Epsilon": bad}, None) is None
    assert parse_report({}, {"epsilon": bad}) is None


def test_a_boolean_epsilon_is_no_report() -> None:
    assert parse_report({}, {"epsilon": True, "delta": 0}) is None


def test_headers_that_understate_the_body_are_inconsistent_and_the_larger_spend_counts() -> None:
    # A node that puts a small epsilon in the headers (checked before a stream's first byte)
    # and the truth in the body must not get through.
    r = parse_report(
        {"X-FDP-Privacy-Epsilon": "0.1", "X-FDP-Privacy-Mechanism": "pure_dp"},
        {"epsilon": 0.9, "delta": 0, "mechanism": "pure_dp"},
    )
    assert r is not None and not r.consistent and r.epsilon == 0.9
    assert check_report(PHI_PURE, SENT_PURE, r) is Violation.INCONSISTENT
