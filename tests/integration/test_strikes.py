"""An offset whose outcome keeps failing with an error we cannot classify: strikes in real Redis.

Some producer errors are record-specific but not on the list of known ones (a topic policy that
refuses the record, an unknown broker error). Each failed attempt on the offset exits the worker
unacknowledged and counts a strike in Redis, so the count survives the exits; at ``max_strikes``
the minimal dead letter goes out instead and the partition moves on. The broker side of both
outcomes is proven in test_emit_paths.py; here the ``send`` seam refuses one topic so that the
count, the exits and the replacement can be checked exactly, with the real Redis.
"""

from __future__ import annotations

import uuid
from typing import NoReturn

import pytest
import redis
from aiokafka.errors import InvalidTimestampError

from schemas import codec
from schemas.records import DeadLetter, Usage
from streams.emit import Emitter, Strikes
from streams.meta import Meta
from streams.outcome import Outcome
from streams.settings import Settings


class Exited(Exception):
    """Stands in for the process exit, so the test can count exits."""


def die() -> NoReturn:
    raise Exited


async def test_strikes_survive_exits_and_end_in_a_minimal_dead_letter(services: Settings) -> None:
    s = services
    written: list[Outcome] = []

    async def send(outcome: Outcome) -> None:
        if outcome.topic == "tickets.auto":
            raise InvalidTimestampError()  # record-specific, but not a size or corruption error
        written.append(outcome)

    app_id = f"strikes-{uuid.uuid4().hex[:8]}"
    meta = Meta("tickets.received", 2, 41, None, b"T-1", b'{"ticket_id": "T-1", "body": "x"}')
    usage = Usage(attempts=2, prompt_tokens=900, completion_tokens=80, latency_ms=700)
    outcome = Outcome.build("auto", "tickets.auto", meta, b"avro", "ev-1", "confident", usage=usage)
    exits = 0
    for _ in range(3):  # three worker processes, each dying on the same offset
        strikes = Strikes(s.redis_url, app_id)
        emitter = Emitter(send, strikes, codec.Codec(), "deadletter", timeout_s=5, die=die)
        try:
            result = await emitter.emit(outcome, meta, "tickets")
            break
        except Exited:
            exits += 1
        finally:
            await strikes.close()
    else:
        pytest.fail("never gave up on the offset")

    assert exits == 2  # max_strikes=3: two exits before the ack, then the replacement
    assert int(redis.Redis.from_url(s.redis_url).get(strikes.key(meta)) or 0) == 3
    assert redis.Redis.from_url(s.redis_url).ttl(strikes.key(meta)) > 0
    assert written == [result]
    assert (result.topic, result.lane, result.event_id) == ("deadletter", "deadletter", "ev-1")
    dl = codec.decode_as(result.value, DeadLetter)
    assert dl.reason == "outcome_unwritable"
    assert "failed 3 times on this offset" in dl.error_message
    assert (dl.source.partition, dl.source.offset) == (2, 41)
    assert dl.original_value is None
    assert dl.usage == usage  # what the model calls cost is not lost with the payload


async def test_a_known_unwritable_record_is_replaced_at_once(services: Settings) -> None:
    from aiokafka.errors import MessageSizeTooLargeError

    s = services
    sent: list[str] = []

    async def send(outcome: Outcome) -> None:
        sent.append(outcome.topic)
        if outcome.topic == "deadletter" and outcome.lane == "deadletter" and len(sent) == 1:
            raise MessageSizeTooLargeError()

    strikes = Strikes(s.redis_url, f"strikes-{uuid.uuid4().hex[:8]}")
    meta = Meta("tickets.received", 0, 7, None, None, b"x" * 10)
    outcome = Outcome.build("deadletter", "deadletter", meta, b"big", "ev-2", "poison")
    emitter = Emitter(send, strikes, codec.Codec(), "deadletter", timeout_s=5, die=die)
    try:
        result = await emitter.emit(outcome, meta, "tickets")
    finally:
        await strikes.close()
    assert sent == ["deadletter", "deadletter"]  # no exit, no strike: straight to the minimal one
    assert codec.decode_as(result.value, DeadLetter).reason == "outcome_unwritable"
    assert redis.Redis.from_url(s.redis_url).get(strikes.key(meta)) is None
