"""The demo hospital's record-level DP mechanism (fdp_router.demo_data), as statistics.

The synthetic tables are seeded; release noise comes from OpenDP's samplers (OS randomness,
not seedable), so the statistical tests bound their false-failure rate instead:

- eps = 8: the released treatment is the true one in >= 95 % of 200 runs. The shard-vote
  margin here is >= 10 votes at OpenDP scale 2/8, so a single run is wrong with probability
  below 4 e^-40; the test cannot fail by chance, only if the calibration is wrong.
- eps = 0.01: the answers are spread over the candidates (chi-square against uniform, 1 %).
  Under the mechanism's exact distribution a single 1 % test still rejects about 1 % of the
  time, so the test draws a second independent batch only when the first rejects (false
  failure ~1e-4); a mechanism that ignores epsilon rejects both with probability ~1. The same
  test is shown to reject at eps = 8 (it has the power to fail).
"""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest
from fdp_router import demo_data as dd
from scipy.stats import chisquare

RUNS = 200
TABLE = dd.PatientTable("hospital-a", seed=1)
TREATMENTS = [dd.TreatmentQuestion(c) for c in dd.CONDITIONS]


def _answers(q: dd.Question, eps: float, runs: int = RUNS) -> list[str]:
    return [dd.release(TABLE, q, eps).value for _ in range(runs)]


def _rejects_uniform(q: dd.TreatmentQuestion, eps: float) -> bool:
    answers = _answers(q, eps)
    observed = [answers.count(t) for t in q.condition.treatments]
    return bool(chisquare(observed).pvalue < 0.01)


def test_the_premise_the_shard_vote_plurality_is_the_true_answer_by_a_clear_margin() -> None:
    for q in TREATMENTS:
        votes = TABLE.summary(q.condition).votes
        top = q.condition.treatments.index(dd.true_answer(TABLE, q))
        assert votes[top] - max(v for i, v in enumerate(votes) if i != top) >= 10, (q.condition.name, votes)


@pytest.mark.parametrize("q", TREATMENTS, ids=[c.name for c in dd.CONDITIONS])
def test_at_epsilon_8_the_released_treatment_is_the_true_one_in_95_percent_of_200_runs(
    q: dd.TreatmentQuestion,
) -> None:
    truth = dd.true_answer(TABLE, q)
    assert _answers(q, 8.0).count(truth) >= 0.95 * RUNS


@pytest.mark.parametrize("q", TREATMENTS[:3], ids=[c.name for c in dd.CONDITIONS[:3]])
def test_at_epsilon_0_01_the_answers_are_spread_over_the_candidates(q: dd.TreatmentQuestion) -> None:
    assert not (_rejects_uniform(q, 0.01) and _rejects_uniform(q, 0.01))


def test_the_uniformity_test_rejects_a_mechanism_that_answers_the_truth() -> None:
    assert _rejects_uniform(TREATMENTS[0], 8.0)


@pytest.mark.parametrize("eps", [0.01, 0.1, 0.3, 1.0, 2.5, 8.0])
@pytest.mark.parametrize("kind", ["treatment", "share"])
def test_the_reported_epsilon_is_the_requested_one_and_opendp_certifies_it(kind: str, eps: float) -> None:
    q: dd.Question = (
        TREATMENTS[0] if kind == "treatment" else dd.ShareQuestion(dd.CONDITIONS[0], dd.OUTCOMES[1])
    )
    assert dd.release(TABLE, q, eps).epsilon == eps
    certified = dd.privacy_map(kind, eps)
    assert certified <= eps  # never more than reported
    assert certified >= eps * (1 - 1e-9)  # and not over-noised: calibrated to it


def test_the_share_error_shrinks_with_epsilon() -> None:
    q = dd.ShareQuestion(dd.CONDITIONS[0], dd.OUTCOMES[1])
    truth = dd.true_share(TABLE, q)

    def mean_abs_error(eps: float) -> float:
        shares = [dd.release(TABLE, q, eps).share for _ in range(RUNS)]
        return statistics.fmean(abs(s - truth) for s in shares if s is not None)

    errors = [mean_abs_error(eps) for eps in (0.05, 0.5, 5.0)]
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.005, errors  # scale 0.4 on counts of ~600 records


def test_one_record_added_or_removed_moves_at_most_one_shard_vote() -> None:
    """The sensitivity the calibration assumes (L-inf 1 on the vote histogram)."""
    ci = 0
    rows = np.flatnonzero(TABLE.condition == ci)
    treatments, shards = TABLE.treatment[rows], TABLE.shard[rows]
    n_t = len(dd.CONDITIONS[ci].treatments)
    base = np.array(dd.shard_votes(treatments, shards, TABLE.shards, n_t))
    pick = random.Random(5)
    moved_both_ways = False
    for _ in range(60):
        i = pick.randrange(rows.size)
        removed = np.array(dd.shard_votes(np.delete(treatments, i), np.delete(shards, i), TABLE.shards, n_t))
        new_shard = dd.shard_of(f"new-patient-{pick.random()}", TABLE.shards)
        added = np.array(
            dd.shard_votes(
                np.append(treatments, pick.randrange(n_t)), np.append(shards, new_shard), TABLE.shards, n_t
            )
        )
        for other in (removed, added):
            assert np.abs(other - base).max() <= 1
            assert np.abs(other - base).sum() <= 2
            moved_both_ways |= bool((other - base).min() < 0 < (other - base).max())
    # Not monotone (one count up, another down), so the calibration must not assume it:
    assert moved_both_ways
    assert str(dd.noisy_max_measurement(1.0).input_metric) == "LInfDistance(T=i32)"
    assert "MaxDivergence" in str(dd.noisy_max_measurement(1.0).output_measure)


def test_release_noise_never_comes_from_numpy_random_or_random(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("release noise from a floating-point PRNG")

    for name in ("default_rng", "random", "normal", "laplace", "gumbel", "exponential", "choice"):
        monkeypatch.setattr(np.random, name, boom)
    for name in ("random", "gauss", "expovariate", "choice"):
        monkeypatch.setattr(random, name, boom)
    dd.release(TABLE, TREATMENTS[1], 0.7)
    dd.release(TABLE, dd.ShareQuestion(dd.CONDITIONS[1], dd.OUTCOMES[0]), 0.7)


@pytest.mark.parametrize("eps", [0, -1.0, math.nan, math.inf, True, "1", 5e-324])
def test_an_unusable_epsilon_is_refused_naming_it(eps: object) -> None:
    with pytest.raises(dd.MechanismError) as exc:
        dd.release(TABLE, TREATMENTS[0], eps)  # type: ignore[arg-type]
    assert exc.value.field == "epsilon"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What is the most common first-line treatment for hypertension among our patients?", "hypertension"),
        (
            "most common first line treatment for Type 2 Diabetes among our patients [run 7f3a]",
            "type 2 diabetes",
        ),
        ("Most common first-line therapy for patients with sepsis among our patients", "sepsis"),
        ("share of patients with asthma who were readmitted (q 12)", ("asthma", "readmitted")),
        ("Share of our patients with heart failure who died", ("heart failure", "died")),
        (
            "percentage of patients with pneumonia who went to the ICU",
            ("community-acquired pneumonia", "intensive care"),
        ),
        ("What is the first-line treatment for hypertension?", None),
        ("share of patients with gout who improved", None),
        ("share of patients with asthma who liked the food", None),
    ],
)
def test_the_question_family(text: str, expected: object) -> None:
    q = dd.parse_question(text)
    if expected is None:
        assert q is None
    elif isinstance(expected, str):
        assert isinstance(q, dd.TreatmentQuestion) and q.condition.name == expected
    else:
        assert isinstance(q, dd.ShareQuestion)
        assert (q.condition.name, q.outcome.name) == expected


def test_tables_are_seeded_per_hospital_and_their_favourites_can_differ() -> None:
    again = dd.PatientTable("hospital-a", seed=1)
    assert again.summaries == TABLE.summaries
    others = [dd.PatientTable(f"hospital-{i}", seed=i) for i in (1, 2, 3)]
    assert len({t.summaries for t in others}) == 3
    answers = [{dd.true_answer(t, q) for t in others} for q in TREATMENTS]
    assert any(len(a) > 1 for a in answers)  # some condition's favourite differs between hospitals
    assert any(len(a) == 1 for a in answers)  # and some agree
    for t in others:  # the favourite is clear but not overwhelming
        for q in TREATMENTS:
            counts = sorted(t.summary(q.condition).treatment_counts, reverse=True)
            assert 0.25 < counts[0] / sum(counts) < 0.6


def test_shards_are_fixed_by_the_configured_size() -> None:
    assert TABLE.shards == dd.shards_for(dd.DEFAULT_PATIENTS) == 20
    assert dd.shards_for(100) == dd.MIN_SHARDS and dd.shards_for(10**6) == dd.MAX_SHARDS
    with pytest.raises(ValueError, match="patients"):
        dd.PatientTable("h", patients=10)
