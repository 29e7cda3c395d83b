"""A review desk on real Redis and Kafka for the B5/B6 tests: the built-in flows' specs (their
business rules and amounts), decisions written to the test's own reviewed topics."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from pydantic import BaseModel

from schemas import codec
from schemas.records import ReviewDecision, Source
from streams.flow import registered
from streams.review.desk import ReviewDesk
from streams.review.state import Item, ReviewState
from streams.settings import Settings
from tests.integration import kcat


@contextlib.asynccontextmanager
async def desk_on(settings: Settings, four_eyes: Decimal) -> AsyncIterator[ReviewDesk]:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
    redis = aioredis.Redis.from_url(settings.redis_url)
    await producer.start()

    async def send(topic: str, key: bytes, value: bytes, headers: list[Any]) -> None:
        await producer.send_and_wait(topic, value, key=key, headers=headers)

    try:
        yield ReviewDesk(
            ReviewState(),
            redis,
            send,
            lambda flow: settings.topics.of(flow, "reviewed"),
            prefix=f"sluice:review:{settings.app_id}",
            specs={spec.name: spec for spec in registered()},
            four_eyes=lambda flow: four_eyes,
        )
    finally:
        await producer.stop()
        await redis.aclose()


def add(desk: ReviewDesk, flow: str, record: BaseModel, offset: int) -> Item:
    topic = desk.reviewed_topic(flow).replace(".reviewed", ".review")
    return desk.state.add_item(flow, Source(topic=topic, partition=0, offset=offset), record)


def decisions(settings: Settings, flow: str) -> list[ReviewDecision]:
    topic = settings.topics.of(flow, "reviewed")
    return [
        codec.decode_as(r.value or b"", ReviewDecision)
        for r in kcat.consume(settings.bootstrap_servers, topic)
    ]
