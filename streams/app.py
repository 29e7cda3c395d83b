"""The faust app and its workers: thin shells around :mod:`streams.pipeline`.

Each worker binds log context, calls ``handle`` (which never raises) and writes the one outcome
through :class:`~streams.emit.Emitter`, waiting for the broker's ack before the message is
acknowledged. Processing is at-least-once; faust's ``exactly_once`` has open duplicate and
transaction bugs, so effects get their exactly-once from idempotency keys instead.

faust acknowledges a message when the worker's body raises (FIELD-NOTES): an exception that left
this shell would lose the event. So the shell itself is guarded too: anything that escapes
``handle`` or ``emit`` is a strike against the offset (exit before the ack, or after
``max_strikes`` a minimal dead letter), never a silent ack.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import faust
import structlog

from agents.observe import EventRouted, EventScope, event_scope, notify
from schemas.codec import Codec
from streams import metrics, tracing
from streams.breaker import Breaker
from streams.compose import breaker_for, endpoint_breaker_name
from streams.emit import Emitter, Strikes, die
from streams.engine import Engine
from streams.flow import Flow
from streams.meta import Meta
from streams.outcome import Outcome
from streams.pipeline import Pipeline
from streams.policy import routing_policy
from streams.settings import Settings

log = structlog.get_logger(__name__)


def _headers(raw: Any) -> tuple[tuple[str, bytes], ...]:
    items = raw.items() if isinstance(raw, dict) else (raw or [])
    return tuple(
        (str(k), v if isinstance(v, bytes) else b"" if v is None else str(v).encode())
        for k, v in items
    )


def _timestamp(seconds: float | None) -> datetime | None:
    """The producer's timestamp, or None when it is absent or not a representable date (a
    producer may set any 64-bit value; that must not crash the worker)."""
    if not seconds or seconds < 0:
        return None
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def meta_of(event: Any) -> Meta:
    """Our view of a faust event; total: any message a broker can hold gives a Meta."""
    msg = event.message
    return Meta(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp=_timestamp(msg.timestamp),
        key=event.key,
        value=event.value,
        headers=_headers(event.headers),
    )


def faust_app(settings: Settings, app_id: str) -> faust.App:
    """A faust app (consumer group ``app_id``) with every size and timeout from ``settings``."""
    return faust.App(
        app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",")],
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",  # business state lives in Kafka and Redis, never in faust tables
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # One size setting end to end: what we may write, we can also read back.
        consumer_max_fetch_size=settings.max_message_bytes,
        producer_max_request_size=settings.max_message_bytes,
        producer_request_timeout=settings.producer_timeout_s,
        # Fail-over: a dead worker's partitions move after session_timeout_s (faust: 60 s).
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
    )


def new_engine(settings: Settings) -> Engine[Any]:
    """The engine with the worker's in-flight bounds (one per process, shared by its flows)."""
    return Engine(
        max_in_flight=settings.max_in_flight,
        max_unacked=settings.max_unacked or 8 * settings.max_in_flight,
        order_by_key=settings.order_by_key,
        die=die,
    )


def sender(app: faust.App) -> Callable[[Outcome], Awaitable[None]]:
    """Writes one outcome with ``app``'s producer and waits for the broker's ack."""

    async def send(outcome: Outcome) -> None:
        # Straight to the app's producer, before the input is acked. (faust's Topic.send adds a
        # FutureMessage, a buffer and a flush loop per record: measurable CPU at hundreds of
        # events/s, and nothing we use.)
        await app.producer.send_and_wait(
            outcome.topic, outcome.key, outcome.value, None, None, outcome.headers
        )

    return send


def breakers_of(settings: Settings, flows: list[Flow[Any, Any]]) -> dict[str, list[Breaker]]:
    """Per flow, the circuit breakers its calls go through: its own and its LLM endpoint's. Flows
    on one endpoint share one instance of its breaker (one local view, one batch of outcomes per
    process). None with ``SLUICE_BREAKER=off``."""
    if settings.breaker == "off":
        return {flow.name: [] for flow in flows}
    built: dict[str, Breaker] = {}

    def breaker(name: str) -> Breaker:
        if name not in built:
            built[name] = breaker_for(settings, name)
        return built[name]

    return {
        f.name: [breaker(f.name), breaker(endpoint_breaker_name(f.endpoint, settings))]
        for f in flows
    }


@contextlib.contextmanager
def observing(stage: str, flow: str, meta: Meta) -> Iterator[tuple[EventScope, Meta]]:
    """One event's observation in ``stage``: its span (a child of the record's traceparent), its
    :class:`~agents.observe.EventScope`, and its trace id in every log line. Yields the scope
    and ``meta`` with this span's traceparent, which every record written for it carries on."""
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": meta.topic,
        "messaging.destination.partition.id": str(meta.partition),
        "messaging.kafka.offset": meta.offset,
        "sluice.flow": flow,
    }
    carried = tracing.traceparent_of(meta.headers)
    # The event id only matters to mint a traceparent for an event that came without one.
    event_id = meta.derived_event_id() if carried is None else None
    with tracing.stage_span(f"process {meta.topic}", carried, event_id, attributes) as traceparent:
        found = tracing.parse(traceparent)
        trace_id = found[0] if found else None
        if traceparent is not None and traceparent != carried:  # ours, or a minted one
            meta = replace(meta, headers=tracing.with_traceparent(meta.headers, traceparent))
        with (
            structlog.contextvars.bound_contextvars(trace_id=trace_id),
            event_scope(stage, flow, trace_id) as scope,
        ):
            yield scope, meta


def routed(scope: EventScope, written: Outcome, meta: Meta) -> None:
    """Report where the event ended (``event.routed``) and its summary (``event.summary``)."""
    confidence = scope.confidence
    notify(
        EventRouted(
            flow=scope.flow, event_id=written.event_id, lane=written.lane,
            reason=written.reason[:300],
            confidence=getattr(confidence, "score", None),
            self_rated=getattr(confidence, "self_rated", None),
            logprob=getattr(confidence, "logprob", None),
            validation=getattr(confidence, "validation", None),
            threshold=scope.threshold, copies=len(written.copies),
        )
    )  # fmt: skip
    tracing.set_attributes(
        {"sluice.event_id": written.event_id, "sluice.lane": written.lane,
         "sluice.confidence": getattr(confidence, "score", None)}
    )  # fmt: skip
    if written.lane == "deadletter":
        tracing.mark_error("deadletter", written.reason)
    received = meta.timestamp.timestamp() if meta.timestamp else None
    notify(scope.summary(written.event_id, written.lane, written.reason, received_at=received))


def create_app(
    settings: Settings, flows: list[Flow[Any, Any]], codec: Codec | None = None
) -> faust.App:
    """The faust app running ``flows``, one faust agent each, many events in flight in all.

    Every size and timeout comes from ``settings``; ``codec`` defaults to single-object Avro.
    """
    codec = codec or Codec()
    policy = routing_policy(settings, flows)
    breakers = breakers_of(settings, flows)
    pipelines = [
        Pipeline(flow, settings, codec, policy.of(flow.name), breakers[flow.name]) for flow in flows
    ]
    app = faust_app(settings, settings.app_id)
    engine = new_engine(settings)
    metrics.track_in_flight("worker", lambda: engine.in_flight)
    metrics.track_breakers(b for bs in breakers.values() for b in bs)
    send = sender(app)
    emitter = Emitter(
        send=send,
        strikes=Strikes(settings.redis_url, settings.app_id),
        codec=codec,
        deadletter_topic=settings.topics.deadletter,
        timeout_s=settings.producer_timeout_s + 5,
        max_strikes=settings.max_strikes,
    )

    async def process(pipeline: Pipeline, meta: Meta) -> None:
        with (
            structlog.contextvars.bound_contextvars(
                flow=pipeline.flow, topic=meta.topic, partition=meta.partition, offset=meta.offset
            ),
            observing("worker", pipeline.flow, meta) as (scope, meta),
        ):
            try:
                outcome = await pipeline.handle(meta)
                with scope.timed("emit"):
                    written = await emitter.emit(outcome, meta, pipeline.flow)
            except Exception as exc:  # a bug outside handle's guard: never a silent ack
                log.critical("worker.unguarded_error", exc_info=True)
                written = await emitter.strike(meta, pipeline.flow, exc)
            routed(scope, written, meta)

    async def run(pipeline: Pipeline, stream: Any) -> None:
        # Manual acks: the engine acks an event only once it and every earlier event of its
        # partition are written (never faust's concurrency=N, whose commits skip a head: #606).
        await engine.run(
            stream.noack().events(),
            lambda event: process(pipeline, meta_of(event)),
            stream.ack,
            partition_of=lambda event: event.message.tp,
            key_of=lambda event: event.key,
        )

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        # Called as receiver(app, revoked, signal=...). faust has drained in-flight events by
        # now (stream_wait_empty); anything left for a revoked partition is cancelled and never
        # acked into the next owner's offsets.
        engine.revoke(args[0] if args else ())

    for pipeline in pipelines:
        source = app.topic(settings.topics.of(pipeline.flow, "received"))

        async def agent(stream: Any, pipeline: Pipeline = pipeline) -> None:
            await run(pipeline, stream)

        app.agent(source, name=pipeline.flow)(agent)

    return app
