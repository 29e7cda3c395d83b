"""How long the review service takes to rebuild its state from the topics at start.

Writes ``--items`` review-lane records and a decision for every ``--decided``-th one to a fresh set
of topics on the local broker, then times :class:`~streams.review.state.TopicFeed` from start to
caught up, as ``sluice review serve`` does before it listens. Prints items, seconds and items/s.
Run: ``make bench`` (or ``python -m benchmarks.review_rebuild --items 20000``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from schemas.codec import Codec
from schemas.records import ReviewDecision, Source, TicketTriaged
from streams.review.state import ReviewState, TopicFeed
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.records import SAMPLES


async def run(items: int, decided_every: int) -> None:
    tag = uuid.uuid4().hex[:6]
    s = Settings().model_copy(update={"topic_suffix": f".rebuild-{tag}"})
    await ensure_topics(s)
    codec = Codec()
    base = next(r for r in SAMPLES if isinstance(r, TicketTriaged))
    review, reviewed = s.topics.of("tickets", "review"), s.topics.of("tickets", "reviewed")
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks=1, linger_ms=20)
    await producer.start()
    try:
        coords = []
        for n in range(items):
            record = base.model_copy(update={"event_id": f"e-{n}"})
            coords.append(await producer.send(review, codec.encode(record), key=f"k{n}".encode()))
        metas = [await f for f in coords]
        decisions = 0
        for n, meta in enumerate(metas):
            if n % decided_every:
                continue
            decision = ReviewDecision(
                event_id=f"e-{n}", flow="tickets", reviewer="bench", verdict="approve",
                corrections={}, comment=None, model_confidence=0.5,
                decided_at=datetime.now(UTC), decision_id=f"d-{n}",
                item=Source(topic=review, partition=meta.partition, offset=meta.offset),
            )  # fmt: skip
            await producer.send(reviewed, codec.encode(decision))
            decisions += 1
        await producer.flush()
    finally:
        await producer.stop()

    state = ReviewState()
    feed = TopicFeed(s, ["tickets"], state, codec)
    began = time.perf_counter()
    await feed.start()
    await feed.caught_up(timeout_s=600)
    took = time.perf_counter() - began
    await feed.stop()
    pending = len(state.pending())
    assert pending == items - decisions, (pending, items, decisions)
    print(
        f"review rebuild: {items} items + {decisions} decisions in {took:.2f} s "
        f"({(items + decisions) / took:,.0f} records/s); {pending} pending"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--decided", type=int, default=2, help="decide every N-th item")
    args = parser.parse_args()
    asyncio.run(run(args.items, args.decided))


if __name__ == "__main__":
    main()
