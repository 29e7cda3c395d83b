"""The executor without a broker: where a record came from decides its source, never the record
itself; a decision that fails its checks runs nothing, before any Kafka read; an effect's error
is scrubbed of secrets before it is written."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.idempotency import IdempotencyStore
from agents.redact import register_secret, reset_secrets
from agents.tools import Action, Toolbox
from schemas.codec import Codec
from schemas.errors import UnverifiedDecision
from schemas.records import ReviewDecision, TicketTriaged
from streams.decisions import DecisionKeys, LaneRecords, sha256
from streams.executor import Executor
from streams.flow import registered
from streams.meta import Meta
from streams.settings import Settings
from tests.records import SAMPLES

CODEC = Codec()
KEYS = DecisionKeys.parse(f"k1:{secrets.token_hex(20)}")  # random: registered secrets are scrubbed
TICKET = next(r for r in SAMPLES if isinstance(r, TicketTriaged))


class Recorder:
    """A flow's ``actions``: remembers the source each record was given, asks for nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, record: Any, source: str) -> list[Action]:
        self.calls.append((record.event_id, source))
        return []


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def executor(recorder: Recorder) -> Executor:
    settings = Settings(reviewers_file=None)
    spec = next(s for s in registered() if s.name == "tickets")
    spec = dataclasses.replace(spec, actions=recorder)
    # Neither Redis nor Kafka is reached: nothing here runs an effect or reads a lane.
    store = IdempotencyStore(aioredis.Redis.from_url("redis://127.0.0.1:1/0"))
    return Executor(spec, settings, CODEC, Toolbox(), store, None, KEYS, LaneRecords(settings))


def meta(topic: str, value: bytes) -> Meta:
    return Meta(topic=topic, partition=0, offset=7, timestamp=None, key=None, value=value)


def decision(**over: Any) -> ReviewDecision:
    value = CODEC.encode(TICKET)
    fields: dict[str, Any] = {
        "event_id": TICKET.event_id, "flow": "tickets", "reviewer": "alice",
        "verdict": "approve", "corrections": {}, "comment": None, "model_confidence": 0.5,
        "decided_at": datetime.now(UTC), "decision_id": "d-1", "record": value,
        "item_sha256": sha256(value),
    }  # fmt: skip
    return ReviewDecision(**{**fields, **over})


def effects(executor: Executor, topic: str, value: bytes) -> Any:
    return asyncio.run(executor.effects(meta(topic, value)))


def test_a_record_from_the_auto_lane_is_run_as_auto(executor: Executor, recorder: Recorder) -> None:
    topics = Settings().topics
    assert effects(executor, topics.tickets_auto, CODEC.encode(TICKET)) == []
    assert recorder.calls == [(TICKET.event_id, "auto")]


def test_a_decision_on_the_auto_lane_is_refused(executor: Executor, recorder: Recorder) -> None:
    signed = KEYS.sign(decision())
    out = effects(executor, Settings().topics.tickets_auto, CODEC.encode(signed))
    assert isinstance(out, UnverifiedDecision)
    assert "not on the reviewed topic" in str(out)
    assert recorder.calls == []


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (CODEC.encode(TICKET), "a TicketTriaged on the reviewed topic"),
        (CODEC.encode(decision()), "not signed"),
        (CODEC.encode(KEYS.sign(decision())), "SLUICE_REVIEWERS_FILE is not set"),
        (
            CODEC.encode(DecisionKeys.parse(f"k1:{secrets.token_hex(20)}").sign(decision())),
            "does not match",
        ),
    ],
    ids=["result-record", "unsigned", "no-reviewers-file", "wrong-key"],
)
def test_an_unverified_record_on_the_reviewed_topic_runs_nothing(
    executor: Executor, recorder: Recorder, value: bytes, why: str
) -> None:
    """Refused before any Kafka read (this test has no broker), and never run as reviewed."""
    out = effects(executor, Settings().topics.tickets_reviewed, value)
    assert isinstance(out, UnverifiedDecision), out
    assert out.reason == "decision_unverified"
    assert why in str(out)
    assert recorder.calls == []


@pytest.fixture
def secret() -> Iterator[str]:
    reset_secrets()
    register_secret("pw-9f8e7d6c5b4a-ledger")
    yield "pw-9f8e7d6c5b4a-ledger"
    reset_secrets()


def test_an_effects_error_is_written_without_secrets(executor: Executor, secret: str) -> None:
    action = Action(tool="post_invoice", input={}, agent="a", confidence=1.0, source="auto")
    effect = executor._record(
        action, "e-1", "key", "failed", "{}", 1, datetime.now(UTC),
        error=f"connect to postgresql://sluice:{secret}@db failed",
    )  # fmt: skip
    assert effect.error is not None
    assert secret not in effect.error
    assert "connect to postgresql://" in effect.error
