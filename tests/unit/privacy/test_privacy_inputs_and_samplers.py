"""Bad input gets a clear error naming the field; samplers have the right scale; the CLI works.

The sampler checks are statistical sanity checks of the noise *scale* only: they cannot prove
differential privacy (that rests on OpenDP's exact samplers and their proofs), and they
cannot detect a floating-point side channel.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from fdp_router.cli import main as cli_main
from fdp_router.config import PrivacyConfig
from fdp_router.privacy import mechanisms
from fdp_router.privacy.accounting import tightest
from fdp_router.privacy.api import InvalidPrivacyRequest
from fdp_router.privacy.audit import query_hash
from fdp_router.privacy.events import (
    GaussianEvent,
    LaplaceEvent,
    SelfComposedEvent,
    check_epsilon,
    event_for_request,
    gnmax_event,
    to_dp_accounting,
)
from fdp_router.privacy.policy import check_policy, guarantee

# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epsilon", "reason"),
    [
        (0, "> 0"),
        (-1.0, "> 0"),
        (math.nan, "NaN"),
        (math.inf, "finite"),
        (-math.inf, "finite"),
        (5.0, "max_epsilon_per_query"),
        (0.05, "min_epsilon_per_query"),  # unset: the default epsilon (0.1) is the minimum
        (1e-300, "min_epsilon_per_query"),
        (1e-310, "subnormal"),
        (5e-324, "subnormal"),
        (10**400, "finite"),
        ("0.1", "number"),
        (True, "number"),
        (False, "number"),
        ([0.1], "number"),
    ],
)
def test_bad_epsilon_is_rejected_naming_the_field(epsilon: object, reason: str) -> None:
    with pytest.raises(InvalidPrivacyRequest) as info:
        event_for_request(PrivacyConfig(), epsilon)  # type: ignore[arg-type]
    assert info.value.field == "privacy_budget"
    assert reason in info.value.reason
    with pytest.raises(InvalidPrivacyRequest) as info:
        check_epsilon(epsilon, PrivacyConfig(), field_name="options_budget")  # type: ignore[arg-type]
    assert info.value.field == "options_budget"


def test_epsilon_bounds_come_from_the_policy() -> None:
    cfg = PrivacyConfig(min_epsilon_per_query=0.01, default_epsilon_per_query=0.1, max_epsilon_per_query=1.0)
    assert check_epsilon(None, cfg) == 0.1
    assert check_epsilon(0.01, cfg) == 0.01  # the bounds themselves are allowed
    assert check_epsilon(1, cfg) == 1.0
    with pytest.raises(InvalidPrivacyRequest) as info:
        check_epsilon(0.009, cfg)
    assert info.value.field == "privacy_budget"
    assert "below the policy's min_epsilon_per_query 0.01" in info.value.reason
    with pytest.raises(InvalidPrivacyRequest) as info:
        check_epsilon(0.05, PrivacyConfig())
    assert "min_epsilon_per_query (default: default_epsilon_per_query) 0.1" in info.value.reason


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_delta_outside_zero_one_is_rejected(delta: float) -> None:
    with pytest.raises(InvalidPrivacyRequest) as info:
        tightest(GaussianEvent(1.0), delta)
    assert info.value.field == "delta"
    with pytest.raises(InvalidPrivacyRequest):
        mechanisms.sigma_for(1.0, delta)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_bad_noise_parameters_are_rejected(bad: float) -> None:
    for make in (GaussianEvent, LaplaceEvent, gnmax_event):
        with pytest.raises(InvalidPrivacyRequest):
            make(bad)
    with pytest.raises(InvalidPrivacyRequest):
        mechanisms.gaussian_noise(bad)
    with pytest.raises(InvalidPrivacyRequest):
        mechanisms.laplace_noise(bad)
    with pytest.raises(InvalidPrivacyRequest):
        SelfComposedEvent(GaussianEvent(1.0), -1)


def test_unknown_events_and_mechanisms_are_rejected() -> None:
    with pytest.raises(InvalidPrivacyRequest) as info:
        to_dp_accounting(object())
    assert info.value.field == "event"
    cfg = PrivacyConfig.model_construct(**{**PrivacyConfig().__dict__, "mechanism": "exponential"})
    with pytest.raises(InvalidPrivacyRequest) as info:
        event_for_request(cfg, 0.1)
    assert info.value.field == "mechanism"


def test_a_budget_that_cannot_admit_one_request_is_refused() -> None:
    cfg = PrivacyConfig(default_epsilon_per_query=1.0, max_epsilon_per_query=1.0, budgets={"per_user": 1.0})
    with pytest.raises(InvalidPrivacyRequest) as info:
        check_policy(cfg)
    assert info.value.field == "budgets.per_user"
    assert "cannot admit even one query" in info.value.reason
    assert "gaussian node" in info.value.reason


def test_a_budget_is_checked_against_the_costliest_node_mechanism() -> None:
    """At a small epsilon a pure-DP release costs the filter more than a Gaussian one: a budget
    between the two is refused, naming pure_dp."""
    cfg = PrivacyConfig(
        default_epsilon_per_query=0.01,
        max_epsilon_per_query=0.01,
        budgets={"per_user": 0.036, "per_department": 100.0, "per_hospital": 100.0},
    )
    with pytest.raises(InvalidPrivacyRequest) as info:
        check_policy(cfg)
    assert info.value.field == "budgets.per_user"
    assert "pure_dp node" in info.value.reason
    check_policy(cfg.model_copy(update={"budgets": cfg.budgets.model_copy(update={"per_user": 0.04})}))


async def test_a_ledger_with_such_a_policy_refuses_to_open(tmp_path: Path) -> None:
    from fdp_router.config import LedgerConfig
    from fdp_router.privacy.ledger import open_ledger

    cfg = PrivacyConfig(default_epsilon_per_query=1.0, max_epsilon_per_query=1.0, budgets={"per_user": 1.0})
    with pytest.raises(InvalidPrivacyRequest):
        await open_ledger(LedgerConfig(sqlite_path=str(tmp_path / "l.sqlite")), cfg)
    assert not (tmp_path / "l.sqlite").exists()


def test_noisy_counts_rejects_bad_counts() -> None:
    for counts in ([], [1, -1], [1.5, 2], [True, 1]):
        with pytest.raises(InvalidPrivacyRequest):
            mechanisms.noisy_counts(counts, 1.0)  # type: ignore[arg-type]
    for sigma in (0.0, math.nan, 1e-310):
        with pytest.raises(InvalidPrivacyRequest):
            mechanisms.noisy_counts([1, 2], sigma)


# --- samplers --------------------------------------------------------------------------------

N = 4000


def test_gaussian_sampler_scale() -> None:
    draws = [mechanisms.gaussian_noise(2.0) for _ in range(N)]
    assert abs(statistics.fmean(draws)) < 4 * 2.0 / math.sqrt(N)
    assert statistics.pstdev(draws) == pytest.approx(2.0, rel=0.06)
    assert len(set(draws)) > N * 0.9  # not a constant or coarse grid


def test_laplace_sampler_scale() -> None:
    b = 1.5
    draws = [mechanisms.laplace_noise(b) for _ in range(N)]
    assert abs(statistics.fmean(draws)) < 4 * b * math.sqrt(2) / math.sqrt(N)
    assert statistics.fmean(abs(x) for x in draws) == pytest.approx(b, rel=0.06)  # E|X| = b


def test_noisy_counts_are_integers_with_discrete_gaussian_noise_of_the_right_scale() -> None:
    sigma, n = 3.0, 1500
    draws = [mechanisms.noisy_counts([10, 0, 5], sigma) for _ in range(n)]
    assert all(len(d) == 3 and all(type(v) is int for v in d) for d in draws)
    for i, true in enumerate((10, 0, 5)):
        col = [d[i] for d in draws]
        assert abs(statistics.fmean(col) - true) < 4 * sigma / math.sqrt(n)
        assert statistics.pstdev(col) == pytest.approx(sigma, rel=0.08)


def test_no_float_prngs_in_the_mechanisms_module() -> None:
    import ast

    tree = ast.parse(Path(mechanisms.__file__).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {m for m in imported if m.split(".")[0] in ("random", "numpy", "secrets")}, imported
    assert "opendp.prelude" in imported


# --- policy guarantee, audit hash, CLI ---------------------------------------------------------


def test_guarantee_states_unit_and_window_honestly() -> None:
    g = guarantee(PrivacyConfig(window={"kind": "period", "period_seconds": 86400}))
    assert g.text == "(10, 1e-05)-DP per user per 24h window"
    assert (g.epsilon, g.delta, g.unit, g.window_seconds) == (10.0, 1e-5, "user", 86400)
    assert any("per (person, window)" in n for n in g.notes)
    assert any("clinicians do not collude" in n for n in g.notes)
    assert "lifetime" in guarantee(PrivacyConfig()).text


def test_guarantee_says_what_is_protected_and_by_which_budget() -> None:
    g = guarantee(PrivacyConfig(min_epsilon_per_query=0.05))
    assert "a patient record at a hospital" in g.protects
    assert "a hospital's whole data for consensus votes" in g.protects
    notes = " | ".join(g.notes)
    assert g.protects in notes
    assert "the per-hospital budget bounds what all clinicians together learn" in notes
    assert "Public nodes cost 0 epsilon" in notes
    assert "between 0.05 and 1 epsilon" in notes


def test_query_hash_is_keyed_and_hides_the_text() -> None:
    h1 = query_hash(b"k" * 32, "patient has diabetes?")
    assert h1 == query_hash(b"k" * 32, "patient has diabetes?")
    assert h1 != query_hash(b"x" * 32, "patient has diabetes?")
    assert "diabetes" not in h1 and len(h1) == 64


def test_cli_epsilon_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        [
            "privacy",
            "epsilon",
            "--mechanism",
            "gaussian",
            "--noise-multiplier",
            "2",
            "--count",
            "10",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    exact = mechanisms.epsilon_for_sigma(2 / math.sqrt(10), 1e-5)
    assert out["method"] == "analytic" and out["delta"] == 1e-5
    assert out["epsilon"] == pytest.approx(exact, rel=1e-9)
    assert out["by_method"]["pld"] == pytest.approx(exact, rel=0.01)
    rc = cli_main(
        [
            "privacy",
            "epsilon",
            "--mechanism",
            "laplace",
            "--noise-multiplier",
            "2",
            "--count",
            "10",
            "--delta",
            "1e-5",
            "--json",
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["method"] == "pld" and out["epsilon"] < 10 / 2 == out["by_method"]["basic"]


def test_cli_plan_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        [
            "privacy",
            "plan",
            "--epsilon",
            "10",
            "--delta",
            "1e-5",
            "--mechanism",
            "gaussian",
            "--noise-multiplier",
            "2",
            "--json",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["admitted"], out["basic_composition"]) == (11, 4)  # see docs/benchmarks/privacy.md
    assert out["pld_fixed_sequence"] >= out["admitted"]


def test_cli_bad_input_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(
        ["privacy", "epsilon", "--mechanism", "gaussian", "--noise-multiplier", "2", "--delta", "1.5"]
    )
    assert rc == 2
    assert "delta" in capsys.readouterr().err
    rc = cli_main(
        [
            "privacy",
            "plan",
            "--epsilon",
            "-1",
            "--delta",
            "1e-5",
            "--mechanism",
            "laplace",
            "--noise-multiplier",
            "1",
        ]
    )
    assert rc == 2
    with pytest.raises(SystemExit):
        cli_main(
            ["privacy", "epsilon", "--mechanism", "cauchy", "--noise-multiplier", "2", "--delta", "1e-5"]
        )


def test_cli_plan_for_a_pure_dp_node(capsys: pytest.CaptureFixture[str]) -> None:
    # What a PHI node with mechanism PureDP is charged: k releases at epsilon 0.1.
    argv = ["privacy", "plan", "--epsilon", "10", "--delta", "1e-5", "--mechanism", "pure_dp"]
    assert cli_main([*argv, "--query-epsilon", "0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["basic_composition"] == 100  # k * 0.1 <= 10
    assert out["admitted"] > out["basic_composition"]
    assert out["pld_fixed_sequence"] >= out["admitted"]
    assert cli_main(argv) == 2  # --query-epsilon missing
    assert "--query-epsilon" in capsys.readouterr().err


def test_the_guarantee_states_what_a_consensus_costs_beyond_the_per_query_range() -> None:
    # A consensus is charged its GNMax vote, not a requested epsilon: the status must not claim
    # that every query stays within [min, max] epsilon per query.
    from fdp_router.config import PrivacyConfig
    from fdp_router.privacy.accounting import fast_epsilon
    from fdp_router.privacy.events import gnmax_event
    from fdp_router.privacy.policy import guarantee

    cfg = PrivacyConfig(max_epsilon_per_query=2.0, budgets={"per_user": 20.0}, consensus={"sigma": 2.0})
    cost = fast_epsilon(gnmax_event(2.0), cfg.delta)
    assert cost > cfg.max_epsilon_per_query
    (note,) = [n for n in guarantee(cfg).notes if "consensus spends" in n]
    assert f"{cost:.3g} epsilon" in note
