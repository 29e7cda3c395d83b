"""Input events: JSON on the ``*.received`` topics, validated by pydantic.

JSON because producers are often shell scripts and kcat; pydantic because a malformed event must be
rejected with a precise, recordable reason before any model is called.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic import ValidationError as PydanticValidationError

from schemas import jsonlimits
from schemas.errors import InputError, InputTooLarge, InvalidInput, UndecodableInput
from schemas.jsonlimits import DEFAULT_LIMITS, Limits

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
    """The customer's id in the producer's CRM, shown to the triage model next to the plan."""
    customer_plan: str | None = Field(default=None, max_length=40)
    """The customer's plan or tier as the producer's billing system names it ("free", "pro",
    "business", "enterprise"). Free text because every producer has its own plan names; bounded and
    normalised (lower case, one line, blank means absent) because it goes into the prompt, where the
    priority rules depend on it. Absent means unknown, not free."""
    channel: Channel = "web"
    subject: str = Field(default="", max_length=300)
    body: str = Field(default="", max_length=20_000)
    """The customer's message. Long enough for real tickets, bounded so one event can't blow the
    token budget. May be empty or null when the subject says it all (help desks send "Refund
    please" as a subject with no body); a ticket with neither is refused."""
    created_at: datetime | None = None

    @field_validator("subject", "body", mode="before")
    @classmethod
    def _null_is_empty(cls, value: object) -> object:
        # Help-desk exports write null for an empty field; it means the same as "".
        return "" if value is None else value

    @field_validator("customer_plan")
    @classmethod
    def _one_plan_name(cls, value: str | None) -> str | None:
        # One lower-case line: "Enterprise\n" and "enterprise" are the same plan, and a plan name
        # can never add a line of its own to the prompt.
        if value is None:
            return None
        return " ".join(value.split()).lower() or None

    @model_validator(mode="after")
    def _some_text(self) -> TicketReceived:
        if not self.subject and not self.body:
            # Nothing for the model to read: triaging it would be a guess, not a triage.
            raise ValueError("a ticket needs a non-empty subject or body; both are empty")
        return self


EventT = TypeVar("EventT", bound=BaseModel)


#: pydantic error types that mean "a bound was exceeded", not "the shape is wrong".
_SIZE_ERRORS = frozenset({"string_too_long", "too_long", "bytes_too_long"})


def parse_event(raw: bytes | None, model: type[EventT], limits: Limits = DEFAULT_LIMITS) -> EventT:
    """Decode one JSON event within ``limits``, raising a precise :class:`InputError` on any
    defect. Messages name fields and constraints, never the input's values."""
    data = jsonlimits.loads(raw, limits)
    if not isinstance(data, dict):
        raise UndecodableInput(f"value is JSON {type(data).__name__}, expected an object")
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        errors = exc.errors(include_input=False, include_url=False)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in errors
        )
        error = InputTooLarge if all(e["type"] in _SIZE_ERRORS for e in errors) else InvalidInput
        # from None: pydantic's own message quotes input_value, which must not reach a dead
        # letter's stack trace or a log line.
        raise error(f"{model.__name__} invalid: {problems}") from None


def peek_event_id(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """Best-effort ``event_id`` from a value that may be invalid, so dead letters keep it.

    Never raises for bad input: an event that cannot be parsed gets a derived id instead.
    """
    try:
        data = jsonlimits.loads(raw, limits)
    except InputError:
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
