"""How good a confidence score is, from (confidence, was the answer right) pairs.

The router sends a result to the auto lane when its confidence reaches a threshold, so the
questions an eval must answer are about that score, not only about accuracy:

- **discrimination** — does a higher score mean "more likely right"? :func:`auroc` (0.5: the
  score says nothing; 1.0: every right answer outranks every wrong one);
- **calibration** — does 0.8 mean right 80 % of the time? :func:`reliability` and :func:`ece`;
- **the lane** — at a threshold, what share goes to auto and how precise is it, with an interval
  (:func:`auto_lane`, :func:`wilson`); and which threshold reaches a target precision
  (:func:`threshold_for_precision`), so the threshold is chosen from data, not by feel.

Pure Python on purpose: eval sets are hundreds to thousands of items, and these are a few sorts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054


def _check(confidences: Sequence[float], correct: Sequence[bool]) -> None:
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences for {len(correct)} outcomes")
    if any(not 0.0 <= c <= 1.0 or math.isnan(c) for c in confidences):
        raise ValueError("confidences must be in [0, 1]")


def auroc(scores: Sequence[float], correct: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for telling right answers from wrong ones: the
    probability that a random right answer scores higher than a random wrong one (ties count
    half). None when all answers are right or all wrong: there is nothing to tell apart."""
    if len(scores) != len(correct):
        raise ValueError(f"{len(scores)} scores for {len(correct)} outcomes")
    positives = sum(1 for c in correct if c)
    negatives = len(correct) - positives
    if positives == 0 or negatives == 0:
        return None
    # Mann-Whitney U from average ranks (ties share the mean of their ranks).
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, c in zip(ranks, correct, strict=True) if c)
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


@dataclass(frozen=True)
class Bin:
    """One bin of a reliability diagram: the items whose confidence falls in ``[low, high)``."""

    low: float
    high: float
    count: int
    confidence: float
    """Mean confidence of the bin's items (0 when empty)."""
    accuracy: float
    """Share of the bin's items that were right (0 when empty)."""


def reliability(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> list[Bin]:
    """Equal-width bins over [0, 1] (the last one closed): what a reliability diagram plots."""
    _check(confidences, correct)
    if bins < 1:
        raise ValueError("bins must be >= 1")
    members: list[list[int]] = [[] for _ in range(bins)]
    for i, c in enumerate(confidences):
        members[min(int(c * bins), bins - 1)].append(i)
    out = []
    for b, idx in enumerate(members):
        n = len(idx)
        out.append(
            Bin(
                low=b / bins,
                high=(b + 1) / bins,
                count=n,
                confidence=sum(confidences[i] for i in idx) / n if n else 0.0,
                accuracy=sum(1 for i in idx if correct[i]) / n if n else 0.0,
            )
        )
    return out


def ece(confidences: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    """Expected calibration error: the count-weighted mean of |accuracy − confidence| over the
    :func:`reliability` bins. 0 is perfectly calibrated; 0.1 means the score is off by ten
    points on average."""
    table = reliability(confidences, correct, bins)
    total = sum(b.count for b in table)
    if total == 0:
        return 0.0
    return sum(b.count * abs(b.accuracy - b.confidence) for b in table) / total


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest at small n and at 0 % or 100 % (where the
    normal approximation collapses to a zero-width interval). ``(0, 1)`` when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Lane:
    """The auto lane at one threshold."""

    threshold: float
    n: int
    """Items evaluated."""
    auto: int
    """Items at or above the threshold."""
    right: int
    """Of those, the right ones."""

    @property
    def auto_rate(self) -> float:
        return self.auto / self.n if self.n else 0.0

    @property
    def precision(self) -> float | None:
        """Share of the auto lane that was right; None when nothing reached the threshold."""
        return self.right / self.auto if self.auto else None

    @property
    def interval(self) -> tuple[float, float]:
        """95 % Wilson interval of :attr:`precision`."""
        return wilson(self.right, self.auto)


def auto_lane(confidences: Sequence[float], correct: Sequence[bool], threshold: float) -> Lane:
    """What the router would send to auto at ``threshold`` (confidence >= threshold)."""
    _check(confidences, correct)
    chosen = [ok for c, ok in zip(confidences, correct, strict=True) if c >= threshold]
    return Lane(threshold, len(confidences), len(chosen), sum(1 for ok in chosen if ok))


def threshold_for_precision(
    confidences: Sequence[float], correct: Sequence[bool], target: float, *,
    use_lower_bound: bool = True, min_auto: int = 1,
) -> Lane | None:  # fmt: skip
    """The lowest threshold whose auto lane reaches ``target`` precision — the one that sends
    the most to auto — or None if none does.

    With ``use_lower_bound`` (the default) the *lower end of the 95 % interval* must reach the
    target, not the point estimate: on 30 items, 30 right is 100 % but only proves ≥ 88.6 %.
    Candidate thresholds are the observed confidences; ``min_auto`` refuses lanes too small to
    mean anything.
    """
    _check(confidences, correct)
    if not 0.0 < target <= 1.0:
        raise ValueError("target precision must be in (0, 1]")
    best: Lane | None = None
    for threshold in sorted(set(confidences), reverse=True):  # the lane grows as t falls
        lane = auto_lane(confidences, correct, threshold)
        if lane.auto < min_auto or lane.precision is None:
            continue
        measure = lane.interval[0] if use_lower_bound else lane.precision
        if measure >= target:
            best = lane
    return best
