"""The faust app and its workers: thin shells around :mod:`streams.pipeline`.

Each worker binds log context, calls ``handle`` (which never raises) and writes the one outcome,
waiting for the broker's ack before the message is acknowledged. Processing is at-least-once;
faust's ``exactly_once`` has open duplicate and transaction bugs, so effects get their
exactly-once from idempotency keys instead.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import faust
import structlog

from streams.meta import Meta
from streams.pipeline import InvoicePipeline, Outcome, TicketPipeline
from streams.settings import Settings

log = structlog.get_logger(__name__)

#: Exit code when an outcome cannot be written: the process dies *before* the message is
#: committed, so the event is redelivered instead of lost.
EXIT_EMIT_FAILED = 70


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return tuple((str(k), v if isinstance(v, bytes) else str(v).encode()) for k, v in items)


def meta_of(event: Any) -> Meta:
    msg = event.message
    return Meta(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp=datetime.fromtimestamp(msg.timestamp, UTC) if msg.timestamp else None,
        key=event.key,
        value=event.value,
        headers=_headers(event.headers),
    )


def create_app(settings: Settings, tickets: TicketPipeline, invoices: InvoicePipeline) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",  # business state lives in Kafka and Redis, never in faust tables
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    outputs: dict[str, Any] = {}

    async def emit(outcome: Outcome) -> None:
        topic = outputs.get(outcome.topic)
        if topic is None:
            topic = outputs[outcome.topic] = app.topic(outcome.topic)
        try:
            delivery = await topic.send(
                key=outcome.key, value=outcome.value, headers=outcome.headers
            )
            await delivery  # wait for the broker's ack before the input is acked
        except Exception:
            # faust would ack the input if we raised; dying uncommitted means redelivery instead.
            log.critical(
                "emit.failed", topic=outcome.topic, event_id=outcome.event_id, exc_info=True
            )
            os._exit(EXIT_EMIT_FAILED)

    async def run(pipeline: TicketPipeline | InvoicePipeline, stream: Any) -> None:
        async for event in stream.events():
            meta = meta_of(event)
            with structlog.contextvars.bound_contextvars(
                flow=pipeline.flow, topic=meta.topic, partition=meta.partition, offset=meta.offset
            ):
                outcome = await pipeline.handle(meta)
                await emit(outcome)
                log.info(
                    "event.routed",
                    event_id=outcome.event_id,
                    lane=outcome.lane,
                    reason=outcome.reason,
                )

    @app.agent(app.topic(settings.topics.tickets_received), name="tickets")
    async def tickets_worker(stream: Any) -> None:
        await run(tickets, stream)

    @app.agent(app.topic(settings.topics.documents_received), name="invoices")
    async def invoices_worker(stream: Any) -> None:
        await run(invoices, stream)

    return app
