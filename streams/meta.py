"""Where an input event came from, independent of faust's message type so tests need no broker."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

# Fixed namespace: the same topic/partition/offset always derives the same event id.
_EVENT_NS = uuid.UUID("6f1c1f1e-5d43-4d3b-9a59-3c1c5a6f0b7e")


@dataclass(frozen=True)
class Meta:
    topic: str
    partition: int
    offset: int
    timestamp: datetime | None
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def derived_event_id(self) -> str:
        """A stable id for events that carry none: the same on every redelivery."""
        return str(uuid.uuid5(_EVENT_NS, f"{self.topic}/{self.partition}/{self.offset}"))
