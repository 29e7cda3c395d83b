"""The dead-letter envelope: the original bytes, where they came from and why they failed.

The same facts go in the Avro :class:`~schemas.records.DeadLetter` value (for typed consumers)
and in Kafka Connect style headers (for tools that only look at headers, such as a redrive job).
"""

from __future__ import annotations

import traceback
from datetime import UTC, datetime

from schemas.errors import AgentError
from schemas.records import DeadLetter, DeadLetterReason, Source
from streams.meta import Meta

_REASONS: frozenset[str] = frozenset(DeadLetterReason.__args__)  # type: ignore[attr-defined]
_PREFIX = "__connect.errors."


def reason_of(error: BaseException) -> DeadLetterReason:
    reason = getattr(error, "reason", "other")
    return reason if reason in _REASONS else "other"  # type: ignore[return-value]


def dead_letter(error: BaseException, meta: Meta, *, event_id: str, flow: str) -> DeadLetter:
    """The dead-letter record of ``error``; an agent error's token spend travels with it."""
    cls = type(error)
    usage = error.usage if isinstance(error, AgentError) else None
    return DeadLetter(
        event_id=event_id,
        flow=flow,
        reason=reason_of(error),
        error_class=f"{cls.__module__}.{cls.__qualname__}",
        error_message=str(error)[:4000],
        stacktrace="".join(traceback.format_exception(error))[-8000:],
        attempts=usage.attempts if usage else 0,
        retriable=bool(getattr(error, "retriable", False)),
        source=Source(topic=meta.topic, partition=meta.partition, offset=meta.offset),
        original_key=meta.key,
        original_value=meta.value,
        original_timestamp=meta.timestamp,
        failed_at=datetime.now(UTC),
        usage=usage,
    )


def headers(record: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka Connect's ``__connect.errors.*`` names, plus our reason and attempt count."""
    pairs = {
        "topic": record.source.topic,
        "partition": str(record.source.partition),
        "offset": str(record.source.offset),
        "exception.class.name": record.error_class,
        "exception.message": record.error_message[:1000],
        "exception.stacktrace": record.stacktrace[-2000:],
        "sluice.reason": record.reason,
        "sluice.attempts": str(record.attempts),
        "sluice.retriable": str(record.retriable).lower(),
    }
    return [(_PREFIX + k, v.encode()) for k, v in pairs.items()]
