"""The per-event core without a broker: every input becomes one outcome, never an exception."""

from datetime import UTC, datetime

import pytest

from agents.llm import LLMClient, LLMConfig
from agents.triage import TicketTriageAgent
from schemas import codec
from schemas.records import DeadLetter
from streams.meta import Meta
from streams.pipeline import TicketPipeline
from streams.settings import Settings


def pipeline() -> TicketPipeline:
    # The client is never started: any event that reaches the model fails with ProviderError,
    # which is itself a path under test (provider down → dead letter, not a crash).
    llm = LLMClient(LLMConfig(max_attempts=1))
    return TicketPipeline(TicketTriageAgent(llm), Settings(topic_suffix=".unit"))


def meta(value: bytes | None, offset: int = 5, headers: tuple = ()) -> Meta:  # type: ignore[type-arg]
    return Meta(
        topic="tickets.received.unit",
        partition=1,
        offset=offset,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        key=b"T-9",
        value=value,
        headers=headers,
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"not json", "poison_input"),
        (None, "poison_input"),
        (b'{"ticket_id": "T-9"}', "poison_input"),
        (b'{"ticket_id": "T-9", "body": "help"}', "provider_unavailable"),
    ],
)
async def test_failures_become_dead_letters(value: bytes | None, reason: str) -> None:
    outcome = await pipeline().handle(meta(value))
    assert outcome.lane == "deadletter"
    assert outcome.topic == "deadletter.unit"
    record = codec.decode_as(outcome.value, DeadLetter)
    assert record.reason == reason
    assert record.original_value == value  # the original bytes, untouched
    assert record.original_key == b"T-9"
    assert (record.source.topic, record.source.partition, record.source.offset) == (
        "tickets.received.unit",
        1,
        5,
    )
    assert record.error_class.startswith("schemas.errors.")
    assert "Traceback" in record.stacktrace
    headers = dict(outcome.headers)
    assert headers["__connect.errors.topic"] == b"tickets.received.unit"
    assert headers["__connect.errors.offset"] == b"5"
    assert headers["__connect.errors.exception.class.name"] == record.error_class.encode()
    assert headers["sluice.lane"] == b"deadletter"


async def test_event_id_is_kept_or_derived_stably() -> None:
    p = pipeline()
    given = await p.handle(meta(b'{"event_id": "evt-7", "ticket_id": "T-9"}'))
    assert given.event_id == "evt-7"
    first = await p.handle(meta(b"junk", offset=11))
    again = await p.handle(meta(b"other junk", offset=11))  # a redelivery of the same offset
    other = await p.handle(meta(b"junk", offset=12))
    assert first.event_id == again.event_id != other.event_id


async def test_traceparent_is_propagated() -> None:
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    outcome = await pipeline().handle(
        meta(b"junk", headers=(("traceparent", tp), ("x-other", b"1")))
    )
    headers = dict(outcome.headers)
    assert headers["traceparent"] == tp
    assert "x-other" not in headers
