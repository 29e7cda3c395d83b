"""The per-event core without a broker: every input becomes one outcome, never an exception."""

import hashlib
import json
from datetime import UTC, datetime
from typing import NoReturn

import pytest
from aiokafka.errors import KafkaTimeoutError, MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from agents.llm import LLMClient, LLMConfig
from agents.triage import TicketTriageAgent, Triage
from schemas import codec
from schemas.events import TicketReceived
from schemas.records import DeadLetter
from streams import deadletter
from streams.app import _timestamp
from streams.builtin import ticket_record
from streams.emit import unwritable
from streams.flow import Flow
from streams.meta import Meta
from streams.pipeline import Pipeline
from streams.settings import Settings


def tickets_flow(llm: LLMClient) -> Flow[TicketReceived, Triage]:
    return Flow("tickets", TicketReceived, TicketTriageAgent(llm), ticket_record)


def tickets(llm: LLMClient, settings: Settings) -> Pipeline:
    return Pipeline(tickets_flow(llm), settings)


def pipeline() -> Pipeline:
    # The client is never started: any event that reaches the model fails with ProviderError,
    # which is itself a path under test (provider down → dead letter, not a crash).
    llm = LLMClient(LLMConfig(max_attempts=1))
    return tickets(llm, Settings(topic_suffix=".unit"))


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


def small_pipeline(max_message_bytes: int = 65_536) -> Pipeline:
    llm = LLMClient(LLMConfig(max_attempts=1))
    settings = Settings(topic_suffix=".unit", max_message_bytes=max_message_bytes)
    return tickets(llm, settings)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"[" * 1000 + b"]" * 1000, "input_too_deep"),  # RecursionError escaped handle before
        (b'{"event_id": ' + b"[" * 5000 + b"]" * 5000 + b"}", "input_too_deep"),
        (b'{"ticket_id": "T", "body": "x", "n": ' + b"9" * 5000 + b"}", "input_too_large"),
        (b'{"ticket_id": "T", "body": "' + b"x" * 30_000 + b'"}', "input_too_large"),
        (b'{"ticket_id": "T", "body": "\\ud800"}', "poison_input"),
    ],
)
async def test_nothing_escapes_handle(value: bytes, reason: str) -> None:
    outcome = await small_pipeline().handle(meta(value))
    record = codec.decode_as(outcome.value, DeadLetter)
    assert (outcome.lane, record.reason) == ("deadletter", reason)
    assert record.original_value == value
    assert record.original_sha256 == hashlib.sha256(value).hexdigest()
    assert not record.original_truncated


async def test_an_original_too_large_to_embed_is_truncated_with_its_hash() -> None:
    limit = 65_536
    value = b'{"ticket_id": "T", "body": "' + b"y" * 200_000 + b'"}'  # input topic allowed it
    outcome = await small_pipeline(limit).handle(meta(value))
    record = codec.decode_as(outcome.value, DeadLetter)
    assert record.reason == "input_too_large"
    assert record.original_truncated
    assert record.original_size == len(value)
    assert record.original_sha256 == hashlib.sha256(value).hexdigest()
    assert record.original_value == value[: deadletter.ORIGINAL_PREFIX_BYTES]
    assert (record.source.partition, record.source.offset) == (1, 5)  # where the whole value is
    assert outcome.size < limit
    headers = dict(outcome.headers)
    assert headers["__connect.errors.sluice.original.truncated"] == b"true"


async def test_a_bug_of_ours_is_an_internal_error_dead_letter() -> None:
    class Buggy(Pipeline):
        async def result(self, meta: Meta, event_id: str) -> NoReturn:
            raise KeyError("a bug")

    p = Buggy(tickets_flow(LLMClient(LLMConfig())), Settings(topic_suffix=".unit"))
    outcome = await p.handle(meta(b'{"ticket_id": "T-9", "body": "help"}'))
    record = codec.decode_as(outcome.value, DeadLetter)
    assert (record.reason, record.error_class) == ("internal_error", "builtins.KeyError")


async def test_an_error_that_cannot_even_be_printed_still_dead_letters() -> None:
    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    class Buggy(Pipeline):
        async def result(self, meta: Meta, event_id: str) -> NoReturn:
            raise Hostile

    p = Buggy(tickets_flow(LLMClient(LLMConfig())), Settings(topic_suffix=".unit"))
    record = codec.decode_as((await p.handle(meta(b"{}"))).value, DeadLetter)
    assert record.reason == "internal_error"
    assert "message unavailable" in record.error_message


async def test_validation_errors_never_reach_the_dead_letter_with_input_values() -> None:
    secret = "4111-1111-1111-1111-SECRET"
    value = json.dumps({"ticket_id": "T", "body": "x", "channel": secret}).encode()
    outcome = await small_pipeline().handle(meta(value))
    record = codec.decode_as(outcome.value, DeadLetter)
    assert record.reason == "poison_input"
    assert secret not in record.error_message
    assert secret not in record.stacktrace
    assert "input_value" not in record.stacktrace
    assert not any(secret.encode() in v for _, v in outcome.headers)


def test_hostile_kafka_timestamps_do_not_crash_the_shell() -> None:
    assert _timestamp(9.2e15) is None  # year ~292 million
    assert _timestamp(-1.0) is None
    assert _timestamp(None) is None
    assert _timestamp(1.7e9) is not None


def test_unwritable_sees_through_faust_wrapping() -> None:
    cause = MessageSizeTooLargeError()
    wrapped = ProducerSendError("Error while sending")  # faust: raise ... from the aiokafka error
    wrapped.__cause__ = cause
    assert unwritable(wrapped) is cause
    assert unwritable(KafkaTimeoutError()) is None


async def test_redrive_lineage_is_carried_to_the_next_dead_letter() -> None:
    lineage = (
        ("sluice.redrive.attempt", b"2"),
        ("sluice.origin", b"tickets.received/3/17"),
        ("sluice.redrive.from", b"deadletter/0/5"),
        ("sluice.event_id", b"ev-first"),
    )
    outcome = await pipeline().handle(meta(b"junk", headers=lineage))
    headers = dict(outcome.headers)
    assert outcome.event_id == "ev-first"
    assert headers["sluice.redrive.attempt"] == b"2"
    assert headers["sluice.origin"] == b"tickets.received/3/17"
    assert headers["sluice.redrive.from"] == b"deadletter/0/5"


@pytest.mark.parametrize(
    "value",
    [
        # Every field within the event model's limits (body: 20,000 characters, 60,000 bytes of
        # "€"); only the whole message passes SLUICE_MAX_MESSAGE_BYTES.
        json.dumps({"ticket_id": "T", "subject": "€" * 300, "body": "€" * 20_000, "x": "y" * 9000},
                   ensure_ascii=False).encode(),
        b'{"ticket_id": "T", "body": "help"}' + b" " * 70_000,  # whitespace is JSON too
    ],
)  # fmt: skip
async def test_the_message_byte_limit_applies_below_the_models_field_limits(value: bytes) -> None:
    limit = 65_536
    assert len(value) > limit
    outcome = await small_pipeline(limit).handle(meta(value))
    record = codec.decode_as(outcome.value, DeadLetter)
    assert (outcome.lane, record.reason) == ("deadletter", "input_too_large")
    assert f"the limit is {limit}" in record.error_message
    # Within a larger limit the same event parses and reaches the (absent) model.
    bigger = await small_pipeline(len(value)).handle(meta(value))
    assert codec.decode_as(bigger.value, DeadLetter).reason == "provider_unavailable"
