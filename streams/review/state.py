"""Review items and their decisions, as a projection of the topics.

The review lanes (``<flow>.review``) hold the items; the reviewed topics (``<flow>.reviewed``) hold
the decisions, each naming the item it decides by its coordinates. :class:`ReviewState` is what
both say together, and :class:`TopicFeed` keeps it current by reading both topics from the
beginning and then following them. A restarted service therefore shows exactly what the topics
say: every item that entered review is either decided on ``<flow>.reviewed`` or pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import BaseModel

from schemas.codec import Codec
from schemas.records import ReviewDecision, Source
from streams.settings import Settings
from streams.topics import partitions
from streams.tracing import traceparent_of

log = structlog.get_logger(__name__)


def item_id(flow: str, where: Source) -> str:
    """The id of the review item at ``where``: ``<flow>-<partition>-<offset>`` (URL-safe)."""
    return f"{flow}-{where.partition}-{where.offset}"


@dataclass
class Item:
    """One result waiting for (or decided by) a person."""

    id: str
    flow: str
    where: Source
    """The review-lane record's coordinates."""
    record: BaseModel
    decision: ReviewDecision | None = None
    source: tuple[str | None, str | None] | None = field(default=None, repr=False)
    """The input event (raw text, readable text) once read: see ``context.source_of``."""
    traceparent: str | None = None
    """The review-lane record's W3C traceparent: the decision continues its trace."""
    sha256: str | None = None
    """SHA-256 (hex) of the review-lane record's bytes as read: the decision signs it."""

    @property
    def event_id(self) -> str:
        return str(getattr(self.record, "event_id", ""))

    @property
    def confidence(self) -> float:
        return float(getattr(self.record, "confidence", 0.0))

    @property
    def kind(self) -> str:
        """``review`` (routed to a person), ``held`` (an auto result's doubtful actions wait for
        a person) or ``audit`` (an auto result sampled to measure the auto lane)."""
        route = getattr(self.record, "route", None)
        if getattr(route, "lane", "review") != "auto":
            return "review"
        return "held" if self.reason.startswith("actions held") else "audit"

    @property
    def reason(self) -> str:
        route = getattr(self.record, "route", None)
        return str(getattr(route, "reason", ""))

    @property
    def processed_at(self) -> datetime | None:
        found = getattr(self.record, "processed_at", None)
        return found if isinstance(found, datetime) else None

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since the result was produced (0 if the record does not say)."""
        at = self.processed_at
        if at is None:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - at).total_seconds())

    def low_confidence(self, threshold: float) -> list[str]:
        """Fields (``field_confidence``) and actions (``actions[i]``) below ``threshold``."""
        low = [
            name
            for name, value in (getattr(self.record, "field_confidence", None) or {}).items()
            if not value >= threshold  # NaN is low
        ]
        for i, action in enumerate(getattr(self.record, "actions", None) or []):
            if not getattr(action, "confidence", 0.0) >= threshold:
                low.append(f"actions[{i}]")
        return low


class ReviewState:
    """Items by id, and decisions that arrived before their item (read order across topics)."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self._early: dict[str, ReviewDecision] = {}

    def add_item(
        self, flow: str, where: Source, record: BaseModel, traceparent: str | None = None,
        sha256: str | None = None,
    ) -> Item:  # fmt: skip
        """Record a review-lane record. Seeing it again (a re-read) changes nothing."""
        key = item_id(flow, where)
        if key not in self.items:
            self.items[key] = Item(
                key, flow, where, record, self._early.pop(key, None), traceparent=traceparent,
                sha256=sha256,
            )  # fmt: skip
        return self.items[key]

    def add_decision(self, decision: ReviewDecision) -> None:
        """Record a decision. The first one for an item stands; a later one is logged, not used."""
        if decision.item is None:
            return  # a v1 decision names no item: nothing pending can be matched to it
        key = item_id(decision.flow, decision.item)
        item = self.items.get(key)
        if item is None:
            self._early.setdefault(key, decision)
        elif item.decision is None:
            item.decision = decision
        elif item.decision.decision_id != decision.decision_id:
            log.error(
                "review.second_decision",
                item=key,
                first=item.decision.decision_id,
                second=decision.decision_id,
            )

    def get(self, key: str) -> Item | None:
        return self.items.get(key)

    def pending(self, flow: str | None = None) -> list[Item]:
        """Undecided items, oldest first."""
        return sorted(
            (i for i in self.items.values() if i.decision is None and flow in (None, i.flow)),
            key=lambda i: (i.processed_at or datetime.min.replace(tzinfo=UTC), i.id),
        )

    def decided(self, flow: str | None = None) -> list[Item]:
        return [i for i in self.items.values() if i.decision and flow in (None, i.flow)]


class TopicFeed:
    """Reads the review and reviewed topics of ``flows`` into ``state``: everything from the
    beginning, then whatever comes. :meth:`caught_up` waits until the first pass reached the ends
    the topics had at start, so a restarted service never shows a decided item as pending."""

    def __init__(
        self, settings: Settings, flows: Iterable[str], state: ReviewState, codec: Codec
    ) -> None:
        self.settings = settings
        self.state = state
        self.codec = codec
        self.flow_of: dict[str, tuple[str, str]] = {}
        for flow in flows:
            self.flow_of[settings.topics.of(flow, "review")] = (flow, "review")
            self.flow_of[settings.topics.of(flow, "reviewed")] = (flow, "reviewed")
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self._ends: dict[TopicPartition, int] = {}

    async def start(self) -> None:
        tps = await partitions(self.settings, list(self.flow_of))
        # earliest: seek_to_beginning alone can lose a race with a "latest" default reset
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        self._consumer = consumer
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        self._ends = dict(await consumer.end_offsets(tps))
        self._task = asyncio.create_task(self._run(), name="review-feed")

    async def caught_up(self, timeout_s: float = 60.0) -> None:
        await asyncio.wait_for(self._caught_up.wait(), timeout_s)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                flow, role = self.flow_of[tp.topic]
                for m in messages:
                    self._apply(flow, role, m.topic, m.partition, m.offset, m.value, m.headers)
            if not self._caught_up.is_set() and all(
                [await consumer.position(tp) >= end for tp, end in self._ends.items()]
            ):
                self._caught_up.set()
                log.info("review.caught_up", items=len(self.state.items))

    def _apply(
        self, flow: str, role: str, topic: str, partition: int, offset: int, value: Any,
        headers: Any = (),
    ) -> None:  # fmt: skip
        try:
            record = self.codec.decode(value or b"")
        except Exception as exc:  # a record we cannot read is skipped, loudly, never fatal
            log.error("review.unreadable", topic=topic, partition=partition, offset=offset,
                      error=str(exc))  # fmt: skip
            return
        if role == "review":
            where = Source(topic=topic, partition=partition, offset=offset)
            digest = hashlib.sha256(value or b"").hexdigest()
            self.state.add_item(flow, where, record, traceparent_of(tuple(headers or ())), digest)
        elif isinstance(record, ReviewDecision):
            self.state.add_decision(record)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
