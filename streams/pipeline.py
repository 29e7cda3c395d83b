"""The one linear core per event: decode → agent → validate → encode → route.

``handle`` never raises (except cancellation): at the stream edge every error becomes data, an
:class:`Outcome` routed to the dead-letter lane with its reason. That is what lets the worker ack
each message only once it is accounted for, and keep running after poison input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Generic, TypeVar

import structlog
from pydantic import BaseModel

from agents.invoice import CENT, InvoiceExtractionAgent
from agents.triage import TicketTriageAgent
from schemas.codec import Codec
from schemas.events import DocumentReceived, TicketReceived, parse_event, peek_event_id
from schemas.jsonlimits import Limits
from schemas.records import (
    AgentInfo,
    InvoiceExtracted,
    LineItem,
    Route,
    Source,
    TicketTriaged,
    Usage,
)
from streams import deadletter
from streams.meta import Meta
from streams.outcome import Outcome
from streams.router import Decision, route
from streams.settings import Settings

log = structlog.get_logger(__name__)

AgentT = TypeVar("AgentT", TicketTriageAgent, InvoiceExtractionAgent)

class Pipeline(Generic[AgentT]):
    """The shared shape of a flow: parse, run the agent, route, encode — or dead-letter."""

    flow = "flow"

    def __init__(self, agent: AgentT, settings: Settings, codec: Codec | None = None) -> None:
        self.agent: AgentT = agent
        self.codec = codec or Codec()
        self.threshold = settings.auto_threshold
        self.topics = settings.topics
        self.max_message_bytes = settings.max_message_bytes
        self.limits = Limits(max_bytes=settings.max_message_bytes)

    def lane_topic(self, lane: str) -> str:
        raise NotImplementedError

    async def result(self, meta: Meta, event_id: str) -> tuple[BaseModel, Decision]:
        """The result record of one event and its routing decision; raises on any failure."""
        raise NotImplementedError

    async def handle(self, meta: Meta) -> Outcome:
        """The one outcome of ``meta``. Never raises, except ``CancelledError``.

        Every step from raw bytes on is inside the guard, the event-id peek included: an
        exception that escaped here would be acknowledged by faust and the event lost. A
        ``RecursionError``, ``MemoryError`` or a bug of ours becomes a dead letter like any
        other failure (``internal_error`` for exceptions that are not ours).
        """
        event_id = meta.derived_event_id()
        usage: Usage | None = None
        try:
            event_id = peek_event_id(meta.value, self.limits) or event_id
            record, decision = await self.result(meta, event_id)
            usage = getattr(record, "usage", None)
            return Outcome.build(
                decision.lane,
                self.lane_topic(decision.lane),
                meta,
                self.codec.encode(record),
                event_id,
                decision.reason,
                usage=usage,
            )
        except Exception as exc:  # errors become data; CancelledError is BaseException and passes
            return self.dead_letter(exc, meta, event_id, usage)

    def dead_letter(
        self, error: BaseException, meta: Meta, event_id: str, usage: Usage | None = None
    ) -> Outcome:
        """The dead-letter outcome of ``error``; if even that cannot be built, the minimal one."""
        try:
            dl = deadletter.dead_letter(
                error,
                meta,
                event_id=event_id,
                flow=self.flow,
                max_message_bytes=self.max_message_bytes,
                usage=usage,
            )
            value = self.codec.encode(dl)
        except Exception as bug:
            log.critical("deadletter.build_failed", event_id=event_id, exc_info=True)
            dl = deadletter.minimal(
                meta,
                event_id=event_id,
                flow=self.flow,
                reason="internal_error",
                message=f"building the dead letter failed: {type(bug).__name__}",
                error_class=f"{type(error).__module__}.{type(error).__qualname__}",
                usage=usage,
            )
            value = self.codec.encode(dl)
        log.warning(
            "event.deadlettered", event_id=dl.event_id, reason=dl.reason, error=dl.error_message
        )
        return Outcome.build(
            "deadletter",
            self.topics.deadletter,
            meta,
            value,
            dl.event_id,
            f"{dl.reason}: {dl.error_message}",
            extra_headers=deadletter.headers(dl),
            usage=dl.usage,
        )

    def agent_info(self, model: str, prompt: str) -> AgentInfo:
        a = self.agent
        return AgentInfo(name=a.name, version=a.version, model=model, prompt_version=prompt)

    def route_info(self, decision: Decision) -> Route:
        return Route(lane=decision.lane, reason=decision.reason, threshold=self.threshold)


def source_of(meta: Meta) -> Source:
    return Source(topic=meta.topic, partition=meta.partition, offset=meta.offset)


class TicketPipeline(Pipeline[TicketTriageAgent]):
    flow = "tickets"

    def lane_topic(self, lane: str) -> str:
        return self.topics.tickets_auto if lane == "auto" else self.topics.tickets_review

    async def result(self, meta: Meta, event_id: str) -> tuple[BaseModel, Decision]:
        ticket = parse_event(meta.value, TicketReceived, self.limits)
        t = await self.agent.triage(ticket)
        a = t.answer
        decision = route(
            t.confidence.score,
            self.threshold,
            requires_human=a.requires_human,
            issues=t.completion.issues,
        )
        record = TicketTriaged(
            event_id=event_id,
            ticket_id=ticket.ticket_id,
            category=a.category,
            priority=a.priority,
            summary=a.summary,
            confidence=t.confidence.score,
            agent=self.agent_info(t.model, t.prompt_version),
            route=self.route_info(decision),
            usage=t.completion.usage,
            source=source_of(meta),
            received_at=meta.timestamp or datetime.now(UTC),
            processed_at=datetime.now(UTC),
            sentiment=a.sentiment,
            team=a.team,
            requires_human=a.requires_human,
            reasoning=a.reasoning,
            actions=t.actions,
            confidence_detail=t.confidence,
        )
        return record, decision


class InvoicePipeline(Pipeline[InvoiceExtractionAgent]):
    flow = "invoices"

    def lane_topic(self, lane: str) -> str:
        return self.topics.invoices_auto if lane == "auto" else self.topics.invoices_review

    async def result(self, meta: Meta, event_id: str) -> tuple[BaseModel, Decision]:
        event = parse_event(meta.value, DocumentReceived, self.limits)
        x = await self.agent.extract(event)
        a = x.answer
        # x.issues = problems left after re-asks + review flags (e.g. no invoice number printed:
        # invoice_number is None). Either sends the record to review, and both are recorded.
        decision = route(x.confidence.score, self.threshold, issues=x.issues)
        record = InvoiceExtracted(
            event_id=event_id,
            document_id=event.document_id,
            vendor_name=a.vendor_name,
            invoice_number=a.invoice_number,
            issue_date=a.issue_date,
            due_date=a.due_date,
            currency=a.currency.upper(),
            line_items=[
                LineItem(
                    description=i.description,
                    quantity=fit(i.quantity, QUANTITY),
                    unit_price=fit(i.unit_price, CENT),
                    amount=fit(i.amount, CENT),
                )
                for i in a.line_items
            ],
            subtotal=fit(a.subtotal, CENT),
            tax=fit(a.tax, CENT),
            total=fit(a.total, CENT),
            field_confidence=x.field_confidence,
            confidence=x.confidence.score,
            agent=self.agent_info(x.model, x.prompt_version),
            route=self.route_info(decision),
            usage=x.completion.usage,
            source=source_of(meta),
            received_at=meta.timestamp or datetime.now(UTC),
            processed_at=datetime.now(UTC),
            validation_issues=x.issues,
            confidence_detail=x.confidence,
            content_type=x.document.content_type,
        )
        return record, decision


QUANTITY = Decimal("0.001")


def fit(value: Decimal, step: Decimal) -> Decimal:
    """Round to the Avro scale. The agent's schema already bounds amounts below 1e15 (finite),
    so the result fits decimal(18, 2) and decimal(12, 3)."""
    return value.quantize(step, rounding=ROUND_HALF_UP)
