"""Reading the terminal lanes back: which input events ended where.

The conservation law — every input event ends in exactly one of auto, review or deadletter — is
checked by matching each output record's ``source`` (topic, partition, offset) to what was sent.
The demo and the tests both count with this; the tests also read with kcat, independently.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel

from schemas.records import Source
from streams import compose
from streams.settings import Settings
from streams.topics import partitions

Coord = tuple[str, int, int]


@dataclass
class Tally:
    """Per lane, the first output record seen for each input coordinate."""

    lanes: dict[str, dict[Coord, BaseModel]] = field(
        default_factory=lambda: {"auto": {}, "review": {}, "deadletter": {}}
    )
    #: Output records whose input was already accounted for (at-least-once redeliveries).
    duplicates: Counter[Coord] = field(default_factory=Counter)

    #: Every input coordinate accounted for, kept as records are added (O(1) per record: the
    #: tally reads tens of thousands of records in the benchmarks).
    accounted: set[Coord] = field(default_factory=set)
    #: Inputs with a later output in a *different* lane than their first (a redelivered event
    #: the model judged differently): each input must end in exactly one lane.
    other_lane: Counter[Coord] = field(default_factory=Counter)
    _lane_of: dict[Coord, str] = field(default_factory=dict)
    #: Review copies of auto results (audit samples, held actions): not a lane of their own. A
    #: record on a review topic whose ``route.lane`` is ``auto`` is one.
    copies: Counter[Coord] = field(default_factory=Counter)

    def seen(self) -> set[Coord]:
        """Every input coordinate with an output in some lane."""
        return self.accounted

    def add(self, lane: str, coord: Coord, record: BaseModel) -> None:
        """Count ``record`` for ``coord``: the first one per input, later ones are duplicates."""
        if coord in self.accounted:
            self.duplicates[coord] += 1
            if self._lane_of[coord] != lane:
                self.other_lane[coord] += 1
        else:
            self.lanes[lane][coord] = record
            self.accounted.add(coord)
            self._lane_of[coord] = lane

    def counts(self) -> dict[str, int]:
        return {lane: len(records) for lane, records in self.lanes.items()}


def lane_topics(settings: Settings) -> dict[str, str]:
    """Output topic → lane (auto, review, deadletter) for every registered flow."""
    return settings.topics.lanes()


async def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    """Where each partition ends now: read from here to see only what comes next."""
    tps = await partitions(settings, topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    # aiokafka 0.14 (issue aio-libs/aiokafka#647, open): stop() cancels and awaits a task that
    # start() created; if that task never ran (end_offsets did no I/O), the await raises
    # CancelledError out of stop(). One turn of the event loop lets it start.
    await asyncio.sleep(0)
    try:
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def collect(
    settings: Settings,
    start: dict[TopicPartition, int],
    wanted: set[Coord],
    *,
    timeout_s: float,
) -> Tally:
    """Read the lanes from ``start`` until every wanted input is accounted for or time is up."""
    by_topic = lane_topics(settings)
    codec = compose.codec(settings, register=False)  # a reader: registers nothing
    tally = Tally()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while not wanted <= tally.seen() and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for message in messages:
                    record = codec.decode(message.value or b"")
                    src = getattr(record, "source", None)
                    if not isinstance(src, Source):
                        continue  # not a result or dead letter of ours
                    coord = (src.topic, src.partition, src.offset)
                    if coord not in wanted:
                        continue
                    lane = by_topic[tp.topic]
                    route = getattr(record, "route", None)
                    if lane == "review" and getattr(route, "lane", None) == "auto":
                        tally.copies[coord] += 1
                        continue
                    tally.add(lane, coord, record)
            await asyncio.sleep(0)
        return tally
    finally:
        await consumer.stop()
