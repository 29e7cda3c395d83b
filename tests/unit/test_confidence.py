"""Confidence arithmetic: label renormalisation, value probability, and the combined score."""

import math

import pytest

from agents.confidence import (
    ISSUES_FACTOR,
    LOGPROB_WEIGHT,
    REASK_FACTOR,
    TokenProb,
    combine,
    label_probability,
    value_probability,
)

LABELS = ("billing", "technical", "account", "shipping", "other")


def toks(*pieces: tuple[str, float, tuple[tuple[str, float], ...]]) -> list[TokenProb]:
    return [TokenProb(t, lp, top) for t, lp, top in pieces]


def test_label_probability_renormalises_over_the_labels() -> None:
    ln = math.log
    tokens = toks(
        ('{"category": "', ln(0.99), ()),
        (
            "bill",
            ln(0.6),
            (("bill", ln(0.6)), ("tech", ln(0.2)), ("ship", ln(0.1)), (" ", ln(0.1))),
        ),
        ('ing"}', ln(0.99), ()),
    )
    p = label_probability(tokens, "category", "billing", LABELS)
    # The 0.1 on a space is not a label: 0.6 / (0.6 + 0.2 + 0.1), not 0.6.
    assert p == pytest.approx(0.6 / 0.9)
    assert label_probability(tokens, "category", "technical", LABELS) == pytest.approx(0.2 / 0.9)


def test_quote_inside_the_token_and_fenced_output() -> None:
    ln = math.log
    tokens = toks(
        ("```json\n", ln(0.5), ()),
        ('{"priority":', ln(0.9), ()),
        (' "h', ln(0.7), ((' "h', ln(0.7)), (' "l', ln(0.3)))),
        ('igh"}', ln(0.9), ()),
    )
    labels = ("low", "medium", "high", "urgent")
    assert label_probability(tokens, "priority", "high", labels) == pytest.approx(0.7)


def test_no_logprobs_or_no_field_gives_none() -> None:
    assert label_probability([], "category", "billing", LABELS) is None
    tokens = toks(('{"x": "billing"}', -0.1, ()))
    assert label_probability(tokens, "category", "billing", LABELS) is None


def test_value_probability_is_the_geometric_mean_of_the_value_tokens() -> None:
    ln = math.log
    tokens = toks(
        ('{"total": ', ln(0.9), ()), ("14", ln(0.5), ()), ("8.75", ln(0.8), ()), ("}", 0.0, ())
    )
    assert value_probability(tokens, "total") == pytest.approx(math.sqrt(0.5 * 0.8))


def test_combine_weights_and_penalties() -> None:
    c = combine(0.5, 0.9, reasks=0)
    assert c.score == pytest.approx(LOGPROB_WEIGHT * 0.9 + (1 - LOGPROB_WEIGHT) * 0.5)
    assert (c.self_rated, c.logprob, c.validation) == (0.5, 0.9, 1.0)
    assert combine(0.8, None, reasks=0).score == pytest.approx(0.8)
    assert combine(0.8, None, reasks=2).score == pytest.approx(0.8 * REASK_FACTOR**2)
    assert combine(0.8, None, reasks=0, issues=1).score == pytest.approx(0.8 * ISSUES_FACTOR)
    # A model that rates itself 3.0 or NaN cannot push the score out of [0, 1].
    assert combine(3.0, None, reasks=0).score == 1.0
    assert combine(math.nan, None, reasks=0).score == 0.0
