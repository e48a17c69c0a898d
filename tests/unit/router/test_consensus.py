"""Consensus releases only public options (GNMax over one vote per hospital)."""

from __future__ import annotations

import random

import pytest
from fdp_router.consensus import aggregate, vote_instruction, vote_of

OPTIONS = ("Admit to ICU", "Admit to ward", "Discharge with follow-up")


def test_votes_map_by_normalised_exact_match_and_everything_else_abstains() -> None:
    assert vote_of("admit to ICU.", OPTIONS) == 0
    assert vote_of("  ADMIT   to ward ", OPTIONS) == 1
    assert vote_of("Admit to ICU because the patient is unstable", OPTIONS) is None
    assert vote_of("", OPTIONS) is None


def test_whatever_the_hospitals_answer_the_released_text_is_one_of_the_options() -> None:
    # Property test with the real OpenDP noise: secrets, paraphrases, empty answers, votes.
    rng = random.Random(1234)
    secret = "SECRET-H4: patient Jane Roe (MRN 998877) HIV positive"
    pool = [*OPTIONS, secret, "admit to icu", "", "abstain", "Discharge", "x" * 300]
    for _ in range(300):
        answers = [rng.choice(pool) for _ in range(rng.randint(1, 6))]
        result = aggregate(answers, OPTIONS, sigma=rng.choice([0.5, 1.0, 4.0]))
        assert result.answer in OPTIONS
        assert result.answer == OPTIONS[result.winner]
        assert secret not in result.answer


def test_noise_goes_on_every_option_even_those_nobody_voted_for() -> None:
    seen: list[list[int]] = []

    def record(counts: list[int], sigma: float) -> list[int]:
        seen.append(list(counts))
        return list(counts)

    result = aggregate(["Admit to ward", "admit to ward", "nonsense"], OPTIONS, 2.0, noise=record)
    assert seen == [[0, 2, 0]]
    assert result.winner == 1 and result.abstained == 1 and result.hospitals == 3
    assert result.consensus_reached and result.confidence == pytest.approx(2 / 3, abs=1e-4)


def test_ties_are_broken_uniformly_not_towards_the_first_option() -> None:
    picks = [aggregate(["x"], OPTIONS, 1.0, noise=lambda c, s: [5, 5, 5]).winner for _ in range(600)]
    shares = [picks.count(i) / len(picks) for i in range(3)]
    assert all(0.25 < s < 0.42 for s in shares), shares
    assert all(aggregate(["x"], OPTIONS, 1.0, noise=lambda c, s: [5, 6, 5]).winner == 1 for _ in range(20))


def test_a_clear_winner_wins_and_equal_votes_are_spread_with_real_noise() -> None:
    assert all(aggregate(["Admit to ward"] * 40, OPTIONS, 2.0).winner == 1 for _ in range(50))
    picks = [aggregate(["abstain"], OPTIONS, 3.0).winner for _ in range(600)]
    shares = [picks.count(i) / len(picks) for i in range(3)]
    assert all(0.2 < s < 0.47 for s in shares), shares


def test_strong_agreement_wins_with_small_noise() -> None:
    wins = sum(
        aggregate(["Admit to ward"] * 5, OPTIONS, sigma=0.5).answer == "Admit to ward" for _ in range(50)
    )
    assert wins == 50


def test_the_vote_instruction_lists_every_option_verbatim() -> None:
    text = vote_instruction(OPTIONS)
    assert all(f"- {o}" in text for o in OPTIONS)
