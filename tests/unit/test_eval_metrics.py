"""Eval metrics on synthetic predictions whose answers are known by construction."""

from __future__ import annotations

import math
import random

import pytest

from evals.metrics import (
    auroc,
    auto_lane,
    ece,
    reliability,
    threshold_for_precision,
    wilson,
)


@pytest.mark.parametrize(
    ("scores", "correct", "expected"),
    [
        ([0.1, 0.4, 0.35, 0.8], [False, False, True, True], 0.75),  # scikit-learn's example
        ([0.9, 0.8, 0.2, 0.1], [True, True, False, False], 1.0),  # separated
        ([0.9, 0.8, 0.2, 0.1], [False, False, True, True], 0.0),  # reversed
        ([0.5, 0.5, 0.5, 0.5], [True, False, True, False], 0.5),  # ties say nothing
        ([0.3, 0.6, 0.6], [False, True, False], 0.75),  # a tie across classes counts half
    ],
)
def test_auroc_known_answers(scores: list[float], correct: list[bool], expected: float) -> None:
    assert auroc(scores, correct) == pytest.approx(expected)


def test_auroc_is_undefined_with_one_class() -> None:
    assert auroc([0.2, 0.9], [True, True]) is None


def test_auroc_matches_the_pairwise_definition_on_random_data() -> None:
    rng = random.Random(7)
    scores = [round(rng.random(), 2) for _ in range(300)]  # rounded: many ties
    correct = [rng.random() < s for s in scores]
    pos = [s for s, c in zip(scores, correct, strict=True) if c]
    neg = [s for s, c in zip(scores, correct, strict=True) if not c]
    pairs = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    assert auroc(scores, correct) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_a_calibrated_score_has_zero_ece_and_an_overconfident_one_its_gap() -> None:
    confidences = [0.8] * 10
    assert ece(confidences, [True] * 8 + [False] * 2) == pytest.approx(0.0)
    assert ece(confidences, [True] * 5 + [False] * 5) == pytest.approx(0.3)
    assert ece([1.0] * 4, [False] * 4) == pytest.approx(1.0)


def test_ece_weights_bins_by_their_counts() -> None:
    # bin [0.2, 0.3): 2 items at 0.25, 1 right (gap 0.25); bin [0.9, 1.0]: 6 at 0.95, all right
    # (gap 0.05): (2 * 0.25 + 6 * 0.05) / 8 = 0.1
    confidences = [0.25, 0.25] + [0.95] * 6
    correct = [True, False] + [True] * 6
    assert ece(confidences, correct) == pytest.approx(0.1)
    table = reliability(confidences, correct)
    assert [(b.low, b.count) for b in table if b.count] == [(0.2, 2), (0.9, 6)]
    assert table[9].high == 1.0  # 1.0 itself lands in the last bin


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [(8, 10, 0.4902, 0.9433), (30, 30, 0.8865, 1.0), (0, 20, 0.0, 0.1611), (0, 0, 0.0, 1.0)],
)
def test_wilson_interval_known_values(successes: int, n: int, low: float, high: float) -> None:
    got = wilson(successes, n)
    assert got == pytest.approx((low, high), abs=5e-4)


def synthetic() -> tuple[list[float], list[bool]]:
    """From 0.7 up every answer is right, below every one is wrong. 95 % precision allows 5
    wrong items per 100 right: the lane may reach down to the 5th-highest wrong one,
    0.1 + 0.006 * 95 = 0.67 (105 items, 100 right)."""
    confidences = [0.7 + 0.003 * i for i in range(100)] + [0.1 + 0.006 * i for i in range(100)]
    correct = [True] * 100 + [False] * 100
    return confidences, correct


def test_the_threshold_search_finds_the_lowest_threshold_that_reaches_the_target() -> None:
    confidences, correct = synthetic()
    lane = threshold_for_precision(confidences, correct, 0.95, use_lower_bound=False)
    assert lane is not None
    assert lane.threshold == pytest.approx(0.67)
    assert (lane.auto, lane.right, lane.auto_rate) == (105, 100, 0.525)
    assert lane.precision == pytest.approx(100 / 105)
    strict = threshold_for_precision(confidences, correct, 0.95)  # the interval's lower end
    assert strict is not None
    assert strict.interval[0] >= 0.95 > lane.interval[0]
    assert strict.threshold > lane.threshold  # proving 95 % costs auto rate


def test_with_the_lower_bound_a_small_perfect_lane_is_not_enough() -> None:
    confidences = [0.99, 0.98, 0.97, 0.5, 0.4]
    correct = [True, True, True, False, True]
    assert threshold_for_precision(confidences, correct, 0.9, use_lower_bound=False) is not None
    assert threshold_for_precision(confidences, correct, 0.9) is None  # 3/3 proves only 0.44


def test_an_unreachable_target_gives_none_and_bad_input_is_refused() -> None:
    assert threshold_for_precision([0.9, 0.8], [False, False], 0.5, use_lower_bound=False) is None
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        auto_lane([1.5], [True], 0.5)
    with pytest.raises(ValueError, match="outcomes"):
        auto_lane([0.5, 0.6], [True], 0.5)
    assert math.isclose(auto_lane([0.9, 0.2], [True, False], 0.5).auto_rate, 0.5)


def test_a_lane_exactly_at_the_target_counts() -> None:
    lane = threshold_for_precision([0.9, 0.8, 0.1], [True, False, False], 0.5,
                                   use_lower_bound=False)  # fmt: skip
    assert lane is not None
    assert (lane.threshold, lane.auto, lane.precision) == (0.8, 2, 0.5)
