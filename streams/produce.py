"""Producing input events: the ``sluice produce`` command and the demo use this."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from streams.settings import Settings


@dataclass(frozen=True)
class Sent:
    topic: str
    partition: int
    offset: int
    value: bytes


def key_of(value: bytes, key_field: str | None) -> bytes | None:
    """The message key from a JSON field, so one ticket's events stay in one partition."""
    if not key_field:
        return None
    try:
        data = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None
    key = data.get(key_field) if isinstance(data, dict) else None
    return str(key).encode() if key is not None else None


async def produce_lines(
    settings: Settings, topic: str, values: list[bytes], *, key_field: str | None = "ticket_id"
) -> list[Sent]:
    """Send each value and wait for every ack; return where each one landed."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    await producer.start()
    try:
        futures = [await producer.send(topic, v, key=key_of(v, key_field)) for v in values]
        results = [await f for f in futures]
    finally:
        await producer.stop()
    return [Sent(topic, r.partition, r.offset, v) for r, v in zip(results, values, strict=True)]
