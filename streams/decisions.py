"""Reviewers' decisions, signed by the review service and verified by the executor.

Anyone who can write to ``<flow>.reviewed`` could otherwise make the executor run anything "as a
person decided". So the review service signs every :class:`~schemas.records.ReviewDecision` with
HMAC-SHA256 over a canonical encoding of everything the decision says (:func:`signed_bytes`):
who decided (and who confirmed, with four eyes), the verdict, the review-lane record's coordinates
and the SHA-256 of its bytes as read from the topic, the SHA-256 of the record to run, and when.
The executor (:class:`DecisionCheck`) runs a decision only when

1. it is signed by a key it holds (by key id: the first key signs, every key verifies, so keys
   rotate without a stop), and the signature matches, compared in constant time;
2. the reviewer (and a second reviewer) is named in the reviewers file as it is now;
3. it belongs to this flow, names a record on this flow's review lane, and that record, read
   from Kafka at its coordinates, has the signed hash; the record to run is of the same event
   (for an approval: the same record; for a correction: the same envelope).

Anything else raises :class:`~schemas.errors.UnverifiedDecision`: nothing runs, the decision is
dead-lettered. This module is below both the review service and the executor, so neither
imports the other.

Keys come from ``SLUICE_DECISION_KEYS``; without it, from ``SLUICE_DECISION_KEY_FILE``, created
(mode 0600) on first use by whichever process needs it first — good for one machine only.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import BaseModel

from agents.redact import register_secret
from schemas.codec import Codec
from schemas.errors import ConfigError, UnverifiedDecision
from schemas.records import ReviewDecision, Source
from streams.flow import Envelope
from streams.keyfile import private_key_file
from streams.review.auth import ReviewerBook
from streams.settings import Settings
from streams.topics import read_at

log = structlog.get_logger(__name__)

DOMAIN = "sluice.review_decision.v1"
"""Signed first, so a signature over a decision can never pass for one over anything else."""

MIN_SECRET_CHARS = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ENVELOPE = frozenset(Envelope.__annotations__)

SIGNED = frozenset(
    {
        "event_id", "flow", "reviewer", "second_reviewer", "verdict", "corrections", "comment",
        "model_confidence", "decided_at", "decision_id", "item", "changes",
        "seconds_to_decision", "record", "item_sha256", "key_id",
    }
)  # fmt: skip
"""Every field of a ReviewDecision the signature covers (``record`` by its SHA-256): all but the
signature itself. A field added to the record must be added here (a unit test says so)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def millis(at: datetime) -> int:
    """Milliseconds since the epoch, truncated as Avro's timestamp-millis stores them."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(milliseconds=1)


def signed_bytes(d: ReviewDecision) -> bytes:
    """The canonical encoding of ``d`` that is signed: sorted-key JSON of :data:`SIGNED`, the
    embedded record by its hash and the time in whole milliseconds, so the bytes are the same
    before and after the decision's trip through Avro."""
    body = {
        "domain": DOMAIN,
        "event_id": d.event_id,
        "flow": d.flow,
        "reviewer": d.reviewer,
        "second_reviewer": d.second_reviewer,
        "verdict": d.verdict,
        "corrections": d.corrections,
        "comment": d.comment,
        "model_confidence": d.model_confidence,
        "decided_at": millis(d.decided_at),
        "decision_id": d.decision_id,
        "item": None if d.item is None else [d.item.topic, d.item.partition, d.item.offset],
        "changes": [[c.field, c.before, c.after] for c in d.changes],
        "seconds_to_decision": d.seconds_to_decision,
        "record_sha256": None if d.record is None else sha256(d.record),
        "item_sha256": d.item_sha256,
        "key_id": d.key_id,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


class DecisionKeys:
    """Signing keys by id, newest first: the first signs, every one verifies."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("no decision signing key")
        self._keys = dict(keys)
        self.signing_id = keys[0][0]

    @classmethod
    def parse(cls, text: str, where: str = "SLUICE_DECISION_KEYS") -> DecisionKeys:
        """``kid:secret,kid:secret`` (commas or newlines between pairs)."""
        pairs: list[tuple[str, bytes]] = []
        for part in re.split(r"[,\n]", text):
            if not part.strip():
                continue
            kid, sep, secret = part.strip().partition(":")
            if not sep or not _KID.match(kid):
                raise ConfigError(f"{where}: each entry is kid:secret (kid of A-Z a-z 0-9 . _ -)")
            if len(secret) < MIN_SECRET_CHARS:
                raise ConfigError(
                    f"{where}: the secret of key {kid!r} is shorter than {MIN_SECRET_CHARS} chars"
                )
            if kid in dict(pairs):
                raise ConfigError(f"{where}: key id {kid!r} appears twice")
            register_secret(secret)
            pairs.append((kid, secret.encode()))
        return cls(pairs)

    def _mac(self, kid: str, decision: ReviewDecision) -> str | None:
        key = self._keys.get(kid)
        if key is None:
            return None
        return hmac.new(key, signed_bytes(decision), hashlib.sha256).hexdigest()

    def sign(self, decision: ReviewDecision) -> ReviewDecision:
        """``decision`` with ``key_id`` and ``signature`` set by the newest key. ``decided_at``
        is cut to whole milliseconds first: that is all Avro keeps of it."""
        at = decision.decided_at
        whole = at.replace(microsecond=at.microsecond // 1000 * 1000)
        unsigned = decision.model_copy(update={"decided_at": whole, "key_id": self.signing_id})
        mac = self._mac(self.signing_id, unsigned)
        return unsigned.model_copy(update={"signature": mac})

    def verify(self, decision: ReviewDecision) -> None:
        """Raise :class:`UnverifiedDecision` unless one of our keys signed exactly this."""
        if not decision.signature or not decision.key_id:
            raise UnverifiedDecision("the decision is not signed")
        expected = self._mac(decision.key_id, decision)
        if expected is None:
            raise UnverifiedDecision(
                f"the decision is signed with an unknown key id {_show(decision.key_id)}"
            )
        if not hmac.compare_digest(
            expected.encode(), decision.signature.encode("utf-8", "replace")
        ):
            raise UnverifiedDecision("the decision's signature does not match its content")


def _show(text: str) -> str:
    """An attacker's string, short and printable, for an error message."""
    return repr(text[:64])


def load_keys(settings: Settings) -> DecisionKeys:
    """The deployment's decision keys: ``SLUICE_DECISION_KEYS``, else the key file (made on
    first use)."""
    if settings.decision_keys is not None:
        return DecisionKeys.parse(settings.decision_keys.get_secret_value())
    path = settings.decision_key_file
    return DecisionKeys.parse(key_file(path), str(path))


def key_file(path: Path) -> str:
    """The contents of the decision key file at ``path``, made with a fresh ``local:<secret>``
    key on first use (:func:`~streams.keyfile.private_key_file`)."""
    return private_key_file(path, lambda: f"local:{secrets.token_urlsafe(32)}")


@dataclass
class DecisionCheck:
    """Everything the executor checks of one flow's decisions (see the module docstring)."""

    flow: str
    review_topic: str
    keys: DecisionKeys
    reviewers: ReviewerBook | None
    """The reviewers file as it is now; None (no ``SLUICE_REVIEWERS_FILE``): no reviewed
    decision runs, for nobody can be told from a reviewer."""
    codec: Codec

    def check(self, d: ReviewDecision) -> None:
        """The checks that need no Kafka read: signature, reviewers, flow, lane."""
        self.keys.verify(d)
        if self.reviewers is None:
            raise UnverifiedDecision(
                "SLUICE_REVIEWERS_FILE is not set for the executor: it cannot tell a reviewer "
                "from anyone, so it runs no reviewed decision"
            )
        names = self.reviewers.current().reviewers
        if d.reviewer not in names:
            raise UnverifiedDecision(f"{_show(d.reviewer)} is not in the reviewers file")
        if d.second_reviewer is not None and (
            d.second_reviewer not in names or d.second_reviewer == d.reviewer
        ):
            raise UnverifiedDecision(f"second reviewer {_show(d.second_reviewer)} is not valid")
        if d.flow != self.flow:
            raise UnverifiedDecision(f"a decision of flow {_show(d.flow)} on {self.flow}'s topic")
        if d.item is None or d.item.topic != self.review_topic or not d.item_sha256:
            raise UnverifiedDecision(f"the decision names no record of {self.review_topic}")

    def decided(self, d: ReviewDecision, lane_value: bytes | None) -> BaseModel | None:
        """The record to run as decided (None for a rejection), once the review-lane record the
        decision names (``lane_value``, read at ``d.item``) is shown to be what was decided."""
        if d.item is None or d.item_sha256 is None:  # check() refuses these first
            raise UnverifiedDecision("the decision names no review-lane record")
        where = f"{d.item.topic}/{d.item.partition}/{d.item.offset}"
        if lane_value is None:
            raise UnverifiedDecision(f"the review-lane record {where} is gone: cannot verify")
        if not hmac.compare_digest(sha256(lane_value).encode(), d.item_sha256.encode()):
            raise UnverifiedDecision(f"the review-lane record {where} is not the one decided")
        lane = self.codec.decode(lane_value)
        if getattr(lane, "event_id", None) != d.event_id:
            raise UnverifiedDecision(f"the review-lane record {where} is of another event")
        if d.verdict == "reject":
            if d.record is not None:
                raise UnverifiedDecision("a rejection carries a record to run")
            return None
        if d.record is None:
            raise UnverifiedDecision(f"an {d.verdict} decision carries no record to run")
        record = self.codec.decode(d.record)
        if type(record) is not type(lane) or getattr(record, "event_id", None) != d.event_id:
            raise UnverifiedDecision("the decided record is not of the review-lane record's event")
        if d.verdict == "approve" and _json(record) != _json(lane):
            raise UnverifiedDecision("the approved record differs from the review-lane record")
        if d.verdict == "correct" and _json(record, _ENVELOPE) != _json(lane, _ENVELOPE):
            raise UnverifiedDecision("the corrected record changes the lane record's envelope")
        return record


def _json(record: BaseModel, fields: frozenset[str] | None = None) -> str:
    """``record`` (or only ``fields`` of it) as comparable text: equal values, equal text."""
    dumped = record.model_dump(mode="json", include=None if fields is None else set(fields))
    return json.dumps(dumped, sort_keys=True)


class LaneRecords:
    """Reads the review-lane record a decision names: one Kafka read per reviewed decision, on
    one consumer (no group, nothing committed) that decisions take turns on. A read that fails
    is retried; then the error goes up and the process exits before the ack (redelivered)."""

    def __init__(self, settings: Settings, attempts: int = 3) -> None:
        self.settings = settings
        self.attempts = attempts
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()

    async def value_at(self, where: Source) -> bytes | None:
        async with self._lock:
            for attempt in range(1, self.attempts + 1):
                try:
                    if self._consumer is None:
                        self._consumer = await self._start()
                    found = await read_at(
                        self._consumer, where.topic, where.partition, where.offset
                    )
                    return None if found is None else bytes(found.value or b"")
                except (KafkaError, TimeoutError):
                    if attempt == self.attempts:
                        raise
                    log.warning("decision.lane_unreadable", attempt=attempt, exc_info=True)
                    await asyncio.sleep(attempt)
        return None  # unreachable: the last attempt returns or raises

    async def _start(self) -> AIOKafkaConsumer:
        s = self.settings
        consumer = AIOKafkaConsumer(
            bootstrap_servers=s.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_bytes=max(52_428_800, s.max_message_bytes),
            max_partition_fetch_bytes=s.max_message_bytes,
        )
        await consumer.start()
        return consumer

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
