"""Dead letters for operators: list, show, and redrive them to where they came from.

``sluice dlq list|show|redrive`` reads the dead-letter topic from its start to its end *now* (new
dead letters written meanwhile wait for the next run), filtered by flow, reason, event id and
time of failure.

A redrive re-publishes each chosen dead letter's original key and value to its original input
topic (``source.topic``), with lineage headers:

- ``sluice.event_id``: the event id it had, so an event whose value carries none keeps it, and
  with it its idempotency keys: effects that already ran are not run again;
- ``sluice.redrive.attempt``: 1 on the first redrive, then one more each time;
- ``sluice.origin``: ``topic/partition/offset`` where the event first arrived;
- ``sluice.redrive.from``: the dead letter it was redriven from.

The worker copies these onto whatever the event becomes, so an event that fails again comes back
as a dead letter carrying its attempt number, and a dead letter whose attempt has reached
``SLUICE_REDRIVE_MAX_ATTEMPTS`` is reported ``exhausted`` and not sent again: no loops.

Each dead letter is redriven at most once (a Redis marker per dead-letter coordinate, kept 30
days), so running the same redrive twice sends nothing the second time. A dead letter whose
original was too large to embed (``original_truncated``) is redriven from its source coordinates
in the input topic, checked against the recorded sha256; if retention has deleted it, it is
reported ``source_gone``. Dead letters of a flow whose circuit breaker is open are held back
(``breaker_open``) unless forced: they would only come back.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from schemas.codec import Codec
from schemas.records import DeadLetter
from streams.compose import breaker_for
from streams.meta import ATTEMPT_HEADER, EVENT_ID_HEADER, FROM_HEADER, ORIGIN_HEADER
from streams.settings import Settings
from streams.topics import read_at, read_to_end

LINEAGE_HEADERS = (EVENT_ID_HEADER, ATTEMPT_HEADER, ORIGIN_HEADER, FROM_HEADER)
MARKER_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Letter:
    """One record of the dead-letter topic, decoded, with its lineage."""

    topic: str
    partition: int
    offset: int
    headers: dict[str, str]
    record: DeadLetter | None
    error: str | None = None
    """Why the record could not be decoded (then ``record`` is None)."""

    @property
    def coordinates(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def attempt(self) -> int:
        """How many redrives the failed event had been through (0: it failed on arrival)."""
        try:
            return max(0, int(self.headers.get(ATTEMPT_HEADER, "0")))
        except ValueError:
            return 0

    @property
    def origin(self) -> str:
        """Where the event first arrived."""
        if ORIGIN_HEADER in self.headers:
            return self.headers[ORIGIN_HEADER]
        s = self.record.source if self.record else None
        return f"{s.topic}/{s.partition}/{s.offset}" if s else ""

    def summary(self) -> dict[str, Any]:
        """The line ``sluice dlq list`` prints."""
        r = self.record
        line: dict[str, Any] = {"deadletter": self.coordinates, "attempt": self.attempt}
        if r is None:
            return {**line, "error": self.error}
        return {
            **line,
            "event_id": r.event_id,
            "flow": r.flow,
            "reason": r.reason,
            "failed_at": r.failed_at.isoformat(),
            "source": f"{r.source.topic}/{r.source.partition}/{r.source.offset}",
            "origin": self.origin,
            "truncated": r.original_truncated,
            "message": r.error_message[:200],
        }

    def detail(self) -> dict[str, Any]:
        """Everything about one dead letter, for ``sluice dlq show``: the original as text when
        it is UTF-8, else base64."""
        if self.record is None:
            return {**self.summary(), "headers": self.headers}
        out = self.record.model_dump(mode="json")
        value = self.record.original_value
        if value is not None:
            try:
                out["original_value"] = value.decode("utf-8")
                out["original_value_encoding"] = "utf-8"
            except UnicodeDecodeError:
                out["original_value_encoding"] = "base64"
        return {"deadletter": self.coordinates, "attempt": self.attempt, "origin": self.origin,
                "headers": self.headers, "record": out}  # fmt: skip


@dataclass(frozen=True)
class Filter:
    """Which dead letters an operator means; an empty field matches everything."""

    flows: frozenset[str] = frozenset()
    reasons: frozenset[str] = frozenset()
    event_ids: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.flows or self.reasons or self.event_ids or self.since or self.until)

    def matches(self, letter: Letter) -> bool:
        r = letter.record
        if r is None:
            return self.empty
        return (
            (not self.flows or r.flow in self.flows)
            and (not self.reasons or r.reason in self.reasons)
            and (not self.event_ids or r.event_id in self.event_ids)
            and (self.since is None or r.failed_at >= self.since)
            and (self.until is None or r.failed_at < self.until)
        )


async def read_letters(settings: Settings, codec: Codec, wanted: Filter = Filter()) -> list[Letter]:
    """Every dead letter matching ``wanted``, from the topic's start to its end at call time."""
    letters: list[Letter] = []
    async for m in read_to_end(settings, [settings.topics.deadletter]):
        letter = _letter(m, codec)
        if wanted.matches(letter):
            letters.append(letter)
    return sorted(letters, key=lambda x: (x.partition, x.offset))


def _letter(message: Any, codec: Codec) -> Letter:
    headers = {k: v.decode("utf-8", "replace") for k, v in message.headers or ()}
    try:
        record = codec.decode(message.value or b"")
    except Exception as exc:  # a corrupt or foreign record in the topic: shown, never redriven
        return Letter(message.topic, message.partition, message.offset, headers, None, str(exc))
    if not isinstance(record, DeadLetter):
        error = f"not a DeadLetter but {type(record).__name__}"
        return Letter(message.topic, message.partition, message.offset, headers, None, error)
    return Letter(message.topic, message.partition, message.offset, headers, record)


@dataclass
class Report:
    """What a redrive did with each dead letter it was given."""

    statuses: dict[str, str] = field(default_factory=dict)
    """Dead-letter coordinates → ``redriven``, ``would_redrive`` (dry run), ``already_redriven``,
    ``exhausted``, ``source_gone``, ``source_mismatch``, ``breaker_open``, ``unreadable``, or
    ``send_failed`` and ``not_attempted`` when Kafka or Redis failed on the way."""
    sent: dict[str, str] = field(default_factory=dict)
    """Dead-letter coordinates → where its event was re-published (``topic/partition/offset``)."""
    error: str | None = None
    """Why sending stopped (Kafka or Redis failed): the letters after it are ``not_attempted``
    and a later redrive picks them up."""

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.statuses.values()))


#: W3C trace context a redrive carries from the dead letter onto the redriven event.
TRACE_HEADERS = ("traceparent", "tracestate")


class Redriver:
    """Re-publishes dead letters to their input topics, once each, with lineage headers."""

    def __init__(
        self, settings: Settings, *, max_attempts: int | None = None, force: bool = False
    ) -> None:
        self.settings = settings
        self.max_attempts = max_attempts or settings.redrive_max_attempts
        self.force = force
        self.prefix = f"sluice:{settings.app_id}:dlq.redriven"

    def marker(self, letter: Letter) -> str:
        return f"{self.prefix}:{letter.coordinates}"

    async def redriven(self, letters: Sequence[Letter]) -> set[str]:
        """The coordinates of those already redriven."""
        if not letters:
            return set()
        redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
        try:
            found = await redis.mget([self.marker(x) for x in letters])
        finally:
            await redis.aclose()
        return {x.coordinates for x, v in zip(letters, found, strict=True) if v is not None}

    async def run(self, letters: Iterable[Letter], *, dry_run: bool = False) -> Report:
        """Redrive ``letters``; see the module docstring for what is held back and why."""
        report = Report()
        letters = list(letters)
        blocked = set() if self.force else await self._open_breakers({
            x.record.flow for x in letters if x.record is not None
        })  # fmt: skip
        done = await self.redriven(letters)
        todo: list[Letter] = []
        for x in letters:
            status = self._held_back(x, done, blocked)
            if status:
                report.statuses[x.coordinates] = status
            elif dry_run:
                report.statuses[x.coordinates] = "would_redrive"
            else:
                todo.append(x)
        if not todo:
            return report
        originals = await self._originals([x for x in todo if _needs_source(x)])
        redis = aioredis.Redis.from_url(self.settings.redis_url, socket_timeout=5)
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            max_request_size=self.settings.max_message_bytes,
        )
        try:
            await producer.start()
            for i, x in enumerate(todo):
                try:
                    status = await self._one(x, originals, redis, producer, report)
                except (KafkaError, RedisError) as exc:  # stop: the rest would fail the same way
                    report.statuses[x.coordinates] = "send_failed"
                    report.error = f"{type(exc).__name__}: {exc}"
                    report.statuses.update((y.coordinates, "not_attempted") for y in todo[i + 1 :])
                    break
                report.statuses[x.coordinates] = status
        finally:
            await producer.stop()
            await redis.aclose()
        return report

    def _held_back(self, x: Letter, done: set[str], blocked: set[str]) -> str | None:
        if x.record is None:
            return "unreadable"
        if x.coordinates in done:
            return "already_redriven"
        if x.attempt >= self.max_attempts:
            return "exhausted"
        if x.record.flow in blocked:
            return "breaker_open"
        return None

    async def _one(
        self, x: Letter, originals: dict[str, Any], redis: aioredis.Redis,
        producer: AIOKafkaProducer, report: Report,
    ) -> str:  # fmt: skip
        r = x.record
        assert r is not None
        headers: list[tuple[str, bytes]] = []
        if _needs_source(x):
            found = originals.get(x.coordinates)
            if found is None:
                return "source_gone"
            key, value, source_headers = found
            if r.original_sha256 and hashlib.sha256(value or b"").hexdigest() != r.original_sha256:
                return "source_mismatch"
            headers += [(k, v) for k, v in source_headers if k not in LINEAGE_HEADERS]
        else:
            key, value = r.original_key, r.original_value
            # The same trace goes on: the redriven run is a child of the span that failed.
            headers += [(k, x.headers[k].encode()) for k in TRACE_HEADERS if k in x.headers]
        headers += [
            (EVENT_ID_HEADER, r.event_id.encode()),
            (ATTEMPT_HEADER, str(x.attempt + 1).encode()),
            (ORIGIN_HEADER, x.origin.encode()),
            (FROM_HEADER, x.coordinates.encode()),
        ]
        claim = json.dumps({"event_id": r.event_id, "attempt": x.attempt + 1})
        if not await redis.set(self.marker(x), claim, nx=True, ex=MARKER_TTL_S):
            return "already_redriven"  # another redrive took it meanwhile
        try:
            sent = await producer.send_and_wait(r.source.topic, value, key=key, headers=headers)
        except BaseException:
            await redis.delete(self.marker(x))  # not sent: a later redrive may try again
            raise
        report.sent[x.coordinates] = f"{sent.topic}/{sent.partition}/{sent.offset}"
        return "redriven"

    async def _open_breakers(self, flows: set[str]) -> set[str]:
        if self.settings.breaker == "off" or not flows:
            return set()
        blocked = set()
        for flow in flows:
            breaker = breaker_for(self.settings, flow)
            try:
                if await breaker.state() in ("open", "forced_open"):
                    blocked.add(flow)
            finally:
                await breaker.redis.aclose()
        return blocked

    async def _originals(
        self, letters: Sequence[Letter]
    ) -> dict[str, tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]]:
        """Key, value and headers at each letter's source coordinates, where still there."""
        if not letters:
            return {}
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        found: dict[str, tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = {}
        try:
            for x in letters:
                s = x.record.source  # type: ignore[union-attr]
                m = await read_at(consumer, s.topic, s.partition, s.offset)
                if m is not None:
                    found[x.coordinates] = (m.key, m.value, list(m.headers or ()))
        finally:
            await consumer.stop()
        return found


def _needs_source(letter: Letter) -> bool:
    """Whether the original must be read back from the input topic (it was not embedded whole)."""
    r = letter.record
    return r is not None and r.original_truncated
