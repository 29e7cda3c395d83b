"""What a reviewer can do to an item: claim, release, approve, edit, reject.

Two reviewers cannot decide one item: deciding needs the item's claim, a Redis key held by one
reviewer for ``SLUICE_REVIEW_CLAIM_S`` (deciding an unclaimed item claims it first). A decision is
written once: a short "deciding" marker in Redis (SET NX) keeps a second request — a double click,
another replica — out while the first writes, and the reviewed topic, read back into the state,
says it is decided from then on. If the write fails the marker is removed and nothing was
decided; if the process dies mid-write, the marker expires and the topic says whether the write
landed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ValidationError

from agents.observe import ReviewDecided, notify
from schemas.codec import Codec
from schemas.errors import InvalidEdit, ItemNotFound, ReviewConflict, validation_problems
from schemas.records import FieldChange, ReviewDecision, ReviewVerdict
from streams import tracing
from streams.flow import Envelope
from streams.review.state import Item, ReviewState

log = structlog.get_logger(__name__)

#: Fields a reviewer may not change: the envelope (what happened, not what it means) and the
#: agent's own evidence. Everything else in a result record is the agent's answer.
LOCKED = frozenset(Envelope.__annotations__) | {"field_confidence", "validation_issues"}

Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[None]]
"""Writes (topic, key, value, headers) and waits for the broker's ack."""
"""(topic, key, value) → once the broker has acknowledged the write."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def editable(record: BaseModel) -> list[str]:
    """The fields of ``record`` a reviewer may edit: not the locked ones, and no ``*_id`` (an id
    says which ticket or document this is, not what the model made of it)."""
    return [
        name
        for name in type(record).model_fields
        if name not in LOCKED and not name.endswith("_id")
    ]


class ReviewDesk:
    """The review operations over ``state``, with claims in ``redis`` and decisions sent with
    ``send`` to each flow's reviewed topic (``reviewed_topic(flow)``)."""

    def __init__(
        self,
        state: ReviewState,
        redis: aioredis.Redis,
        send: Send,
        reviewed_topic: Callable[[str], str],
        *,
        prefix: str,
        claim_s: float = 900.0,
        codec: Codec | None = None,
    ) -> None:
        self.state = state
        self.redis = redis
        self.send = send
        self.reviewed_topic = reviewed_topic
        self.prefix = prefix
        self.claim_s = claim_s
        self.codec = codec or Codec()
        self._release = redis.register_script(_RELEASE)

    def item(self, key: str) -> Item:
        found = self.state.get(key)
        if found is None:
            raise ItemNotFound(f"no review item {key!r}")
        return found

    async def claimed_by(self, key: str) -> str | None:
        """Who holds the item's claim now, if anyone."""
        held = await self.redis.get(self._claim_key(key))
        return held.decode() if isinstance(held, bytes) else held

    async def claims(self, keys: list[str]) -> dict[str, str | None]:
        """Who holds each item's claim, in one round trip."""
        if not keys:
            return {}
        held = await self.redis.mget([self._claim_key(k) for k in keys])
        return {
            k: h.decode() if isinstance(h, bytes) else h for k, h in zip(keys, held, strict=True)
        }

    async def claim(self, key: str, reviewer: str) -> float:
        """Claim the item for ``reviewer`` (again: renews it); returns seconds the claim lasts."""
        item = self.item(key)
        if item.decision is not None:
            raise ReviewConflict(f"{key} is decided already ({item.decision.verdict})")
        ms = int(self.claim_s * 1000)
        if not await self.redis.set(self._claim_key(key), reviewer, nx=True, px=ms):
            holder = await self.claimed_by(key)
            if holder != reviewer:
                raise ReviewConflict(f"{key} is claimed by {holder}")
            await self.redis.pexpire(self._claim_key(key), ms)
        log.info("review.claimed", item=key, reviewer=reviewer)
        return self.claim_s

    async def release(self, key: str, reviewer: str) -> None:
        """Give the claim back (only its holder can)."""
        self.item(key)
        if not await self._release(keys=[self._claim_key(key)], args=[reviewer]):
            raise ReviewConflict(f"{key} is not claimed by {reviewer}")
        log.info("review.released", item=key, reviewer=reviewer)

    async def approve(self, key: str, reviewer: str, comment: str | None = None) -> ReviewDecision:
        """The result is right as it is: its actions may run."""
        item = self.item(key)
        return await self._decide(item, reviewer, "approve", item.record, [], comment)

    async def edit(
        self, key: str, reviewer: str, changes: dict[str, Any], comment: str | None = None
    ) -> ReviewDecision:
        """The result with ``changes`` applied is right. The edited record must pass the record's
        own schema, so an edit cannot produce an invalid record."""
        item = self.item(key)
        allowed = editable(item.record)
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise InvalidEdit(f"cannot edit {', '.join(unknown)}; editable: {', '.join(allowed)}")
        before = item.record.model_dump(mode="json")
        try:
            edited = type(item.record).model_validate({**item.record.model_dump(), **changes})
        except ValidationError as exc:
            raise InvalidEdit(validation_problems(exc)) from exc
        after = edited.model_dump(mode="json")
        diff = [
            FieldChange(field=f, before=json.dumps(before[f]), after=json.dumps(after[f]))
            for f in allowed
            if before.get(f) != after.get(f)
        ]
        if not diff:
            raise InvalidEdit("the edit changes nothing: approve instead")
        return await self._decide(item, reviewer, "correct", edited, diff, comment)

    async def reject(self, key: str, reviewer: str, reason: str) -> ReviewDecision:
        """The result is wrong and must not act; ``reason`` is required."""
        if not reason.strip():
            raise InvalidEdit("a rejection needs a reason")
        item = self.item(key)
        return await self._decide(item, reviewer, "reject", None, [], reason.strip())

    async def _decide(
        self,
        item: Item,
        reviewer: str,
        verdict: ReviewVerdict,
        record: BaseModel | None,
        diff: list[FieldChange],
        comment: str | None,
    ) -> ReviewDecision:
        await self.claim(item.id, reviewer)  # holds it, or raises: claimed by another, decided
        deciding = f"{self.prefix}:deciding:{item.id}"
        decision_id = uuid.uuid4().hex
        if not await self.redis.set(deciding, decision_id, nx=True, px=120_000):
            raise ReviewConflict(f"{item.id} is being decided")
        try:
            if item.decision is not None:  # decided while we waited for Redis
                raise ReviewConflict(f"{item.id} is decided already ({item.decision.verdict})")
            now = datetime.now(UTC)
            decision = ReviewDecision(
                event_id=item.event_id,
                flow=item.flow,
                reviewer=reviewer,
                verdict=verdict,
                corrections={c.field: c.after for c in diff},
                comment=comment,
                model_confidence=item.confidence,
                decided_at=now,
                decision_id=decision_id,
                item=item.where,
                changes=diff,
                seconds_to_decision=item.age_s(now),
                record=None if record is None else self.codec.encode(record),
            )
            attributes = {"sluice.flow": item.flow, "sluice.event_id": item.event_id,
                          "sluice.review.verdict": verdict}  # fmt: skip
            with tracing.stage_span(
                f"review {item.flow}", item.traceparent, item.event_id, attributes
            ) as traceparent:
                headers = [("sluice.event_id", item.event_id.encode())]
                if traceparent is not None:
                    headers.append((tracing.TRACEPARENT, traceparent.encode()))
                await self.send(
                    self.reviewed_topic(item.flow), item.event_id.encode(),
                    self.codec.encode(decision), headers,
                )  # fmt: skip
        except BaseException:
            await self.redis.delete(deciding)
            raise
        self.state.add_decision(decision)  # the feed reads it back too; the first one stands
        await self.redis.delete(self._claim_key(item.id))
        found = tracing.parse(traceparent)
        with structlog.contextvars.bound_contextvars(
            topic=item.where.topic, partition=item.where.partition, offset=item.where.offset,
            trace_id=found[0] if found else None,
        ):  # fmt: skip
            notify(
                ReviewDecided(
                    flow=item.flow,
                    event_id=item.event_id,
                    item=item.id,
                    verdict=verdict,
                    reviewer=reviewer,
                    changed=[c.field for c in diff],
                    seconds_to_decision=round(decision.seconds_to_decision, 3),
                )
            )
        return decision

    def _claim_key(self, key: str) -> str:
        return f"{self.prefix}:claim:{key}"
