"""Canary weights as replica counts."""

from __future__ import annotations

import pytest
from fdp_operator.rollout.split import Split, canary_for_stable, split_total


@pytest.mark.parametrize(
    ("total", "weight", "expected"),
    [
        pytest.param(10, 10, Split(stable=9, canary=1), id="10 replicas at 10% run 1 canary and 9 stable"),
        pytest.param(10, 50, Split(stable=5, canary=5), id="10 replicas at 50% split evenly"),
        pytest.param(10, 15, Split(stable=8, canary=2), id="a half pod rounds up for the canary"),
        pytest.param(4, 0, Split(stable=4, canary=0), id="weight 0 runs no canary"),
        pytest.param(4, 100, Split(stable=0, canary=4), id="weight 100 runs only canary"),
        pytest.param(2, 1, Split(stable=1, canary=1), id="2 replicas at 1% still run one canary pod"),
        pytest.param(2, 99, Split(stable=1, canary=1), id="2 replicas at 99% still keep one stable pod"),
        pytest.param(1, 30, Split(stable=1, canary=1), id="a single replica gets one extra canary pod"),
        pytest.param(0, 30, Split(stable=0, canary=0), id="zero replicas stay zero"),
    ],
)
def test_split_total(total: int, weight: int, expected: Split) -> None:
    assert split_total(total, weight) == expected


@pytest.mark.parametrize("total", range(2, 31))
def test_with_two_or_more_replicas_neither_side_is_empty_for_weights_1_to_99(total: int) -> None:
    for weight in range(1, 100):
        parts = split_total(total, weight)
        assert parts.stable >= 1 and parts.canary >= 1, (total, weight, parts)
        assert parts.stable + parts.canary == total
        # as close to the requested weight as whole pods allow (within one pod)
        assert abs(parts.canary - total * weight / 100) <= 1


@pytest.mark.parametrize(
    ("stable", "weight", "canary"),
    [
        pytest.param(9, 10, 1, id="an HPA at 9 stable pods gets 1 canary for 10%"),
        pytest.param(6, 50, 6, id="50% beside an HPA-owned stable matches it pod for pod"),
        pytest.param(3, 1, 1, id="a tiny weight still runs one canary pod"),
        pytest.param(8, 0, 0, id="weight 0 beside an HPA runs no canary"),
    ],
)
def test_canary_is_sized_in_proportion_to_an_hpa_owned_stable(stable: int, weight: int, canary: int) -> None:
    assert canary_for_stable(stable, weight) == canary


@pytest.mark.parametrize("weight", [-1, 101])
def test_weights_outside_0_to_100_are_rejected_with_the_value(weight: int) -> None:
    with pytest.raises(ValueError, match=str(weight)):
        split_total(10, weight)
    with pytest.raises(ValueError, match=str(weight)):
        canary_for_stable(10, weight)
