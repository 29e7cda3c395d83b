import math

import pytest

from streams.router import route


@pytest.mark.parametrize(
    ("confidence", "threshold", "lane"),
    [
        (0.95, 0.8, "auto"),
        (0.8, 0.8, "auto"),  # at the threshold counts as clearing it
        (0.7999, 0.8, "review"),
        (0.0, 0.8, "review"),
        (1.0, 1.0, "auto"),
        (0.5, 0.0, "auto"),
        (math.nan, 0.8, "review"),  # a broken score never auto-executes
        (1.5, 0.8, "review"),
        (-0.1, 0.0, "review"),
    ],
)
def test_route_table(confidence: float, threshold: float, lane: str) -> None:
    decision = route(confidence, threshold)
    assert decision.lane == lane
    assert decision.reason  # every decision says why


def test_reason_names_the_numbers() -> None:
    assert route(0.42, 0.8).reason == "confidence 0.420 < threshold 0.800"


def test_issues_and_requires_human_override_confidence() -> None:
    issues = route(0.99, 0.8, issues=["total 110.00 != subtotal 90.00 + tax 10.00"])
    assert issues.lane == "review"
    assert "total 110.00" in issues.reason
    human = route(0.99, 0.8, requires_human=True)
    assert human.lane == "review"
    assert "person" in human.reason
    assert route(0.99, 0.8, requires_human=False, issues=[]).lane == "auto"
