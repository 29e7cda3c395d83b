"""Writing an event's one outcome, so that no message can stop its partition for good.

Two kinds of failure look alike at the producer and need opposite answers:

- **The broker is unavailable** (timeouts, leader elections, a network split). Transient: the
  worker exits *before* the input is acknowledged (:data:`EXIT_EMIT_FAILED`), so the event is
  redelivered once the broker is back, to this worker or another. Nothing is lost.
- **The record can never be written** (larger than the topic or the producer accepts, refused as
  corrupt). Exiting would redeliver the same record to every restarted worker: a crash loop that
  stops the partition for good. Instead a *minimal* dead letter (coordinates, reason, hash, no
  payload) is written in its place, loudly, and the partition moves on.

A record-level failure that hides behind a transient-looking error (a broker that times out on one
record only) is caught by counting: every failed attempt on an input offset is a *strike* in Redis,
which survives the exits it causes; at :attr:`Emitter.max_strikes` strikes the minimal dead letter
is written instead. The happy path costs no Redis call.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import redis.asyncio as aioredis
import structlog
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTopicError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)

from schemas.codec import Codec
from schemas.records import DeadLetterReason
from streams import deadletter
from streams.meta import Meta
from streams.outcome import Outcome

log = structlog.get_logger(__name__)

#: Exit code when an outcome cannot be written: the process dies *before* the message is
#: acknowledged, so the event is redelivered instead of lost.
EXIT_EMIT_FAILED = 70

#: Producer errors that say this record will never be accepted, however often it is retried.
UNWRITABLE: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    CorruptRecordException,
    InvalidTopicError,
    UnsupportedForMessageFormatError,
    UnicodeEncodeError,
)

Send = Callable[[Outcome], Awaitable[None]]


def unwritable(error: BaseException) -> BaseException | None:
    """The record-level cause of ``error``, if any; faust wraps aiokafka's errors."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, UNWRITABLE):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def die() -> NoReturn:
    """End the process at once, before anything more is acked: the event is redelivered."""
    os._exit(EXIT_EMIT_FAILED)


class Strikes:
    """Failed attempts per input offset, kept in Redis so they outlive the process they kill.

    Keys: ``sluice:v1:strikes:<app_id>:<topic>:<partition>:<offset>``, expiring after ``ttl_s``.
    """

    def __init__(self, redis_url: str, app_id: str, ttl_s: int = 7 * 24 * 3600) -> None:
        self._redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
        self._prefix = f"sluice:v1:strikes:{app_id}"
        self._ttl_s = ttl_s

    def key(self, meta: Meta) -> str:
        return f"{self._prefix}:{meta.topic}:{meta.partition}:{meta.offset}"

    async def add(self, meta: Meta) -> int:
        """Count one more failed attempt on ``meta``'s offset; return the total."""
        key = self.key(meta)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, self._ttl_s)
            count, _ = await pipe.execute()
        return int(count)

    async def close(self) -> None:
        await self._redis.aclose()


@dataclass
class Emitter:
    """Writes outcomes through ``send`` (which must wait for the broker's ack)."""

    send: Send
    strikes: Strikes
    codec: Codec
    deadletter_topic: str
    timeout_s: float
    max_strikes: int = 3
    die: Callable[[], NoReturn] = die

    async def emit(self, outcome: Outcome, meta: Meta, flow: str) -> Outcome:
        """Write ``outcome``, or its minimal dead letter; return what was written.

        Returns only once the broker has acknowledged a record for this input; otherwise the
        process exits before the input is acknowledged.
        """
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task per event, unlike wait_for
                await self.send(outcome)
        except Exception as exc:
            cause = unwritable(exc)
            if cause is not None:
                return await self._replace(outcome, meta, flow, cause, "the record is unwritable")
            return await self.strike(meta, flow, exc, outcome)
        for copy in outcome.copies:  # the event is in its lane; a copy only adds a review item
            try:
                async with asyncio.timeout(self.timeout_s):
                    await self.send(copy)
            except Exception as exc:
                if unwritable(exc) is None:
                    return await self.strike(meta, flow, exc, outcome)  # redelivered: both again
                log.error("emit.copy_unwritable", event_id=copy.event_id, topic=copy.topic,
                          error=f"{type(exc).__name__}: {exc}")  # fmt: skip
        return outcome

    async def strike(
        self, meta: Meta, flow: str, error: BaseException, outcome: Outcome | None = None
    ) -> Outcome:
        """One more failed attempt on this input: exit before the ack, or after
        ``max_strikes`` attempts give up on it with a minimal dead letter."""
        try:
            count = await self.strikes.add(meta)
        except Exception:
            log.critical("emit.strike_uncounted", exc_info=True)
            self.die()
        if count < self.max_strikes:
            log.critical(
                "emit.failed",
                topic=outcome.topic if outcome else None,
                event_id=outcome.event_id if outcome else None,
                strike=count,
                max_strikes=self.max_strikes,
                error=f"{type(error).__name__}: {error}",
                action="exit before ack; the event is redelivered",
            )
            self.die()
        return await self._replace(
            outcome, meta, flow, error, f"failed {count} times on this offset"
        )

    async def _replace(
        self,
        outcome: Outcome | None,
        meta: Meta,
        flow: str,
        error: BaseException,
        why: str,
    ) -> Outcome:
        lane = outcome.lane if outcome else "none"
        size = len(outcome.value) if outcome else 0
        reason: DeadLetterReason = "outcome_unwritable"
        dl = deadletter.minimal(
            meta,
            event_id=outcome.event_id if outcome else meta.derived_event_id(),
            flow=flow,
            reason=reason,
            message=(
                f"the {lane} outcome ({size} bytes) could not be written: {why}: "
                f"{type(error).__name__}: {error}"
            ),
            error_class=f"{type(error).__module__}.{type(error).__qualname__}",
            usage=outcome.usage if outcome else None,
        )
        replacement = Outcome.build(
            "deadletter",
            self.deadletter_topic,
            meta,
            self.codec.encode(dl),
            dl.event_id,
            f"{reason}: {dl.error_message}",
            extra_headers=deadletter.headers(dl),
            usage=dl.usage,
            key_fallback=True,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.send(replacement)
        except Exception:
            log.critical("emit.fallback_failed", event_id=dl.event_id, exc_info=True)
            self.die()
        log.error(
            "emit.replaced_by_minimal_deadletter",
            event_id=dl.event_id,
            lane=lane,
            original_bytes=size,
            error=dl.error_message,
            sha256=dl.original_sha256,
        )
        return replacement
