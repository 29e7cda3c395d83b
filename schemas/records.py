"""Output records: what Sluice writes to the auto, review and dead-letter topics.

Each model mirrors one ``.avsc`` file under ``schemas/avro`` field for field (same names, same
order); the Avro file is the wire contract, this is its typed Python face.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

Lane = Literal["auto", "review", "deadletter"]
TicketCategory = Literal["billing", "technical", "account", "shipping", "other"]
TicketPriority = Literal["low", "medium", "high", "urgent"]
DeadLetterReason = Literal[
    "poison_input",
    "model_output_invalid",
    "provider_unavailable",
    "config_error",
    "codec_error",
    "agent_error",
    "other",
]


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Source(_Record):
    """Where the input event was read: the key to replay it or find it again."""

    topic: str
    partition: int
    offset: int


class AgentInfo(_Record):
    """Which agent produced a result: evals compare results across these."""

    name: str
    version: str
    model: str
    prompt_version: str


class Route(_Record):
    """The routing decision and why it was taken."""

    lane: Lane
    reason: str
    threshold: float


class Usage(_Record):
    """What the LLM step cost, failed attempts included."""

    attempts: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int


class TicketTriaged(_Record):
    """A triaged support ticket, on ``tickets.auto`` or ``tickets.review``."""

    event_id: str
    ticket_id: str
    category: TicketCategory
    priority: TicketPriority
    summary: str
    confidence: float
    agent: AgentInfo
    route: Route
    usage: Usage
    source: Source
    received_at: datetime
    processed_at: datetime


class DeadLetter(_Record):
    """An event no agent could turn into a result, with the original bytes and the reason."""

    event_id: str
    flow: str
    reason: DeadLetterReason
    error_class: str
    error_message: str
    stacktrace: str
    attempts: int
    source: Source
    original_key: bytes | None
    original_value: bytes | None
    original_timestamp: datetime | None
    failed_at: datetime
