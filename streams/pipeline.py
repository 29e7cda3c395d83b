"""The one linear core per event: decode → agent → validate → encode → route.

``handle`` never raises (except cancellation): at the stream edge every error becomes data, an
:class:`Outcome` routed to the dead-letter lane with its reason. That is what lets the worker ack
each message only once it is accounted for, and keep running after poison input.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import structlog

from agents.triage import TicketTriageAgent
from schemas.codec import Codec
from schemas.events import TicketReceived, parse_event, peek_event_id
from schemas.records import AgentInfo, Lane, Route, Source, TicketTriaged, Usage
from streams import deadletter
from streams.meta import Meta
from streams.router import route
from streams.settings import Settings

log = structlog.get_logger(__name__)

#: Headers copied from input to output so one trace follows an event through every topic.
PROPAGATED_HEADERS = ("traceparent", "tracestate")


@dataclass(frozen=True)
class Outcome:
    """Exactly one record to write for one input event."""

    lane: Lane
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    reason: str


class TicketPipeline:
    flow = "tickets"

    def __init__(
        self, agent: TicketTriageAgent, settings: Settings, codec: Codec | None = None
    ) -> None:
        self.agent = agent
        self.codec = codec or Codec()
        self.threshold = settings.auto_threshold
        self.topics = settings.topics

    async def handle(self, meta: Meta) -> Outcome:
        event_id = peek_event_id(meta.value) or meta.derived_event_id()
        try:
            ticket = parse_event(meta.value, TicketReceived)
            triage = await self.agent.triage(ticket)
            decision = route(triage.confidence, self.threshold)
            c = triage.completion
            record = TicketTriaged(
                event_id=event_id,
                ticket_id=ticket.ticket_id,
                category=triage.answer.category,
                priority=triage.answer.priority,
                summary=triage.answer.summary,
                confidence=triage.confidence,
                agent=AgentInfo(
                    name=self.agent.name,
                    version=self.agent.version,
                    model=triage.model,
                    prompt_version=triage.prompt_version,
                ),
                route=Route(lane=decision.lane, reason=decision.reason, threshold=self.threshold),
                usage=Usage(
                    attempts=c.attempts,
                    prompt_tokens=c.prompt_tokens,
                    completion_tokens=c.completion_tokens,
                    latency_ms=c.latency_ms,
                ),
                source=Source(topic=meta.topic, partition=meta.partition, offset=meta.offset),
                received_at=meta.timestamp or datetime.now(UTC),
                processed_at=datetime.now(UTC),
            )
            topic = (
                self.topics.tickets_auto if decision.lane == "auto" else self.topics.tickets_review
            )
            return self._outcome(
                decision.lane, topic, meta, self.codec.encode(record), event_id, decision.reason
            )
        except Exception as exc:  # errors become data; CancelledError is BaseException and passes
            dl = deadletter.dead_letter(
                exc, meta, event_id=event_id, flow=self.flow, attempts=getattr(exc, "attempts", 0)
            )
            log.warning(
                "event.deadlettered", event_id=event_id, reason=dl.reason, error=dl.error_message
            )
            return self._outcome(
                "deadletter",
                self.topics.deadletter,
                meta,
                self.codec.encode(dl),
                event_id,
                f"{dl.reason}: {dl.error_message}",
                extra_headers=deadletter.headers(dl),
            )

    @staticmethod
    def _outcome(
        lane: Lane,
        topic: str,
        meta: Meta,
        value: bytes,
        event_id: str,
        reason: str,
        extra_headers: list[tuple[str, bytes]] | None = None,
    ) -> Outcome:
        headers = [(k, v) for k, v in meta.headers if k in PROPAGATED_HEADERS]
        headers += [
            ("sluice.event_id", event_id.encode()),
            ("sluice.lane", lane.encode()),
            ("sluice.reason", reason[:1000].encode()),
        ]
        headers += extra_headers or []
        return Outcome(
            lane=lane,
            topic=topic,
            key=meta.key or event_id.encode(),
            value=value,
            headers=headers,
            event_id=event_id,
            reason=reason,
        )
