"""The golden sets (``evals/``) against their labelling rules (``evals/LABELLING.md``).

The parts of a label that can be checked mechanically: sizes, ids, that every ticket is a valid
``TicketReceived``, team by category, the tag vocabulary and how often each hard case appears,
that tags agree with the data, invoice arithmetic as the agent checks it, and that every answer key
renders, deterministically, into a document that carries what is scored.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from typing import Any

import pytest
from pypdf import PdfReader

import agents.invoice as invoice_agent
from agents.documents import load
from agents.prompt import load_prompt
from agents.usage import estimate_tokens
from evals.documents import (
    COUNTRIES,
    document_event,
    load_invoices,
    load_tickets,
    render_pdf,
    render_text,
    vendor_locale,
)
from schemas.events import DocumentReceived, TicketReceived, parse_event
from streams.settings import Settings

TICKETS = load_tickets()
INVOICES = load_invoices()
CENT = Decimal("0.01")

TEAM_FOR = {
    "billing": "billing",
    "technical": "tech_support",
    "account": "account_security",
    "shipping": "logistics",
    "other": "customer_success",
}
PLANS = {"free", "pro", "business", "enterprise"}
TICKET_TAGS = {
    "ambiguous",
    "multilingual",
    "injection",
    "customer_plan",
    "subject_only",
    "short",
    "long",
    "mixed_sentiment",
    "plain",
}
INVOICE_TAGS = {
    "pdf",
    "text",
    "multi_currency",
    "comma_decimals",
    "non_english",
    "missing_tax",
    "credit_note",
    "multi_page",
    "no_invoice_number",
    "discount",
    "rounding",
    "no_due_date",
    "total_mismatch",
    "plain",
}
#: The hard cases the sets exist for: each must be exercised several times.
HARD_TICKET_TAGS = ("ambiguous", "multilingual", "injection", "customer_plan", "subject_only")
HARD_INVOICE_TAGS = (
    "multi_currency",
    "comma_decimals",
    "missing_tax",
    "credit_note",
    "multi_page",
    "no_invoice_number",
    "discount",
    "rounding",
)
EXPECT_ISSUES = {None, "total_mismatch", "no_invoice_number"}
SHORT_BODY, LONG_BODY = 80, 1200
MULTI_PAGE_LINES = 40
COMMON_CURRENCIES = {"EUR", "USD", "GBP"}
#: The event fields of a ticket line; the rest (expected, tags) is the label.
EVENT_FIELDS = set(TicketReceived.model_fields)


def _money(value: Any) -> Decimal:
    """A money string with exactly two decimals; floats and other shapes fail."""
    assert isinstance(value, str), f"{value!r} must be a JSON string"
    amount = Decimal(value)
    assert amount.as_tuple().exponent == -2, f"{value!r} must have exactly 2 decimals"
    return amount


def _product(item: dict[str, Any]) -> Decimal:
    return Decimal(item["quantity"]) * _money(item["unit_price"])


def _printed(value: str, inv: dict[str, Any]) -> set[str]:
    """The ways the vendor's locale may print an amount: grouped or not, its own separators,
    no decimals for JPY."""
    loc = vendor_locale(inv)
    places = 0 if inv["currency"] == "JPY" else 2
    amount = Decimal(value).quantize(Decimal(1).scaleb(-places))
    table = str.maketrans(",.", loc.thousands + loc.decimal)
    return {f"{amount:,.{places}f}".translate(table), f"{amount:.{places}f}".translate(table)}


@cache
def _pdf(document_id: str) -> bytes:
    return render_pdf(next(i for i in INVOICES if i["document_id"] == document_id))


@cache
def _pdf_text(document_id: str) -> tuple[int, str]:
    reader = PdfReader(io.BytesIO(_pdf(document_id)))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


# --- both sets -------------------------------------------------------------------------------


def test_sizes_and_unique_ids() -> None:
    assert len(TICKETS) >= 60
    assert len(INVOICES) >= 30
    for key in ("event_id", "ticket_id"):
        ids = [t[key] for t in TICKETS]
        assert len(set(ids)) == len(ids), Counter(ids).most_common(3)
    ids = [inv["document_id"] for inv in INVOICES]
    assert len(set(ids)) == len(ids), Counter(ids).most_common(3)


def test_ids_follow_the_sequence() -> None:
    assert [t["ticket_id"] for t in TICKETS] == [f"TK-{n:02d}" for n in range(1, len(TICKETS) + 1)]
    assert all(t["event_id"] == f"ev-tk-{t['ticket_id'][3:]}" for t in TICKETS)
    assert [inv["document_id"] for inv in INVOICES] == [
        f"INV-DOC-{n:02d}" for n in range(1, len(INVOICES) + 1)
    ]


# --- tickets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ticket", TICKETS, ids=lambda t: t["ticket_id"])
def test_ticket_is_a_valid_event(ticket: dict[str, Any]) -> None:
    # As the eval builds it: the whole line, label keys ignored.
    event = TicketReceived.model_validate(ticket)
    # As a producer sends it: the event fields only, as JSON bytes through the worker's parser.
    sent = {k: v for k, v in ticket.items() if k in EVENT_FIELDS}
    assert set(ticket) - set(sent) == {"expected", "tags"}
    assert parse_event(json.dumps(sent).encode(), TicketReceived) == event
    assert event.subject, "every ticket has a subject"
    if "customer_plan" in ticket:
        assert event.customer_plan in PLANS
        assert ticket.get("customer_id"), "a ticket with a plan names its customer"


@pytest.mark.parametrize("ticket", TICKETS, ids=lambda t: t["ticket_id"])
def test_ticket_label_follows_the_rules(ticket: dict[str, Any]) -> None:
    expected = ticket["expected"]
    assert set(expected) == {"category", "priority", "sentiment", "team", "requires_human"}
    assert expected["category"] in TEAM_FOR
    assert expected["priority"] in {"low", "medium", "high", "urgent"}
    assert expected["sentiment"] in {"negative", "neutral", "positive"}
    assert expected["team"] == TEAM_FOR[expected["category"]], "team follows category"
    assert isinstance(expected["requires_human"], bool)
    if expected["priority"] == "urgent":
        assert expected["requires_human"], "urgent tickets always go to a person"


@pytest.mark.parametrize("ticket", TICKETS, ids=lambda t: t["ticket_id"])
def test_ticket_tags_agree_with_the_ticket(ticket: dict[str, Any]) -> None:
    tags = ticket["tags"]
    assert tags
    assert len(set(tags)) == len(tags), tags
    assert set(tags) <= TICKET_TAGS, set(tags) - TICKET_TAGS
    assert tags == ["plain"] or "plain" not in tags, "plain means no hard case"
    body = ticket["body"]
    assert ("subject_only" in tags) == (body == "")
    assert ("short" in tags) == (0 < len(body) <= SHORT_BODY), len(body)
    assert ("long" in tags) == (len(body) >= LONG_BODY), len(body)
    assert ("customer_plan" in tags) == ("customer_plan" in ticket)


def test_ticket_coverage() -> None:
    tags = Counter(tag for t in TICKETS for tag in t["tags"])
    for tag in (*HARD_TICKET_TAGS, "short", "long", "mixed_sentiment"):
        assert tags[tag] >= 3, (tag, tags)
    for field in ("category", "priority", "sentiment"):
        counts = Counter(t["expected"][field] for t in TICKETS)
        assert min(counts.values()) >= 5, (field, counts)
    assert set(Counter(t["expected"]["category"] for t in TICKETS)) == set(TEAM_FOR)
    assert set(Counter(t["channel"] for t in TICKETS)) == {"email", "chat", "web", "phone", "api"}
    plans = Counter(TicketReceived.model_validate(t).customer_plan for t in TICKETS)
    assert {"free", "pro", "business", "enterprise"} <= set(plans), plans
    assert sum(t["expected"]["requires_human"] for t in TICKETS) >= 10


# --- invoices: the answer keys ---------------------------------------------------------------


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_invoice_arithmetic(inv: dict[str, Any]) -> None:
    """The agent's business rules (agents/invoice.py): a key breaks them only on purpose."""
    assert inv["format"] in {"pdf", "text"}
    assert inv["expect_issue"] in EXPECT_ISSUES
    assert inv["line_items"]
    credit = (inv.get("render") or {}).get("kind") == "credit_note"
    for item in inv["line_items"]:
        assert set(item) == {"description", "quantity", "unit_price", "amount"}
        assert 0 < len(item["description"]) <= 44, "the fixed-width text table prints 44"
        assert isinstance(item["quantity"], str)
        quantity = Decimal(item["quantity"])
        assert quantity > 0, "credits and discounts are negative prices, never quantities"
        assert quantity == quantity.quantize(Decimal("0.001")), "Avro decimal(12, 3)"
        amount = _money(item["amount"])
        assert amount == _product(item).quantize(CENT, rounding=ROUND_HALF_UP), item
        if credit:
            assert amount < 0, "a credit note credits every line"
    subtotal, tax, total = _money(inv["subtotal"]), _money(inv["tax"]), _money(inv["total"])
    assert subtotal == sum(_money(item["amount"]) for item in inv["line_items"])
    if inv["expect_issue"] == "total_mismatch":
        assert abs(total - (subtotal + tax)) == Decimal("10.00")
    else:
        assert total == subtotal + tax
    if credit:
        assert subtotal < 0
        assert tax <= 0
        assert total < 0
    else:
        assert subtotal > 0
        assert tax >= 0
    if inv["currency"] == "JPY":
        assert all(_money(v) == _money(v).to_integral_value() for v in (inv["total"], inv["tax"]))


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_invoice_fields(inv: dict[str, Any]) -> None:
    assert inv["vendor_name"].strip()
    assert "Harbor Lane" not in inv["vendor_name"], "the vendor is the issuer, not the bill-to"
    assert len(inv["currency"]) == 3
    assert inv["currency"].isupper()
    issued = date.fromisoformat(inv["issue_date"])
    if inv["due_date"] is not None:
        assert date.fromisoformat(inv["due_date"]) >= issued
    number = inv["invoice_number"]
    assert (number is None) == (inv["expect_issue"] == "no_invoice_number")
    assert number is None or (number.strip() == number and number)
    render = inv.get("render") or {}
    assert set(render) <= {"country", "kind", "tax_line", "references", "notes"}, render
    assert render.get("country", "US") in COUNTRIES
    if render.get("kind") == "credit_note":
        assert inv["due_date"] is None, "a credit note has no due date"
    if render.get("tax_line") is False:
        assert inv["tax"] == "0.00"


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_invoice_tags_agree_with_the_data(inv: dict[str, Any]) -> None:
    tags = inv["tags"]
    assert len(set(tags)) == len(tags), tags
    assert set(tags) <= INVOICE_TAGS, set(tags) - INVOICE_TAGS
    assert [t for t in tags if t in {"pdf", "text"}] == [inv["format"]]
    render = inv.get("render") or {}
    loc = vendor_locale(inv)
    credit = render.get("kind") == "credit_note"
    facts = {
        "multi_currency": inv["currency"] not in COMMON_CURRENCIES
        or inv["currency"] != loc.currency,
        "comma_decimals": loc.decimal == ",",
        "non_english": loc.language != "en",
        "missing_tax": render.get("tax_line") is False,
        "credit_note": credit,
        "multi_page": len(inv["line_items"]) >= MULTI_PAGE_LINES,
        "no_invoice_number": inv["invoice_number"] is None,
        "discount": not credit and any(Decimal(i["amount"]) < 0 for i in inv["line_items"]),
        "rounding": any(
            _product(i) != _product(i).quantize(CENT, rounding=ROUND_HALF_UP)
            for i in inv["line_items"]
        ),
        "no_due_date": inv["due_date"] is None,
        "total_mismatch": inv["expect_issue"] == "total_mismatch",
    }
    for tag, fact in facts.items():
        assert (tag in tags) == fact, (tag, fact)
    assert ("plain" in tags) == (not any(facts.values()))


def test_invoice_coverage() -> None:
    formats = Counter(inv["format"] for inv in INVOICES)
    assert formats["pdf"] >= 12, formats
    assert formats["text"] >= 12, formats
    tags = Counter(tag for inv in INVOICES for tag in inv["tags"])
    for tag in HARD_INVOICE_TAGS:
        assert tags[tag] >= 3, (tag, tags)
    assert {"EUR", "USD", "GBP", "CHF", "JPY", "SEK"} <= {inv["currency"] for inv in INVOICES}
    multi_page = [inv for inv in INVOICES if "multi_page" in inv["tags"]]
    assert all(MULTI_PAGE_LINES <= len(inv["line_items"]) <= 60 for inv in multi_page)
    assert any(inv["format"] == "pdf" for inv in multi_page)


# --- invoices: the documents -----------------------------------------------------------------


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_invoice_renders_deterministically(inv: dict[str, Any]) -> None:
    text = render_text(inv)
    assert text.strip()
    assert text == render_text(inv)
    pdf = _pdf(inv["document_id"])
    assert pdf.startswith(b"%PDF-")
    assert pdf == render_pdf(inv), "same answer key, same bytes"


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_the_document_carries_what_is_scored(inv: dict[str, Any]) -> None:
    """Vendor, number and every line are on the page, in the format the item is scored in."""
    if inv["format"] == "pdf":
        pages, text = _pdf_text(inv["document_id"])
        many = len(inv["line_items"]) >= MULTI_PAGE_LINES
        assert (pages >= 2) if many else (pages == 1), pages
    else:
        text = render_text(inv)
    assert inv["vendor_name"] in text
    if inv["invoice_number"] is None:
        assert "None" not in text
    else:
        assert inv["invoice_number"] in text
    for item in inv["line_items"]:
        assert item["description"] in text, item["description"]
    assert any(form in text for form in _printed(inv["total"], inv)), _printed(inv["total"], inv)
    if (inv.get("render") or {}).get("tax_line") is False:
        assert not any(w in text for w in ("VAT (", "Sales tax", "MwSt.", "TVA ", "BTW "))
    else:
        assert any(form in text for form in _printed(inv["tax"], inv))


@pytest.mark.parametrize("inv", INVOICES, ids=lambda inv: inv["document_id"])
def test_the_eval_input_goes_through_the_real_loader(inv: dict[str, Any]) -> None:
    """What make eval sends: document_event -> DocumentReceived -> the agent's document loader."""
    event = DocumentReceived.model_validate(document_event(inv))
    document = load(event, None)
    assert document.content_type == ("application/pdf" if inv["format"] == "pdf" else "text/plain")
    assert inv["vendor_name"] in document.text


def test_long_invoices_fit_the_default_token_budget() -> None:
    """A golden invoice the LLM layer refuses to send measures the budget, not the agent: the
    first call (prompt estimate + max_tokens) must fit SLUICE_LLM_TOKEN_BUDGET's default."""
    budget = Settings.model_fields["llm_token_budget"].default
    system = load_prompt(invoice_agent.PROMPT_VERSION)
    for inv in INVOICES:
        if "multi_page" not in inv["tags"]:
            continue
        text = load(DocumentReceived.model_validate(document_event(inv)), None).text
        messages = [
            {"role": "system", "content": system},
            {"role": "user", "content": invoice_agent.user_message(text)},
        ]
        first_call = estimate_tokens(messages) + invoice_agent.answer_tokens(text)
        assert first_call <= budget, (inv["document_id"], first_call, budget)


def test_multi_page_pdfs_repeat_headings_and_number_pages() -> None:
    for inv in INVOICES:
        if inv["format"] != "pdf" or "multi_page" not in inv["tags"]:
            continue
        reader = PdfReader(io.BytesIO(_pdf(inv["document_id"])))
        texts = [page.extract_text() for page in reader.pages]
        for n, page in enumerate(texts, 1):
            assert f"{n}/{len(texts)}" in page, (inv["document_id"], n)
        for page in texts[1:]:
            assert inv["invoice_number"] in page.splitlines()[0]
