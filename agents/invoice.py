"""InvoiceExtractionAgent: one job — a document in, validated invoice fields out.

It does not classify, route or write anywhere. Beyond the schema it checks what an accounts-payable
clerk would (:func:`business_problems`): line items add up to the subtotal, total = subtotal + tax,
the due date is not before the issue date, the currency is ISO 4217. A violation is re-asked with
the numbers spelled out; if it persists the answer is returned with its issues, because an invoice
whose printed totals disagree may be the vendor's error, which a person must see, not a dead letter.

Some answers are right and still need a person: an invoice that prints no invoice number is read
correctly as ``invoice_number: null``. Re-asking cannot fix what is not on the page, so those are
:func:`review_flags`, kept apart from the re-ask problems and added to the issues the stream routes
to review.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import pycountry
from pydantic import BaseModel, Field, WithJsonSchema, field_validator

from agents.base import AgentResult
from agents.calibration import Calibration, check_calibration
from agents.confidence import combine, value_probability
from agents.documents import Document, load
from agents.llm import Completion, LLMClient
from agents.prompt import load_prompt
from schemas.events import DocumentReceived
from schemas.records import Confidence, DocumentKind, InvoiceExtracted, LineItem

PROMPT_VERSION = "invoice_extraction.v3"
AGENT_NAME = "invoice-extraction"
AGENT_VERSION = "0.3.0"
CENT = Decimal("0.01")
#: Printed amounts are rounded per line; allow a cent of drift per line item.
LINE_TOLERANCE = Decimal("0.01")

#: Larger than any invoice amount (Avro decimal(18, 2) holds 16 integer digits).
LIMIT = Decimal(10) ** 15
#: Money as a JSON number in the schema the model sees; parsed to Decimal, never a float. A model
#: that prints 1e300 fails validation (and is re-asked) instead of overflowing the arithmetic.
Amount = Annotated[Decimal, Field(gt=-LIMIT, lt=LIMIT), WithJsonSchema({"type": "number"})]
#: The scalar fields whose confidence is measured one by one.
FIELDS = ("vendor_name", "invoice_number", "issue_date", "due_date", "currency")
AMOUNTS = ("subtotal", "tax", "total")

#: Line items an answer may list. Real invoices run to 50 lines and more (a wholesale order, a month
#: of metered cloud usage); 200 covers them with room and still bounds what a looping model writes.
MAX_LINE_ITEMS = 200
#: The answer's size in output tokens: about 150 for the fixed fields, about 40 per line item
#: ({"description": <= 80 characters, "quantity", "unit_price", "amount"}), counted here as 48 for
#: long descriptions and pretty-printed JSON. Too little is fatal (``output_truncated``, a dead
#: letter), too much only reserves budget, so the estimate errs high.
ANSWER_BASE_TOKENS = 150
TOKENS_PER_LINE = 48
#: Floor: the old fixed allowance, enough for a 12-line invoice.
MIN_ANSWER_TOKENS = 640
#: Cap: the largest answer the schema admits by the same estimate (9,750); a larger allowance would
#: only let a looping model spend it.
MAX_ANSWER_TOKENS = ANSWER_BASE_TOKENS + TOKENS_PER_LINE * MAX_LINE_ITEMS
_DIGIT = re.compile(r"\d")

NO_INVOICE_NUMBER = "invoice_number: none printed on the document; a person must assign one"


def answer_tokens(text: str) -> int:
    """``max_tokens`` for extracting ``text``: the estimate above for as many line items as the
    document has text lines with a digit, between the floor and the cap.

    Every billed line prints at least its amount, so lines with a digit bound the line items from
    above; headings, names and terms without digits do not count. A 50-line JSON answer is about
    6.6k characters: 2,200 tokens even at 3 characters a token, 1,650 at a typical 4.

    Checked against the default per-event budget (``SLUICE_LLM_TOKEN_BUDGET`` = 12,000; the LLM
    layer refuses a call whose prompt estimate, at 3 characters a token, plus ``max_tokens`` could
    pass it) on the eval renderings of a 50-line invoice (text: 4.8k characters, 58 lines with a
    digit; PDF: 3.5k characters, 58 lines):

    - ``max_tokens`` = 150 + 48 x 58 = 2,934; with a prompt estimate of 2,370 (prompt v2 and the
      text document) the first call reserves 5,300;
    - it spends about 3,400 (1,800 prompt + 1,650 completion), so a re-ask, whose prompt estimate
      is 4,670 with the whole answer and the problems, reserves 7,600 more: 11,000 <= 12,000. A
      50-line invoice gets an answer and one re-ask under the default budget; the third answer
      that ``SLUICE_LLM_MAX_VALIDATION_ATTEMPTS`` = 3 allows does not fit, and the LLM layer does
      not send it.
    - a 200-line invoice (16.8k characters) reserves 9,750 + 6,370 = 16,100 for its first call: it
      needs ``SLUICE_LLM_TOKEN_BUDGET`` >= 16,100 for one answer (about 36,000 with a re-ask) and is
      dead-lettered ``token_budget_exceeded`` under the default.
    """
    lines = sum(1 for line in text.splitlines() if _DIGIT.search(line))
    estimate = ANSWER_BASE_TOKENS + TOKENS_PER_LINE * lines
    return max(MIN_ANSWER_TOKENS, min(MAX_ANSWER_TOKENS, estimate))


def user_message(text: str) -> str:
    """The document as the model reads it."""
    return f"Document:\n\n{text}"


class LineItemAnswer(BaseModel):
    description: str = Field(max_length=80)
    quantity: Amount
    unit_price: Amount
    amount: Amount


class InvoiceAnswer(BaseModel):
    """What the model must return."""

    document_kind: DocumentKind = "invoice"
    """``credit_note`` for a credit note (money back from the vendor): the only document whose
    amounts may be negative. Read first, so the signs that follow agree with it."""
    vendor_name: str = Field(max_length=120)
    invoice_number: str | None = Field(max_length=64)
    """As printed; null when the document prints none (a review flag, not an error: the model read
    the page right, and only a person can assign a number)."""
    issue_date: date
    due_date: date | None
    currency: str = Field(max_length=3)
    line_items: list[LineItemAnswer] = Field(max_length=MAX_LINE_ITEMS)
    subtotal: Amount
    tax: Amount
    total: Amount
    confidence: float

    @field_validator("invoice_number")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        # A model that writes "" or " " for a missing number means null; never pass a blank on as
        # if it were a number someone could pay against.
        return value if value is None or value.strip() else None


def money(value: Decimal) -> str:
    return f"{value:.2f}"


def business_problems(a: InvoiceAnswer | InvoiceExtracted) -> list[str]:
    """Every rule the answer breaks, phrased so the model can fix it in a re-ask.

    Only what a better reading of the document can fix: a missing invoice number is not here (the
    model may well be right that none is printed), see :func:`review_flags`. The same rules hold
    for a result record a reviewer edits or approves (the flow's ``rules``), so a person cannot
    post what the model could not.
    """
    problems = []
    if pycountry.currencies.get(alpha_3=a.currency.upper()) is None:
        problems.append(f"currency {a.currency!r} is not an ISO 4217 code such as EUR, USD, GBP")
    if not a.vendor_name.strip():
        problems.append("vendor_name is empty: copy the seller's name from the document")
    items: Sequence[LineItemAnswer | LineItem] = a.line_items
    if not items:
        problems.append("line_items is empty: list every line of the invoice")
    for n, item in enumerate(items, 1):
        expected = item.quantity * item.unit_price
        if abs(expected - item.amount) > LINE_TOLERANCE:
            problems.append(
                f"line {n}: quantity {item.quantity} x unit_price {money(item.unit_price)} = "
                f"{money(expected)}, but amount is {money(item.amount)}"
            )
    lines = sum((i.amount for i in a.line_items), Decimal(0))
    if a.line_items and abs(lines - a.subtotal) > LINE_TOLERANCE * len(a.line_items):
        problems.append(
            f"line item amounts sum to {money(lines)}, but subtotal is {money(a.subtotal)}"
        )
    if abs(a.subtotal + a.tax - a.total) > CENT:
        problems.append(
            f"subtotal {money(a.subtotal)} + tax {money(a.tax)} = {money(a.subtotal + a.tax)}, "
            f"but total is {money(a.total)}"
        )
    if a.due_date is not None and a.due_date < a.issue_date:
        problems.append(f"due_date {a.due_date} is before issue_date {a.issue_date}")
    if a.total < 0 and a.document_kind != "credit_note":
        problems.append(
            f"total {money(a.total)} is negative, but document_kind is {a.document_kind!r}: only a "
            "credit note has a negative total; copy the amount due as printed"
        )
    return problems


def review_flags(a: InvoiceAnswer) -> list[str]:
    """What a person must handle in an answer that may be entirely right: never re-asked (the
    model cannot print what the document lacks), always sent to review."""
    flags = []
    if a.invoice_number is None:
        flags.append(NO_INVOICE_NUMBER)
    return flags


@dataclass(frozen=True)
class Extraction:
    answer: InvoiceAnswer
    document: Document
    confidence: Confidence
    field_confidence: dict[str, float]
    completion: Completion[InvoiceAnswer]
    model: str
    prompt_version: str
    flags: list[str]
    """:func:`review_flags` of the answer: a person must act, though the model may be right."""

    @property
    def problems(self) -> list[str]:
        """Business rules the answer still breaks after every re-ask (the model may be wrong)."""
        return self.completion.issues

    @property
    def issues(self) -> list[str]:
        """Everything that sends the result to review: unresolved problems, then flags. This is
        the record's ``validation_issues``."""
        return self.problems + self.flags


class InvoiceExtractionAgent:
    name = AGENT_NAME
    version = AGENT_VERSION

    def __init__(
        self,
        llm: LLMClient,
        document_dir: Path | None = None,
        prompt_version: str = PROMPT_VERSION,
        *,
        calibration: Calibration | None = None,
        pdf_budget_s: float | None = None,
    ) -> None:
        self.llm = llm
        self.document_dir = document_dir
        #: Wall seconds a PDF's text extraction may take (None: the documents module's default).
        self.pdf_budget_s = pdf_budget_s
        self.prompt_version = prompt_version
        self.system_prompt = load_prompt(prompt_version)
        #: Maps the routed score to P(extraction is right); None routes on the hand-weighted score.
        self.calibration = check_calibration(calibration, prompt_version)

    async def run(self, event: DocumentReceived) -> AgentResult[Extraction]:
        """The :class:`~agents.base.Agent` interface: :meth:`extract` as an AgentResult."""
        x = await self.extract(event)
        return AgentResult(
            answer=x,
            confidence=x.confidence,
            usage=x.completion.usage,
            model=x.model,
            prompt_version=x.prompt_version,
            issues=list(x.issues),
        )

    async def extract(self, event: DocumentReceived) -> Extraction:
        # PDF parsing and file reads are CPU and disk work: off the event loop, so the other
        # events in flight keep moving while one document is parsed.
        document = await asyncio.to_thread(
            load, event, self.document_dir, pdf_budget_s=self.pdf_budget_s
        )
        c = await self.llm.structured(
            [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user_message(document.text)},
            ],
            InvoiceAnswer,
            max_tokens=answer_tokens(document.text),
            validate=business_problems,
            prompt_version=self.prompt_version,
        )
        a = c.value
        measured = {f: value_probability(c.logprobs, f) for f in FIELDS + AMOUNTS}
        # Where a field has no measurement (no logprobs), it carries the self-rating.
        fallback = min(1.0, max(0.0, a.confidence))
        field_confidence = {
            f: round(p if p is not None else fallback, 6) for f, p in measured.items()
        }
        # The fields an auto-executed payment depends on: who, which invoice, how much.
        key = [measured[f] for f in ("vendor_name", "invoice_number", "total")]
        known = [p for p in key if p is not None]
        # Flags do not lower the score: they say what a person must do, not that the reading is
        # doubtful. They route the record to review on their own.
        # Only the routed score is calibrated: field_confidence stays per-field measurement, as the
        # calibration was fitted on whether the whole extraction was right.
        confidence = combine(
            a.confidence,
            min(known) if known else None,
            reasks=c.reasks,
            issues=len(c.issues),
            calibration=self.calibration,
        )
        return Extraction(
            answer=a,
            document=document,
            confidence=confidence,
            field_confidence=field_confidence,
            completion=c,
            model=self.llm.model,
            prompt_version=self.prompt_version,
            flags=review_flags(a),
        )
