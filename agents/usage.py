"""Token accounting for one event: every call, failed ones included, a cost, and a budget.

The ledger is what makes "no loop can run unbounded" checkable: before each call it projects the
call's worst case (prompt estimate + ``max_tokens``) against the event's budget and refuses the call
if it could overshoot; after each call it books what the provider reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from decimal import Decimal

from schemas.errors import BudgetExceeded
from schemas.records import AttemptOutcome, AttemptUsage, Usage

MILLION = Decimal(1_000_000)
#: Costs are kept to a millionth of a dollar.
MICRO_USD = Decimal("0.000001")


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens."""

    prompt: Decimal
    completion: Decimal


#: List prices per million tokens when this table was written (2026); override them with
#: ``SLUICE_LLM_PRICES`` — prices change and contracts differ. A model missing here costs ``null``,
#: never a guess.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(Decimal("0.15"), Decimal("0.60")),
    "gpt-4o": Price(Decimal("2.50"), Decimal("10.00")),
    "gpt-4.1": Price(Decimal("2.00"), Decimal("8.00")),
    "gpt-4.1-mini": Price(Decimal("0.40"), Decimal("1.60")),
    "gpt-4.1-nano": Price(Decimal("0.10"), Decimal("0.40")),
    "local": Price(Decimal(0), Decimal(0)),
}


def parse_prices(text: str | None) -> dict[str, Price]:
    """``{"model": [prompt_per_mtok, completion_per_mtok], ...}`` merged over the defaults."""
    prices = dict(DEFAULT_PRICES)
    if text:
        for model, pair in json.loads(text).items():
            prices[model] = Price(Decimal(str(pair[0])), Decimal(str(pair[1])))
    return prices


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """A deliberately high estimate of a prompt's tokens before the provider counts them.

    Three characters per token over-counts English for every tokenizer we use, so a budget check
    based on it errs on the side of refusing a call, never of overshooting.
    """
    return sum(len(m.get("content") or "") for m in messages) // 3 + 8 * len(messages)


@dataclass
class Ledger:
    """Everything one event's LLM step has spent so far."""

    model: str
    prices: dict[str, Price]
    budget: int | None = None
    started: float = field(default_factory=time.monotonic)
    entries: list[AttemptUsage] = field(default_factory=list)

    @property
    def prompt_tokens(self) -> int:
        return sum(e.prompt_tokens for e in self.entries)

    @property
    def completion_tokens(self) -> int:
        return sum(e.completion_tokens for e in self.entries)

    @property
    def spent(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def record(
        self, outcome: AttemptOutcome, prompt_tokens: int, completion_tokens: int, latency_ms: int
    ) -> None:
        self.entries.append(
            AttemptUsage(
                attempt=len(self.entries) + 1,
                outcome=outcome,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                latency_ms=latency_ms,
            )
        )

    def allows(self, projected: int) -> bool:
        """Whether a call whose worst case is ``projected`` tokens stays within the budget."""
        return self.budget is None or self.spent + projected <= self.budget

    def check_before_call(self, projected: int) -> None:
        """Refuse a call whose worst case would take the event past its budget."""
        if not self.allows(projected):
            raise BudgetExceeded(
                f"token budget {self.budget}: {self.spent} spent, the next call could take up to "
                f"{projected} more",
                usage=self.usage(),
            )

    def check_after_call(self) -> None:
        if self.budget is not None and self.spent > self.budget:
            raise BudgetExceeded(
                f"token budget {self.budget} exceeded: {self.spent} spent", usage=self.usage()
            )

    def cost(self) -> Decimal | None:
        price = self.prices.get(self.model)
        if price is None:
            return None
        total = (
            price.prompt * self.prompt_tokens + price.completion * self.completion_tokens
        ) / MILLION
        return total.quantize(MICRO_USD)

    def usage(self) -> Usage:
        return Usage(
            attempts=len(self.entries),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=int((time.monotonic() - self.started) * 1000),
            per_attempt=list(self.entries),
            cost_usd=self.cost(),
            token_budget=self.budget,
        )
