"""What one input event becomes: exactly one record for one lane, ready to write."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.records import Lane, Usage
from streams.meta import ATTEMPT_HEADER, FROM_HEADER, ORIGIN_HEADER, Meta

#: Headers copied from input to output so one trace follows an event through every topic, and a
#: redriven event's lineage (:mod:`streams.dlq`) reaches its result or its next dead letter.
PROPAGATED_HEADERS = ("traceparent", "tracestate", ATTEMPT_HEADER, ORIGIN_HEADER, FROM_HEADER)
#: W3C caps tracestate at 512 characters; anything longer is not a trace header we should copy.
MAX_PROPAGATED_HEADER_BYTES = 512
#: An input key longer than this is not reused as the output key (the event id is used instead).
MAX_KEY_BYTES = 4 * 1024


@dataclass(frozen=True)
class Outcome:
    """Exactly one record to write for one input event."""

    lane: Lane
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    event_id: str
    reason: str
    usage: Usage | None = None
    """What the LLM step cost, kept so a replacement dead letter can still report it."""
    copies: tuple[Outcome, ...] = ()
    """Review copies written after the record: an audit sample, or a result's held actions.
    Their ``route.lane`` stays the record's lane, which is where the event ended."""

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what counts against the message size limit."""
        return (
            len(self.key) + len(self.value) + sum(len(k.encode()) + len(v) for k, v in self.headers)
        )

    @classmethod
    def build(
        cls,
        lane: Lane,
        topic: str,
        meta: Meta,
        value: bytes,
        event_id: str,
        reason: str,
        *,
        extra_headers: list[tuple[str, bytes]] | None = None,
        usage: Usage | None = None,
        key_fallback: bool = False,
    ) -> Outcome:
        """The outcome for ``meta`` with our headers; the input key is kept (per-key order)
        unless it is absent or oversized (or ``key_fallback``), then the event id is the key."""
        headers = [
            (k, v)
            for k, v in meta.headers
            if k in PROPAGATED_HEADERS and len(v) <= MAX_PROPAGATED_HEADER_BYTES
        ]
        headers += [
            ("sluice.event_id", event_id.encode("utf-8", "replace")),
            ("sluice.lane", lane.encode()),
            ("sluice.reason", reason[:1000].encode("utf-8", "replace")),
        ]
        headers += extra_headers or []
        key = meta.key
        if key is None or len(key) > MAX_KEY_BYTES or (key_fallback and len(key) > 256):
            key = event_id.encode("utf-8", "replace")
        return cls(
            lane=lane,
            topic=topic,
            key=key,
            value=value,
            headers=headers,
            event_id=event_id,
            reason=reason,
            usage=usage,
        )
