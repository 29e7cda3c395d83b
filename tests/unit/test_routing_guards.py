"""The platform's own reasons for review, which neither a flow's router nor a policy file can drop
(issue 21, B7): money above ``SLUICE_REVIEW_AMOUNT`` or going back, and a score that is the
model's self-rating alone. Plus the default router's ``requires_human``, guarded without Kafka.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from pydantic import BaseModel

from agents.base import AgentResult
from agents.confidence import METHOD, combine
from schemas.envelope import ResultRecord
from schemas.events import TicketReceived
from schemas.records import Confidence, Usage
from streams.flow import (
    Envelope,
    Flow,
    FlowSpec,
    register_flow,
    route_by_confidence,
    unregister_flow,
)
from streams.meta import Meta
from streams.pipeline import Pipeline
from streams.policy import FlowPolicy, amount_cautions
from streams.settings import Settings

FLOW = "guarded-money"
SELF_RATED = combine(0.95, None, reasks=0)  # what an agent gets with logprobs off
MEASURED = combine(0.95, 0.97, reasks=0)
CALIBRATED = SELF_RATED.model_copy(
    update={"score": 0.93, "method": f"calibrated invoices.v9 v1 (logistic) over {METHOD}"}
)


class Priced(ResultRecord):
    total: Decimal


class Agent:
    name, version = "money-agent", "0"

    def __init__(self, confidence: Confidence) -> None:
        self.confidence = confidence

    async def run(self, event: TicketReceived) -> AgentResult[Decimal]:
        usage = Usage(attempts=1, prompt_tokens=1, completion_tokens=1, latency_ms=1)
        total = Decimal(event.subject or "0")
        return AgentResult(total, self.confidence, usage, "m", "p.v1")


def record(event: TicketReceived, result: AgentResult[Decimal], envelope: Envelope) -> Priced:
    return Priced(**envelope, total=result.answer)


@pytest.fixture(autouse=True)
def spec() -> Iterator[FlowSpec]:
    """A user's flow that says which money its records move (``FlowSpec.amount``)."""
    yield register_flow(
        FlowSpec(FLOW, lambda rt: Flow(FLOW, TicketReceived, Agent(MEASURED), record),
                 amount=lambda r: r.total)
    )  # fmt: skip
    unregister_flow(FLOW)


async def routed(
    total: str, confidence: Confidence, policy: FlowPolicy | None = None, **settings: Any
) -> tuple[Any, Any]:
    flow = Flow(FLOW, TicketReceived, Agent(confidence), record)
    pipeline = Pipeline(flow, Settings(**settings), policy=policy)
    value = f'{{"ticket_id": "T-1", "subject": "{total}"}}'.encode()
    meta = Meta(f"{FLOW}.received", 0, 1, datetime(2026, 1, 1, tzinfo=UTC), b"k", value)
    return await pipeline.result(meta, "ev-1")


@pytest.mark.parametrize(
    ("total", "confidence", "lane", "reason_has"),
    [
        ("120.00", MEASURED, "auto", ">= threshold"),
        ("120.00", CALIBRATED, "auto", ">= threshold"),
        ("120.00", SELF_RATED, "review", "self-rating alone (no logprobs, no calibration)"),
        ("10000.00", MEASURED, "auto", ">= threshold"),  # SLUICE_REVIEW_AMOUNT, exactly
        ("10000.01", MEASURED, "review", "amount 10000.01 is over the review amount 10000"),
        ("999999999999.99", MEASURED, "review", "over the review amount"),
        ("-250000.00", MEASURED, "review", "is negative: money back runs on a person's decision"),
        ("-5.00", MEASURED, "review", "is negative"),
    ],
)
async def test_money_and_self_rating_go_to_review_without_any_policy_file(
    total: str, confidence: Confidence, lane: str, reason_has: str
) -> None:
    got, decision = await routed(total, confidence)
    assert decision.lane == lane
    assert reason_has in decision.reason
    assert got.route.lane == lane  # the record on the lane says the same, and why
    assert reason_has in got.route.reason


async def test_a_policy_can_only_add_caution_to_the_amount_rule() -> None:
    # A lax policy (threshold 0) cannot let a large amount or a self-rating through.
    lax = FlowPolicy(threshold=0.0)
    assert (await routed("50000", MEASURED, lax))[1].lane == "review"
    assert (await routed("50", SELF_RATED, lax))[1].lane == "review"
    assert (await routed("50", MEASURED, lax))[1].lane == "auto"


async def test_the_review_amount_is_a_setting() -> None:
    assert (await routed("50000", MEASURED, review_amount=Decimal(60000)))[1].lane == "auto"


async def test_a_review_decision_keeps_its_reason_and_gains_the_amount() -> None:
    low = combine(0.5, 0.5, reasks=0)
    _, decision = await routed("20000", low)
    assert decision.lane == "review"
    assert "< threshold" in decision.reason
    assert "over the review amount" in decision.reason


def test_amount_cautions_table() -> None:
    limit = Decimal(10000)
    assert amount_cautions(None, limit) == []
    assert amount_cautions(Decimal("10000.00"), limit) == []
    assert amount_cautions(Decimal("-10000.00"), limit) != []  # negative
    assert len(amount_cautions(Decimal("-10000.01"), limit)) == 2  # over and negative
    assert amount_cautions(Decimal("NaN"), limit) == ["amount NaN is not a number"]


class _Result(BaseModel):
    pass


@pytest.mark.parametrize("score", [0.99, 1.0])
def test_the_default_router_never_drops_requires_human(score: float) -> None:
    confidence = combine(score, score, reasks=0)
    usage = Usage(attempts=1, prompt_tokens=1, completion_tokens=1, latency_ms=1)
    human: AgentResult[_Result] = AgentResult(
        _Result(), confidence, usage, "m", "p", requires_human=True
    )
    decision = route_by_confidence(human, 0.8)
    assert decision.lane == "review"
    assert "person must handle it" in decision.reason
    alone: AgentResult[_Result] = AgentResult(_Result(), confidence, usage, "m", "p")
    assert route_by_confidence(alone, 0.8).lane == "auto"
