"""Token accounting: every attempt booked, cost from the price table, the budget enforced."""

from decimal import Decimal

import pytest

from agents.usage import DEFAULT_PRICES, Ledger, estimate_tokens, parse_prices
from schemas.errors import BudgetExceeded


def test_every_attempt_is_booked_and_summed() -> None:
    ledger = Ledger("gpt-4o-mini", DEFAULT_PRICES)
    ledger.record("rate_limited", 0, 0, 5)
    ledger.record("schema_invalid", 1000, 200, 800)
    ledger.record("ok", 1300, 180, 700)
    usage = ledger.usage()
    assert usage.attempts == 3
    assert (usage.prompt_tokens, usage.completion_tokens) == (2300, 380)
    assert [a.outcome for a in usage.per_attempt] == ["rate_limited", "schema_invalid", "ok"]
    assert [a.attempt for a in usage.per_attempt] == [1, 2, 3]
    # 2300 x 0.15 / 1M + 380 x 0.60 / 1M
    assert usage.cost_usd == Decimal("0.000573")


def test_unknown_model_has_no_cost_and_prices_are_configurable() -> None:
    assert Ledger("mystery", DEFAULT_PRICES).cost() is None
    prices = parse_prices('{"mystery": [1, 2]}')
    ledger = Ledger("mystery", prices)
    ledger.record("ok", 1_000_000, 500_000, 1)
    assert ledger.cost() == Decimal("2.000000")
    assert prices["gpt-4o-mini"] == DEFAULT_PRICES["gpt-4o-mini"]


def test_budget_refuses_a_call_that_could_overshoot() -> None:
    ledger = Ledger("local", DEFAULT_PRICES, budget=1000)
    ledger.check_before_call(900)  # fits
    ledger.record("schema_invalid", 600, 100, 1)
    with pytest.raises(BudgetExceeded) as err:
        ledger.check_before_call(301)
    assert err.value.usage is not None
    assert err.value.usage.prompt_tokens == 600
    assert err.value.usage.token_budget == 1000
    assert err.value.reason == "token_budget_exceeded"
    assert err.value.retriable is False
    ledger.check_before_call(300)  # exactly reaches the budget


def test_budget_breach_after_a_call_is_an_error() -> None:
    ledger = Ledger("local", DEFAULT_PRICES, budget=100)
    ledger.record("ok", 90, 20, 1)
    with pytest.raises(BudgetExceeded, match="110 spent"):
        ledger.check_after_call()
    Ledger("local", DEFAULT_PRICES, budget=None).check_before_call(10**9)  # no budget, no limit


def test_estimate_over_counts() -> None:
    messages = [{"role": "user", "content": "x" * 300}]
    assert estimate_tokens(messages) >= 100
