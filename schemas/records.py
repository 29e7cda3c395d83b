"""Output records: what Sluice writes to the auto, review and dead-letter topics.

Each model mirrors one ``.avsc`` file under ``schemas/avro`` field for field (same names, same
order); the Avro file is the wire contract, this is its typed Python face.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

Lane = Literal["auto", "review", "deadletter"]
#: Money: Avro decimal(18, 2). Never a float.
Money = Annotated[Decimal, Field(max_digits=18, decimal_places=2)]
#: Quantities may be fractional (hours, kilograms): Avro decimal(12, 3).
Quantity = Annotated[Decimal, Field(max_digits=12, decimal_places=3)]
#: An estimate in US dollars: Avro decimal(12, 6), fine enough for per-call token prices.
Cost = Annotated[Decimal, Field(max_digits=12, decimal_places=6)]
TicketCategory = Literal["billing", "technical", "account", "shipping", "other"]
TicketPriority = Literal["low", "medium", "high", "urgent"]
Sentiment = Literal["negative", "neutral", "positive"]
Team = Literal["billing", "tech_support", "account_security", "logistics", "customer_success"]
DocumentKind = Literal["invoice", "credit_note"]
ActionKind = Literal[
    "route_to_team", "send_acknowledgement", "escalate", "request_information", "close_as_resolved"
]
DeadLetterReason = Literal[
    "poison_input",
    "model_output_invalid",
    "provider_unavailable",
    "config_error",
    "codec_error",
    "agent_error",
    "other",
    "model_refused",
    "output_truncated",
    "content_filtered",
    "token_budget_exceeded",
    "input_too_large",
    "input_too_deep",
    "context_exceeded",
    "outcome_unwritable",
    "internal_error",
    "breaker_open",
    "decision_unverified",
    "document_too_costly",
]
#: How one LLM call ended, as the client layer classified it.
AttemptOutcome = Literal[
    "ok",
    "rate_limited",
    "server_error",
    "timeout",
    "connection_error",
    "bad_request",
    "invalid_json",
    "schema_invalid",
    "business_invalid",
    "refused",
    "truncated",
    "content_filtered",
    "context_exceeded",
]


class _Record(BaseModel):
    # bytes (dead letters keep the original bytes) travel as base64 in JSON, never lossily.
    model_config = ConfigDict(
        frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


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


class AttemptUsage(_Record):
    """One LLM call: why it ended and what it cost. Failed calls are billed too."""

    attempt: int
    outcome: AttemptOutcome
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int


class Usage(_Record):
    """What the LLM step cost, failed attempts included."""

    attempts: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    per_attempt: list[AttemptUsage] = []
    cost_usd: Cost | None = None
    token_budget: int | None = None


class Confidence(_Record):
    """The routed score and every signal it was made from, so evals can judge each one."""

    score: float
    self_rated: float
    logprob: float | None
    validation: float
    method: str


class ProposedAction(_Record):
    """An action the agent proposes, with its own confidence for the per-action router."""

    action: ActionKind
    target: str | None
    """The action's argument, typed by its kind: for ``route_to_team`` a :data:`Team` (or None:
    the record's ``team``). Checked here for a model's answer and a reviewer's edit alike, and
    again by the tool's input model."""
    confidence: float

    @model_validator(mode="after")
    def _target_fits_action(self) -> ProposedAction:
        teams = get_args(Team)
        if self.action == "route_to_team" and self.target is not None and self.target not in teams:
            raise ValueError(f"route_to_team target must be one of {', '.join(teams)}")
        return self


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
    sentiment: Sentiment | None = None
    team: Team | None = None
    requires_human: bool | None = None
    reasoning: str | None = None
    actions: list[ProposedAction] = []
    confidence_detail: Confidence | None = None


class DeadLetter(_Record):
    """An event no agent could turn into a result, with the original bytes and the reason."""

    event_id: str
    flow: str
    reason: DeadLetterReason
    error_class: str
    error_message: str
    stacktrace: str
    attempts: int
    retriable: bool = False
    source: Source
    original_key: bytes | None
    original_value: bytes | None
    original_size: int | None = None
    original_sha256: str | None = None
    original_truncated: bool = False
    original_timestamp: datetime | None
    failed_at: datetime
    usage: Usage | None = None


class LineItem(_Record):
    """One invoice line as printed."""

    description: str
    quantity: Quantity
    unit_price: Money
    amount: Money


class InvoiceExtracted(_Record):
    """Fields extracted from one invoice document, on ``invoices.auto`` or ``invoices.review``."""

    event_id: str
    document_id: str
    vendor_name: str
    invoice_number: str | None
    """As printed; None when the document prints none (then in review, with a validation issue).
    Required like ``due_date``: a pipeline that forgot to pass it must fail, not write null."""
    issue_date: date
    due_date: date | None
    currency: str
    line_items: list[LineItem]
    subtotal: Money
    tax: Money
    total: Money
    field_confidence: dict[str, float]
    confidence: float
    agent: AgentInfo
    route: Route
    usage: Usage
    source: Source
    received_at: datetime
    processed_at: datetime
    validation_issues: list[str] = []
    confidence_detail: Confidence | None = None
    content_type: str | None = None
    document_kind: DocumentKind = "invoice"
    """``credit_note`` when the agent read the document as one: the only kind whose total may be
    negative, and never posted from the auto lane."""


ReviewVerdict = Literal["approve", "correct", "reject"]


class FieldChange(_Record):
    """One field a reviewer changed: the values before and after, as JSON text."""

    field: str
    before: str
    after: str


class ReviewDecision(_Record):
    """A person's decision on a result from a review lane, on ``*.reviewed``."""

    event_id: str
    flow: str
    reviewer: str
    verdict: ReviewVerdict
    corrections: dict[str, str]
    comment: str | None
    model_confidence: float
    decided_at: datetime
    decision_id: str = ""
    item: Source | None = None
    """The review-lane record decided (its coordinates): the key of "decided exactly once"."""
    changes: list[FieldChange] = []
    seconds_to_decision: float = 0.0
    """From the result's ``processed_at`` to ``decided_at``."""
    record: bytes | None = None
    """The result as decided (approved as is, or corrected), Avro single-object encoded: what the
    executor runs the actions of. None for a rejection."""
    second_reviewer: str | None = None
    """The second reviewer who confirmed a four-eyes decision (money above the flow's limit)."""
    item_sha256: str | None = None
    """SHA-256 (hex) of the review-lane record's value as read from the topic: what was decided."""
    key_id: str | None = None
    """Which of the review service's signing keys signed this decision."""
    signature: str | None = None
    """HMAC-SHA256 (hex) by the review service over the decision and ``item_sha256``; the
    executor runs nothing unsigned or wrongly signed."""


EffectStatus = Literal["applied", "duplicate", "failed", "unknown", "refused"]


class ToolEffect(_Record):
    """The outcome of one tool side effect, on ``effects.applied``."""

    event_id: str
    tool: str
    idempotency_key: str
    status: EffectStatus
    input_json: str
    result_json: str | None
    error: str | None
    attempts: int
    applied_at: datetime
    flow: str | None = None
    agent: str | None = None
    source: str | None = None
    reason: str | None = None
    reconciled: bool = False
    latency_ms: int = 0
