"""InvoiceExtractionAgent: one job — a document in, validated invoice fields out.

It does not classify, route or write anywhere. Beyond the schema it checks what an accounts-payable
clerk would (:func:`business_problems`): line items add up to the subtotal, total = subtotal + tax,
the due date is not before the issue date, the currency is ISO 4217. A violation is re-asked with
the numbers spelled out; if it persists the answer is returned with its issues, because an invoice
whose printed totals disagree may be the vendor's error, which a person must see, not a dead letter.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import pycountry
from pydantic import BaseModel, Field, WithJsonSchema

from agents.confidence import combine, value_probability
from agents.documents import Document, load
from agents.llm import Completion, LLMClient
from agents.prompt import load_prompt
from schemas.events import DocumentReceived
from schemas.records import Confidence

PROMPT_VERSION = "invoice_extraction.v1"
AGENT_NAME = "invoice-extraction"
AGENT_VERSION = "0.1.0"
MAX_TOKENS = 640
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


class LineItemAnswer(BaseModel):
    description: str = Field(max_length=80)
    quantity: Amount
    unit_price: Amount
    amount: Amount


class InvoiceAnswer(BaseModel):
    """What the model must return."""

    vendor_name: str = Field(max_length=120)
    invoice_number: str = Field(max_length=64)
    issue_date: date
    due_date: date | None
    currency: str = Field(max_length=3)
    line_items: list[LineItemAnswer] = Field(max_length=12)
    subtotal: Amount
    tax: Amount
    total: Amount
    confidence: float


def money(value: Decimal) -> str:
    return f"{value:.2f}"


def business_problems(a: InvoiceAnswer) -> list[str]:
    """Every rule the answer breaks, phrased so the model can fix it in a re-ask."""
    problems = []
    if pycountry.currencies.get(alpha_3=a.currency.upper()) is None:
        problems.append(f"currency {a.currency!r} is not an ISO 4217 code such as EUR, USD, GBP")
    if not a.vendor_name.strip():
        problems.append("vendor_name is empty: copy the seller's name from the document")
    if not a.invoice_number.strip():
        problems.append("invoice_number is empty: copy it from the document")
    if not a.line_items:
        problems.append("line_items is empty: list every line of the invoice")
    for n, item in enumerate(a.line_items, 1):
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
    return problems


@dataclass(frozen=True)
class Extraction:
    answer: InvoiceAnswer
    document: Document
    confidence: Confidence
    field_confidence: dict[str, float]
    completion: Completion[InvoiceAnswer]
    model: str
    prompt_version: str

    @property
    def issues(self) -> list[str]:
        return self.completion.issues


class InvoiceExtractionAgent:
    name = AGENT_NAME
    version = AGENT_VERSION

    def __init__(
        self,
        llm: LLMClient,
        document_dir: Path | None = None,
        prompt_version: str = PROMPT_VERSION,
    ) -> None:
        self.llm = llm
        self.document_dir = document_dir
        self.prompt_version = prompt_version
        self.system_prompt = load_prompt(prompt_version)

    async def extract(self, event: DocumentReceived) -> Extraction:
        document = load(event, self.document_dir)
        c = await self.llm.structured(
            [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": f"Document:\n\n{document.text}"},
            ],
            InvoiceAnswer,
            max_tokens=MAX_TOKENS,
            validate=business_problems,
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
        confidence = combine(
            a.confidence, min(known) if known else None, reasks=c.reasks, issues=len(c.issues)
        )
        return Extraction(
            answer=a,
            document=document,
            confidence=confidence,
            field_confidence=field_confidence,
            completion=c,
            model=self.llm.model,
            prompt_version=self.prompt_version,
        )
