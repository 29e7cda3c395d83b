"""Input events: JSON on the ``*.received`` topics, validated by pydantic.

JSON because producers are often shell scripts and kcat; pydantic because a malformed event must be
rejected with a precise, recordable reason before any model is called.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from schemas.errors import InvalidInput, UndecodableInput

Channel = Literal["email", "chat", "web", "phone", "api"]


class TicketReceived(BaseModel):
    """A customer support ticket as a producer writes it to ``tickets.received``."""

    # Unknown fields are ignored so producers can add fields before Sluice reads them.
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    event_id: str | None = Field(default=None, min_length=1, max_length=128)
    """Stable id of this event. If absent, Sluice derives one from topic/partition/offset."""
    ticket_id: str = Field(min_length=1, max_length=128)
    """The ticket's id in the help-desk system."""
    customer_id: str | None = Field(default=None, max_length=128)
    channel: Channel = "web"
    subject: str = Field(default="", max_length=300)
    body: str = Field(min_length=1, max_length=20_000)
    """The customer's message. Long enough for real tickets, bounded so one event can't blow the
    token budget."""
    created_at: datetime | None = None


EventT = TypeVar("EventT", bound=BaseModel)


def parse_event(raw: bytes | None, model: type[EventT]) -> EventT:
    """Decode one JSON event, raising a precise :class:`InputError` subclass on any defect."""
    if raw is None:
        raise UndecodableInput("empty message value (tombstone)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UndecodableInput(f"value is not UTF-8: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UndecodableInput(f"value is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UndecodableInput(f"value is JSON {type(data).__name__}, expected an object")
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise InvalidInput(f"{model.__name__} invalid: {problems}") from exc


def peek_event_id(raw: bytes | None) -> str | None:
    """Best-effort ``event_id`` from a value that may be invalid, so dead letters keep it."""
    try:
        data = json.loads(raw or b"")
    except (ValueError, UnicodeDecodeError):
        return None
    value = data.get("event_id") if isinstance(data, dict) else None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


ContentType = Literal["application/pdf", "text/plain"]


class DocumentReceived(BaseModel):
    """An invoice document as a producer writes it to ``documents.received``.

    The document travels inline (``content_base64`` for PDF or text bytes, or ``text``) or as a
    ``path`` relative to the worker's allowlisted document directory. Never a URL: a worker that
    fetched arbitrary URLs named in events would be a server-side request forgery hole.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    event_id: str | None = Field(default=None, min_length=1, max_length=128)
    document_id: str = Field(min_length=1, max_length=128)
    content_type: ContentType | None = None
    """Optional: inferred from the bytes (``%PDF-``) or the file suffix when absent."""
    content_base64: str | None = Field(default=None, max_length=14_000_000)
    """The document's bytes, base64; about 10 MB at most."""
    text: str | None = Field(default=None, max_length=200_000)
    path: str | None = Field(default=None, max_length=1024)
    """A file under SLUICE_DOCUMENT_DIR, relative to it."""

    @model_validator(mode="after")
    def _one_source(self) -> DocumentReceived:
        given = [n for n in ("content_base64", "text", "path") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of content_base64, text, path is required (got {given or 'none'})"
            )
        if self.path and "://" in self.path:
            raise ValueError("path must be a file under the document directory, not a URL")
        return self
