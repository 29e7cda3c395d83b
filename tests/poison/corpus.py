"""The poison corpus: hostile input values for both input topics, each with its expected lane.

``manifest.json`` lists every entry; a value is a file under ``values/`` or made by a generator
below (too large to commit, or a PDF built here so the repository holds no opaque binaries).
``[[ANSWER]]`` inside a value becomes the fault server's answer marker, so the few valid entries
have a known lane when a worker runs against the fault server.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fpdf import FPDF

from agents.testing.fault_server import answer_marker
from tests.records import GOOD_TRIAGE

HERE = Path(__file__).parent
PLACEHOLDER = b"[[ANSWER]]"
TWO_MEGABYTES = 2 * 1024 * 1024

#: A triage answer the router sends to auto (confident, consistent, no person needed).
TRIAGE_ANSWER: dict[str, Any] = {**GOOD_TRIAGE, "confidence": 0.95}
#: An invoice answer whose arithmetic holds, so it passes every business rule.
INVOICE_ANSWER: dict[str, Any] = {
    "vendor_name": "Acme Supplies GmbH",
    "invoice_number": "INV-2026-0042",
    "issue_date": "2026-11-02",
    "due_date": "2026-12-02",
    "currency": "EUR",
    "line_items": [
        {"description": "Paper A4", "quantity": 10, "unit_price": 4.5, "amount": 45.0},
        {"description": "Toner", "quantity": 2, "unit_price": 60.0, "amount": 120.0},
    ],
    "subtotal": 165.0,
    "tax": 31.35,
    "total": 196.35,
    "confidence": 0.95,
}


@dataclass(frozen=True)
class Entry:
    """One hostile value and where it must end."""

    id: str
    topic: str
    """``tickets`` or ``documents``: which input topic it goes to."""
    lane: str
    reason: str | None
    note: str
    value: bytes | None
    """The bytes to produce; None is a tombstone."""


def _pdf(text: str | None) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(datetime(2026, 11, 2, tzinfo=UTC))  # byte-for-byte repeatable
    pdf.add_page()
    if text is None:
        pdf.rect(20, 20, 80, 40, style="F")  # ink, but no text layer: what a scan looks like
    else:
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


GENERATORS: dict[str, Callable[[], bytes | None]] = {
    "empty": lambda: b"",
    "tombstone": lambda: None,
    "two_megabytes": lambda: _json({"ticket_id": "P-2MB", "body": "x" * TWO_MEGABYTES}),
    "raw_pdf": lambda: _pdf("Invoice INV-7 from Acme, total 10.00 EUR"),
    "pdf_without_text": lambda: _json(
        {"document_id": "P-SCAN", "content_base64": base64.b64encode(_pdf(None)).decode()}
    ),
    "valid_invoice": lambda: _json(
        {
            "document_id": "P-VALID-INVOICE",
            "text": "Acme Supplies GmbH\nInvoice INV-2026-0042\n2 lines, total 196.35 EUR\n"
            "[[ANSWER]]",
        }
    ),
    "valid_ticket": lambda: _json(
        {"ticket_id": "P-LAST", "body": "My parcel is two weeks late. [[ANSWER]]"}
    ),
}


def _answer(topic: str) -> bytes:
    return answer_marker(TRIAGE_ANSWER if topic == "tickets" else INVOICE_ANSWER).encode()


def load() -> list[Entry]:
    """Every entry of the manifest with its value materialised."""
    manifest = json.loads((HERE / "manifest.json").read_text("utf-8"))
    entries = []
    for e in manifest["entries"]:
        if "file" in e:
            value: bytes | None = (HERE / "values" / e["file"]).read_bytes()
        else:
            value = GENERATORS[e["generate"]]()
        if value is not None:
            value = value.replace(PLACEHOLDER, _answer(e["topic"]))
        entries.append(Entry(e["id"], e["topic"], e["lane"], e["reason"], e["note"], value))
    return entries
