"""The eval sets are answer keys: a wrong label or a sum that doesn't add up mis-scores the agent.

These tests keep the data internally consistent and prove every rendered document actually carries
the fields the agent is scored on.
"""

import base64
import io
from collections import Counter
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from pypdf import PdfReader

from agents.documents import load
from evals.documents import document_event, load_invoices, load_tickets, render_pdf, render_text
from schemas.events import DocumentReceived, TicketReceived

CATEGORIES = {"billing", "technical", "account", "shipping", "other"}
PRIORITIES = {"low", "medium", "high", "urgent"}
SENTIMENTS = {"negative", "neutral", "positive"}
CHANNELS = {"email", "chat", "web", "phone", "api"}
TEAM_FOR = {
    "billing": "billing",
    "technical": "tech_support",
    "account": "account_security",
    "shipping": "logistics",
    "other": "customer_success",
}
CURRENCIES = {"EUR", "USD", "GBP", "CHF"}

TICKETS = load_tickets()
INVOICES = load_invoices()
PDFS = [inv for inv in INVOICES if inv["format"] == "pdf"]
CENT = Decimal("0.01")


def _money(value: Any) -> Decimal:
    """A money string with exactly two decimals; floats or other shapes fail the test."""
    assert isinstance(value, str), f"{value!r} must be a JSON string"
    amount = Decimal(value)
    assert amount.as_tuple().exponent == -2, f"{value!r} must have exactly 2 decimals"
    return amount


def _written_forms(total: str) -> set[str]:
    """The ways an invoice may print a total: 1234.50, 1,234.50 or German 1.234,50."""
    grouped = f"{Decimal(total):,.2f}"
    german = grouped.replace(",", "_").replace(".", ",").replace("_", ".")
    return {total, grouped, german, total.replace(".", ",")}


def test_set_sizes_and_spread() -> None:
    assert len(TICKETS) >= 20
    assert len(INVOICES) >= 10
    categories = Counter(t["expected"]["category"] for t in TICKETS)
    priorities = Counter(t["expected"]["priority"] for t in TICKETS)
    assert set(categories) == CATEGORIES
    assert min(categories.values()) >= 4, categories
    assert set(priorities) == PRIORITIES
    assert min(priorities.values()) >= 3, priorities


def test_ids_are_unique() -> None:
    for key in ("event_id", "ticket_id"):
        assert len({t[key] for t in TICKETS}) == len(TICKETS)
    assert len({inv["document_id"] for inv in INVOICES}) == len(INVOICES)


@pytest.mark.parametrize("ticket", TICKETS, ids=lambda t: t["ticket_id"])
def test_ticket_labels_follow_the_rules(ticket: dict[str, Any]) -> None:
    TicketReceived.model_validate(ticket)  # a producer could send it as it is
    assert ticket["channel"] in CHANNELS
    assert ticket["subject"].strip()
    assert ticket["body"].strip()
    expected = ticket["expected"]
    assert set(expected) == {"category", "priority", "sentiment", "team", "requires_human"}
    assert expected["category"] in CATEGORIES
    assert expected["priority"] in PRIORITIES
    assert expected["sentiment"] in SENTIMENTS
    assert expected["team"] == TEAM_FOR[expected["category"]]
    assert isinstance(expected["requires_human"], bool)
    if expected["priority"] == "urgent":
        assert expected["requires_human"], "urgent tickets always go to a person"


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_invoice_arithmetic(inv: dict[str, Any]) -> None:
    assert inv["format"] in {"pdf", "text"}
    assert inv["currency"] in CURRENCIES
    assert 1 <= len(inv["line_items"]) <= 5
    for item in inv["line_items"]:
        assert isinstance(item["quantity"], str)
        quantity = Decimal(item["quantity"])
        assert quantity > 0
        assert quantity == quantity.quantize(Decimal("0.001")), "at most 3 decimals"
        product = (quantity * _money(item["unit_price"])).quantize(CENT, rounding=ROUND_HALF_UP)
        assert _money(item["amount"]) == product, item
    subtotal, tax, total = _money(inv["subtotal"]), _money(inv["tax"]), _money(inv["total"])
    assert subtotal == sum(_money(item["amount"]) for item in inv["line_items"])
    assert tax >= 0
    if inv["expect_issue"] is None:
        assert total == subtotal + tax
    else:
        assert inv["expect_issue"] == "total_mismatch"
        assert abs(total - (subtotal + tax)) == Decimal("10.00")


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_invoice_dates(inv: dict[str, Any]) -> None:
    issued = date.fromisoformat(inv["issue_date"])
    if inv["due_date"] is not None:
        assert date.fromisoformat(inv["due_date"]) >= issued


def test_invoice_set_covers_the_edge_cases() -> None:
    assert Counter(inv["expect_issue"] for inv in INVOICES)["total_mismatch"] == 1
    assert {inv["expect_issue"] for inv in INVOICES} == {None, "total_mismatch"}
    assert sum(inv["due_date"] is None for inv in INVOICES) >= 1
    assert sum(Decimal(inv["tax"]) == 0 for inv in INVOICES) >= 1
    currencies = Counter(inv["currency"] for inv in INVOICES)
    assert currencies["EUR"] >= 2
    assert currencies["USD"] >= 2
    assert {"pdf", "text"} == {inv["format"] for inv in INVOICES}


@pytest.mark.parametrize("inv", PDFS, ids=lambda inv: inv["document_id"])
def test_pdf_text_layer_carries_the_scored_fields(inv: dict[str, Any]) -> None:
    data = render_pdf(inv)
    assert data.startswith(b"%PDF-")
    assert data == render_pdf(inv), "rendering must be deterministic"
    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert inv["vendor_name"] in text
    assert inv["invoice_number"] in text
    assert any(form in text for form in _written_forms(inv["total"])), text


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_text_rendering_carries_the_scored_fields(inv: dict[str, Any]) -> None:
    text = render_text(inv)
    assert inv["vendor_name"] in text
    assert inv["invoice_number"] in text
    assert any(form in text for form in _written_forms(inv["total"])), text


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_document_event_goes_through_the_real_loader(inv: dict[str, Any]) -> None:
    event = document_event(inv)
    assert event["event_id"] == f"ev-{inv['document_id']}"
    assert event["document_id"] == inv["document_id"]
    if inv["format"] == "pdf":
        assert event["content_type"] == "application/pdf"
        assert base64.b64decode(event["content_base64"]) == render_pdf(inv)
        assert "text" not in event
    else:
        assert event["content_type"] == "text/plain"
        assert event["text"] == render_text(inv)
        assert "content_base64" not in event
    document = load(DocumentReceived.model_validate(event), None)
    assert document.content_type == event["content_type"]
    assert inv["invoice_number"] in document.text
