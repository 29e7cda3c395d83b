"""One trace per event across every stage: W3C ``traceparent`` in Kafka headers, and optional
OpenTelemetry spans with the GenAI semantic conventions.

Each stage (worker, review service, executor) reads the ``traceparent`` of the record it
consumes, opens its span as a child of it (:func:`stage_span`) and writes the traceparent *of its
own span* on every record it produces, so one trace runs produce → agent → router → review →
executor. The LLM calls and tool effects of the event are child spans, built from the facts the
LLM layer and the executor report (:class:`TraceObserver`).

**Off by default** (``SLUICE_OTEL=off``): no SDK is installed and nothing is exported, but the
trace context still flows — the incoming traceparent is passed on unchanged, and an event that
arrived without one gets one derived from its event id (the same on every redelivery), flagged
not-sampled. Log lines carry its trace id either way. ``SLUICE_OTEL=otlp`` exports spans over
OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the SDK's own variables apply: headers, timeout,
``OTEL_SERVICE_NAME``); ``console`` prints them (for a look, not for production).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agents.observe import Fact, LLMCall, ToolCall
from agents.redact import scrub

TRACEPARENT = "traceparent"
#: W3C trace context: version (any but ``ff``), trace id, parent span id, flags.
_FORMAT = re.compile(r"^(?!ff)[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER_NAME = "sluice"
_enabled = False


def setup(mode: str, service: str) -> bool:
    """Install the SDK for ``mode`` (``off``, ``otlp`` or ``console``); True if spans export.

    Called once per process at start-up. ``service`` is the default ``service.name``
    (``OTEL_SERVICE_NAME`` wins).
    """
    global _enabled
    if mode == "off":
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    # OTEL_RESOURCE_ATTRIBUTES apply; OTEL_SERVICE_NAME wins over our default name.
    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)
    exporter: SpanExporter
    if mode == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    elif mode == "console":
        exporter = ConsoleSpanExporter()
    else:
        raise ValueError(f"SLUICE_OTEL is off, otlp or console, not {mode!r}")
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def shutdown() -> None:
    """Flush spans still buffered (at exit)."""
    provider = trace.get_tracer_provider()
    flush = getattr(provider, "shutdown", None)
    if _enabled and flush is not None:
        flush()


def parse(traceparent: str | None) -> tuple[str, str, str] | None:
    """``(trace_id, span_id, flags)`` of a valid W3C traceparent, else None."""
    if not traceparent:
        return None
    found = _FORMAT.match(traceparent.strip())  # lowercase hex only, as W3C requires
    if found is None or set(found.group(1)) == {"0"} or set(found.group(2)) == {"0"}:
        return None
    return found.group(1), found.group(2), found.group(3)


def minted(event_id: str) -> str:
    """A traceparent for an event that came without one: derived from its id, so every
    redelivery and every stage agrees on it. Not sampled (flags ``00``)."""
    digest = hashlib.sha256(f"sluice-trace:{event_id}".encode()).hexdigest()
    return f"00-{digest[:32]}-{digest[32:48]}-00"


def traceparent_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The last valid traceparent in Kafka ``headers``."""
    for key, value in reversed(headers):
        if key == TRACEPARENT:
            try:
                text = value.decode("ascii")
            except UnicodeDecodeError:
                return None
            return text if parse(text) else None
    return None


def with_traceparent(
    headers: Sequence[tuple[str, bytes]], traceparent: str
) -> tuple[tuple[str, bytes], ...]:
    """``headers`` with every traceparent replaced by ``traceparent`` (tracestate kept)."""
    kept = tuple((k, v) for k, v in headers if k != TRACEPARENT)
    return (*kept, (TRACEPARENT, traceparent.encode()))


def _parent(traceparent: str | None) -> otel_context.Context | None:
    """The consumed record's trace context, or None to start a new trace."""
    if parse(traceparent) is None:
        return None
    return _PROPAGATOR.extract({TRACEPARENT: traceparent})


@contextlib.contextmanager
def stage_span(
    name: str, traceparent: str | None, event_id: str | None, attributes: dict[str, Any]
) -> Iterator[str | None]:
    """The span of one event in one stage, current for the body; yields the traceparent the
    stage writes on what it produces (its own span's, or the carried one when tracing is off).

    ``traceparent`` is the consumed record's; ``event_id`` mints one when there is none and
    tracing is off. Yields None only when tracing is off and there is no event id.
    """
    if not _enabled:  # no span to open: pass the context on (or mint one), nothing else
        yield traceparent if parse(traceparent) else (minted(event_id) if event_id else None)
        return
    tracer = trace.get_tracer(_TRACER_NAME)
    parent = _parent(traceparent)
    with tracer.start_as_current_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        yield carrier.get(TRACEPARENT)


def set_attributes(attributes: dict[str, Any]) -> None:
    """Add attributes to the current span (a no-op when tracing is off)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def mark_error(kind: str, message: str) -> None:
    """Mark the current span failed with ``kind`` (``error.type``)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("error.type", kind)
        span.set_status(Status(StatusCode.ERROR, scrub(message)[:300]))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class TraceObserver:
    """Turns facts into child spans of the current event's span: one ``chat <model>`` span per
    LLM call with the ``gen_ai.*`` attributes, one ``execute_tool <tool>`` span per effect.

    Facts arrive after the fact, so each span is placed with explicit start and end times.
    Registered only when tracing is on.
    """

    def observe(self, fact: Fact) -> None:
        """Record ``fact`` as a span, if it is one."""
        if isinstance(fact, LLMCall):
            self._llm(fact)
        elif isinstance(fact, ToolCall) and fact.phase != "start":
            self._tool(fact)

    @staticmethod
    def _llm(call: LLMCall) -> None:
        provider = "openai" if call.provider.startswith("openai") else call.provider
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": provider,
            "gen_ai.system": provider,
            "gen_ai.request.model": call.model,
            "gen_ai.response.model": call.model,
            "gen_ai.request.temperature": 0.0,
            "gen_ai.usage.input_tokens": call.prompt_tokens,
            "gen_ai.usage.output_tokens": call.completion_tokens,
            "sluice.llm.attempt": call.attempt,
            "sluice.llm.outcome": call.outcome,
        }
        if call.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = call.max_tokens
        if call.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [call.finish_reason]
        if call.prompt_version:
            attributes["sluice.prompt_version"] = call.prompt_version
        if call.cost_usd is not None:
            attributes["sluice.llm.cost_usd"] = float(call.cost_usd)
        span = trace.get_tracer(_TRACER_NAME).start_span(
            f"chat {call.model}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=_ns(call.started_at),
        )
        if call.error is not None:
            span.set_attribute("error.type", call.outcome)
            span.set_status(Status(StatusCode.ERROR, scrub(call.error)[:300]))
        span.end(end_time=_ns(call.started_at + call.latency_ms / 1000))

    @staticmethod
    def _tool(call: ToolCall) -> None:
        end = time.time()
        start = end - (call.latency_ms or 0) / 1000
        span = trace.get_tracer(_TRACER_NAME).start_span(
            f"execute_tool {call.tool}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.tool,
                "sluice.event_id": call.event_id,
                "sluice.tool.status": call.status or "error",
                "sluice.tool.dedup": call.dedup,
                "sluice.tool.idempotency_key": call.idempotency_key or "",
            },
            start_time=_ns(start),
        )
        if call.phase == "failure":
            span.set_attribute("error.type", call.status or "error")
            span.set_status(Status(StatusCode.ERROR, scrub(call.error or call.status or "")[:300]))
        span.end(end_time=_ns(end))
