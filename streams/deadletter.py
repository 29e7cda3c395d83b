"""The dead-letter envelope: the original bytes, where they came from and why they failed.

The same facts go in the Avro :class:`~schemas.records.DeadLetter` value (for typed consumers)
and in Kafka Connect style headers (for tools that only look at headers, such as a redrive job).

A dead letter must always be writable, or one poison message stops its partition for good. So the
original value is embedded only while the record stays under the message size limit; past that
the record keeps the first :data:`ORIGINAL_PREFIX_BYTES`, the size, the sha256 and
``original_truncated=true``, and the whole value stays readable at ``source`` in the input topic.
:func:`minimal` builds the last-resort form (coordinates, reason, hash, no payload) from facts that
cannot fail to encode.

A dead letter is read by people and tools that should not see credentials, and it is kept as long
as the topic is: the error message, the stack trace and the headers go through
:func:`agents.redact.scrub` (a provider's error may echo the key it was sent, a driver's the URL
with its password). The original key and value are the user's input, kept as they came on purpose
so a redrive sends exactly them.
"""

from __future__ import annotations

import hashlib
import traceback
from datetime import UTC, datetime

from agents.redact import scrub
from schemas.errors import AgentError, BreakerOpen
from schemas.records import DeadLetter, DeadLetterReason, Source, Usage
from streams.meta import Meta

_REASONS: frozenset[str] = frozenset(DeadLetterReason.__args__)  # type: ignore[attr-defined]
_PREFIX = "__connect.errors."
#: How much of an original too large to embed is kept, for a first look without the input topic.
ORIGINAL_PREFIX_BYTES = 16 * 1024
#: Room left for the envelope, headers and Kafka's record overhead besides the original bytes.
ENVELOPE_BYTES = 32 * 1024
#: A key longer than this is not embedded either (keys are usually ids of a few bytes).
MAX_EMBEDDED_KEY_BYTES = 4 * 1024
MAX_MESSAGE_CHARS = 4000
MAX_STACK_CHARS = 8000


def reason_of(error: BaseException) -> DeadLetterReason:
    """The error's declared reason; an exception that is not ours is a bug: ``internal_error``."""
    reason = getattr(error, "reason", None)
    if reason is None:
        return "internal_error"
    return reason if reason in _REASONS else "other"


def _bounded(value: str, limit: int) -> str:
    """Bounded, and encodable as UTF-8 whatever the error put in it (lone surrogates)."""
    return value[:limit].encode("utf-8", "replace").decode("utf-8")


def _text(value: str, limit: int) -> str:
    """An error's text for the record: scrubbed of credentials, then :func:`_bounded` (scrubbed
    before the cut: a secret cut in two would no longer be recognised)."""
    return _bounded(scrub(value), limit)


def _stack(error: BaseException) -> str:
    """The traceback's last :data:`MAX_STACK_CHARS`, scrubbed before the cut (see :func:`_text`)."""
    try:
        return scrub("".join(traceback.format_exception(error)))[-MAX_STACK_CHARS:]
    except Exception:  # a pathological __str__ or a RecursionError inside the traceback
        return f"{type(error).__qualname__} (stack trace unavailable)"


def _message(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"{type(error).__qualname__} (message unavailable)"


def sha256(value: bytes | None) -> str | None:
    return hashlib.sha256(value).hexdigest() if value is not None else None


def dead_letter(
    error: BaseException,
    meta: Meta,
    *,
    event_id: str,
    flow: str,
    max_message_bytes: int,
    usage: Usage | None = None,
) -> DeadLetter:
    """The dead-letter record of ``error``, sized to fit ``max_message_bytes``.

    An agent error's token spend travels with it; ``usage`` is for other failures that happened
    after the model was called (encoding the result, say).
    """
    cls = type(error)
    if isinstance(error, AgentError | BreakerOpen) and error.usage is not None:
        usage = error.usage
    value = meta.value
    room = max(0, max_message_bytes - ENVELOPE_BYTES)
    key = meta.key if meta.key is None or len(meta.key) <= MAX_EMBEDDED_KEY_BYTES else None
    room -= len(key or b"")
    truncated = value is not None and len(value) > room
    return DeadLetter(
        event_id=event_id,
        flow=flow,
        reason=reason_of(error),
        error_class=f"{cls.__module__}.{cls.__qualname__}",
        error_message=_text(_message(error), MAX_MESSAGE_CHARS),
        stacktrace=_bounded(_stack(error), MAX_STACK_CHARS),
        attempts=usage.attempts if usage else 0,
        retriable=bool(getattr(error, "retriable", False)),
        source=Source(topic=meta.topic, partition=meta.partition, offset=meta.offset),
        original_key=key,
        original_value=value[: min(room, ORIGINAL_PREFIX_BYTES)] if truncated and value else value,
        original_size=len(value) if value is not None else None,
        original_sha256=sha256(value),
        original_truncated=truncated or key is not meta.key,
        original_timestamp=meta.timestamp,
        failed_at=datetime.now(UTC),
        usage=usage,
    )


def minimal(
    meta: Meta,
    *,
    event_id: str,
    flow: str,
    reason: DeadLetterReason,
    message: str,
    error_class: str,
    usage: Usage | None = None,
) -> DeadLetter:
    """The last-resort dead letter: coordinates, reason and hash, no payload.

    Written when the full outcome cannot be written (or built) at all, so the partition can move
    on; the original stays in the input topic at ``source`` for a redrive.
    """
    return DeadLetter(
        event_id=_bounded(event_id, 128),
        flow=flow,
        reason=reason,
        error_class=_text(error_class, 200),
        error_message=_text(message, MAX_MESSAGE_CHARS),
        stacktrace="",
        attempts=usage.attempts if usage else 0,
        retriable=False,
        source=Source(topic=meta.topic, partition=meta.partition, offset=meta.offset),
        original_key=None,
        original_value=None,
        original_size=len(meta.value) if meta.value is not None else None,
        original_sha256=sha256(meta.value),
        original_truncated=meta.value is not None or meta.key is not None,
        original_timestamp=meta.timestamp,
        failed_at=datetime.now(UTC),
        usage=usage,
    )


def headers(record: DeadLetter) -> list[tuple[str, bytes]]:
    """Kafka Connect's ``__connect.errors.*`` names, plus our reason and attempt count.

    The exception's texts are scrubbed again: a record built elsewhere (decoded from the topic
    for a redrive, say) may not have been.
    """
    pairs = {
        "topic": record.source.topic,
        "partition": str(record.source.partition),
        "offset": str(record.source.offset),
        "exception.class.name": scrub(record.error_class),
        "exception.message": scrub(record.error_message)[:1000],
        "exception.stacktrace": scrub(record.stacktrace)[-2000:],
        "sluice.reason": record.reason,
        "sluice.attempts": str(record.attempts),
        "sluice.retriable": str(record.retriable).lower(),
        "sluice.original.truncated": str(record.original_truncated).lower(),
    }
    if record.original_sha256:
        pairs["sluice.original.sha256"] = record.original_sha256
    return [(_PREFIX + k, v.encode()) for k, v in pairs.items()]
