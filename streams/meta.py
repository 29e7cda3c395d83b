"""Where an input event came from, independent of faust's message type so tests need no broker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

# Fixed namespace: the same topic/partition/offset always derives the same event id.
_EVENT_NS = uuid.UUID("6f1c1f1e-5d43-4d3b-9a59-3c1c5a6f0b7e")
#: The header a redrive (``sluice dlq redrive``) puts the dead letter's event id in, so an event
#: whose value carries no id keeps the one it first had (and so its idempotency keys).
EVENT_ID_HEADER = "sluice.event_id"
#: The rest of a redriven event's lineage (:mod:`streams.dlq`): which redrive this is, where the
#: event first arrived, and the dead letter it was redriven from.
ATTEMPT_HEADER = "sluice.redrive.attempt"
ORIGIN_HEADER = "sluice.origin"
FROM_HEADER = "sluice.redrive.from"
MAX_EVENT_ID_CHARS = 128


@dataclass(frozen=True)
class Meta:
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text; None when absent or not UTF-8."""
        for key, value in reversed(self.headers):
            if key == name:
                try:
                    return value.decode("utf-8")
                except UnicodeDecodeError:
                    return None
        return None

    def derived_event_id(self) -> str:
        """A stable id for events whose value carries none: the id a redrive carried in the
        ``sluice.event_id`` header, else one derived from the coordinates (the same on every
        redelivery)."""
        carried = self.header(EVENT_ID_HEADER)
        if carried and len(carried) <= MAX_EVENT_ID_CHARS and carried.isprintable():
            return carried
        return str(uuid.uuid5(_EVENT_NS, f"{self.topic}/{self.partition}/{self.offset}"))
