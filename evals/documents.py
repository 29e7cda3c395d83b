"""Load the labeled eval sets and render invoices as the documents an extraction agent would see.

The invoice data in ``invoices.jsonl`` is the answer key; the agent must never see it as JSON. It
sees a PDF or a plain-text email rendered from it here, in one of three layouts chosen from the
document id, with wording, date and number formats that vary by template and by the vendor's
country, so a score measures reading invoices rather than memorising one format.

Rendering is deterministic (fixed PDF creation date, no randomness): the same answer key always
gives the same bytes, so eval runs are comparable and results can be cached by content.

Ticket labels in ``tickets.jsonl`` follow these rules, so each label can be argued from the text:

* category is the main problem; team follows category (billing -> billing, technical ->
  tech_support, account -> account_security, shipping -> logistics, other -> customer_success).
* priority: urgent for a security incident, a large wrong debit (over 1,000 in any currency), a
  legal or chargeback threat, or a complete outage for a business customer; high when the customer
  is blocked from core use or was charged wrongly; medium when degraded with a workaround or a
  delivery is late; low for questions, requests, feedback and praise.
* requires_human: true for urgent tickets, legal or chargeback threats, security incidents,
  refunds over 100 in any currency, and tickets raising two problems; false otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from fpdf import FPDF
from fpdf.enums import XPos, YPos

HERE = Path(__file__).parent

#: The company the invoices are addressed to. A second company name on the page is realistic and
#: makes the agent tell the vendor (who issues the invoice) from the customer (who receives it).
BILL_TO = "Harbor Lane Retail Ltd, 14 Quay Street, Bristol BS1 4DJ, United Kingdom"

_CENT = Decimal("0.01")

_MONTHS_EN = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

#: Characters outside latin-1 that the PDF core fonts cannot draw, with printable stand-ins.
_LATIN1_STAND_INS = {
    "\u20ac": "EUR ",
    "\u2013": "-",
    "\u2014": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2192": "->",
    "\u2026": "...",
}


def _read_jsonl(name: str) -> list[dict[str, Any]]:
    with (HERE / name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_tickets() -> list[dict[str, Any]]:
    """The labeled support tickets, one dict per ticket with its ``expected`` triage."""
    return _read_jsonl("tickets.jsonl")


def load_invoices() -> list[dict[str, Any]]:
    """The invoice answer keys: the fields an extraction agent should return for each document.

    Money and quantities are decimal strings, never floats, because the Avro records carry them as
    decimals and a float round trip would make exact comparison meaningless.
    """
    return _read_jsonl("invoices.jsonl")


def _template(document_id: str) -> int:
    """0, 1 or 2: a stable layout choice per document that spreads the set over all layouts."""
    return hashlib.sha256(document_id.encode()).digest()[0] % 3


def _is_german(inv: dict[str, Any]) -> bool:
    """German vendors invoice in German; the vendor's legal form and currency tell us which."""
    return bool(inv["vendor_name"].endswith("GmbH") and inv["currency"] == "EUR")


def _money(value: str, style: str) -> str:
    """Format a decimal string: ``plain`` 1234.50, ``grouped`` 1,234.50, ``de`` 1.234,50."""
    amount = Decimal(value).quantize(_CENT, rounding=ROUND_HALF_UP)
    if style == "plain":
        return f"{amount:.2f}"
    grouped = f"{amount:,.2f}"
    if style == "de":
        return grouped.replace(",", "_").replace(".", ",").replace("_", ".")
    return grouped


def _quantity(value: str, german: bool) -> str:
    text = format(Decimal(value).normalize(), "f")
    return text.replace(".", ",") if german else text


def _date(value: str, inv: dict[str, Any]) -> str:
    """A date written the way the vendor's country writes it, so ISO is never handed over."""
    d = date.fromisoformat(value)
    if inv["currency"] == "USD":
        return f"{_MONTHS_EN[d.month - 1]} {d.day}, {d.year}"
    if inv["currency"] == "GBP":
        return f"{d.day} {_MONTHS_EN[d.month - 1]} {d.year}"
    return f"{d.day:02d}.{d.month:02d}.{d.year}"


def _tax_rate(subtotal: str, tax: str) -> str:
    """The shortest printed rate (19, 8.1, 8.875) that reproduces the tax from the subtotal.

    The answer key stores amounts only; invoices print a rate, so recover the one the vendor used.
    """
    sub, due = Decimal(subtotal), Decimal(tax)
    if sub == 0:
        return "0"
    for places in range(4):
        step = Decimal(1).scaleb(-places)
        rate = (due * 100 / sub).quantize(step, rounding=ROUND_HALF_UP)
        if (sub * rate / 100).quantize(_CENT, rounding=ROUND_HALF_UP) == due:
            return format(rate.normalize(), "f")
    return format((due * 100 / sub).quantize(Decimal("0.001")).normalize(), "f")


@dataclass(frozen=True)
class _Sheet:
    """Everything printed on one invoice, already worded and formatted for its template.

    Text and PDF renderers both read this, so the two formats of a document say the same thing.
    """

    template: int
    german: bool
    vendor: str
    title: str
    number: tuple[str, str]
    issued: tuple[str, str]
    due: tuple[str, str] | None
    """Absent when the invoice was paid on the spot: no due date is printed at all."""
    bill_to: tuple[str, str]
    columns: tuple[str, str, str, str]
    rows: list[tuple[str, str, str, str]]
    totals: list[tuple[str, str]]
    terms: str

    @property
    def meta(self) -> list[tuple[str, str]]:
        """The header fields as (label, value), in print order."""
        return [self.number, self.issued, *([self.due] if self.due else []), self.bill_to]


def _terms(inv: dict[str, Any], german: bool, template: int) -> str:
    if inv["due_date"] is None:
        if german:
            return "Betrag dankend per Karte erhalten."
        return "Paid by card at the time of order - thank you. No balance outstanding."
    days = (date.fromisoformat(inv["due_date"]) - date.fromisoformat(inv["issue_date"])).days
    if german:
        return f"Zahlbar innerhalb von {days} Tagen ohne Abzug. Bitte Rechnungsnummer angeben."
    return (
        f"Payment terms: Net {days}. Please quote the invoice number with your payment.",
        f"Terms: payment within {days} days of the invoice date by bank transfer.",
        f"Please pay within {days} days. Late payments may incur interest.",
    )[template]


def _sheet(inv: dict[str, Any]) -> _Sheet:
    template = _template(inv["document_id"])
    german = _is_german(inv)
    style = "de" if german else ("grouped" if template == 1 else "plain")
    cur = inv["currency"]
    rate = _tax_rate(inv["subtotal"], inv["tax"])
    issued = _date(inv["issue_date"], inv)
    due = None if inv["due_date"] is None else _date(inv["due_date"], inv)
    number = inv["invoice_number"]
    paid = due is None
    if german:
        title = "RECHNUNG"
        labels = ("Rechnung Nr.", "Rechnungsdatum", "Fällig am", "Rechnungsempfänger")
        columns = ("Beschreibung", "Menge", "Einzelpreis", "Betrag")
        totals = [
            ("Nettobetrag", f"{_money(inv['subtotal'], style)} EUR"),
            (f"zzgl. MwSt. {rate.replace('.', ',')} %", f"{_money(inv['tax'], style)} EUR"),
            ("Rechnungsbetrag", f"{_money(inv['total'], style)} EUR"),
        ]
    else:
        tax_word = {"USD": "Sales tax", "CHF": "MWST/VAT"}.get(cur, "VAT")
        title, number_label, total_label = (
            ("INVOICE", "Invoice No.", "Total"),
            ("TAX INVOICE", "Invoice #", "Amount due"),
            ("Invoice", "Invoice number", "Total due"),
        )[template]
        labels = (number_label, "Date" if template == 2 else "Invoice date", "Due date", "Bill to")
        columns = (
            ("Description", "Qty", "Unit price", "Amount"),
            ("Item", "Quantity", "Rate", "Line total"),
            ("Service / product", "Units", "Price", "Net"),
        )[template]
        totals = [
            ("Subtotal", f"{cur} {_money(inv['subtotal'], style)}"),
            (f"{tax_word} ({rate}%)", f"{cur} {_money(inv['tax'], style)}"),
            ("Total paid" if paid else total_label, f"{cur} {_money(inv['total'], style)}"),
        ]
    rows = [
        (
            item["description"],
            _quantity(item["quantity"], german),
            _money(item["unit_price"], style),
            _money(item["amount"], style),
        )
        for item in inv["line_items"]
    ]
    return _Sheet(
        template=template,
        german=german,
        vendor=inv["vendor_name"],
        title=title,
        number=(labels[0], number),
        issued=(labels[1], issued),
        due=None if due is None else (labels[2], due),
        bill_to=(labels[3], BILL_TO),
        columns=columns,
        rows=rows,
        totals=totals,
        terms=_terms(inv, german, template),
    )


def _fixed_table(sheet: _Sheet) -> list[str]:
    """Columns padded with spaces, as billing systems print into a monospaced email."""
    widths = (44, 8, 12, 12)
    rule = "-" * (sum(widths) + 3)

    def line(desc: str, qty: str, price: str, amount: str) -> str:
        return (
            f"{desc[: widths[0]]:<{widths[0]}} {qty:>{widths[1]}} "
            f"{price:>{widths[2]}} {amount:>{widths[3]}}"
        )

    return [
        line(*sheet.columns),
        rule,
        *(line(*row) for row in sheet.rows),
        rule,
        *(f"{label:>{sum(widths) - 14}}   {value:>14}" for label, value in sheet.totals),
    ]


def render_text(inv: dict[str, Any]) -> str:
    """The invoice as a plain-text email body, in one of three layouts picked by document id."""
    s = _sheet(inv)
    if s.template == 1 and not s.german:
        lines = [
            "Dear customer,",
            "",
            f"please find below our invoice {s.number[1]} from {s.vendor}, issued {s.issued[1]}.",
            f"Billed to: {BILL_TO}",
            "",
            "| " + " | ".join(s.columns) + " |",
            "|---|---:|---:|---:|",
            *("| " + " | ".join(row) + " |" for row in s.rows),
            "",
            *(f"{label}: {value}" for label, value in s.totals),
            *([f"{s.due[0]}: {s.due[1]}"] if s.due else []),
            "",
            s.terms,
            "",
            "Kind regards,",
            f"{s.vendor} - accounts team",
        ]
    elif s.template == 2 and not s.german:
        lines = [
            s.vendor,
            " | ".join(f"{label} {value}" for label, value in s.meta[:-1]),
            f"{s.bill_to[0]}: {s.bill_to[1]}",
            "",
            *(
                f"{i}. {desc} - {qty} x {price} = {amount}"
                for i, (desc, qty, price, amount) in enumerate(s.rows, 1)
            ),
            "",
            *(f"{label.upper()}  {value}" for label, value in s.totals),
            "",
            s.terms,
        ]
    else:
        width = max(len(label) for label, _ in s.meta) + 2
        lines = [
            s.title,
            "",
            f"{'Von:' if s.german else 'From:':<{width}}{s.vendor}",
            *(f"{label + ':':<{width}}{value}" for label, value in s.meta),
            "",
            *_fixed_table(s),
            "",
            s.terms,
        ]
    return "\n".join(lines) + "\n"


def _latin1(text: str) -> str:
    """Core PDF fonts only cover latin-1; swap the usual offenders, mark anything else with '?'."""
    for char, stand_in in _LATIN1_STAND_INS.items():
        text = text.replace(char, stand_in)
    return text.encode("latin-1", "replace").decode("latin-1")


class _Pdf(FPDF):
    """An FPDF that writes whole lines of latin-1-safe text, the unit every template uses."""

    def text_line(self, text: str, size: float = 10, style: str = "", align: str = "L") -> None:
        self.set_font("Helvetica", style=style, size=size)
        self.cell(0, size * 0.55, _latin1(text), align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _pdf_table(pdf: _Pdf, s: _Sheet) -> None:
    widths = (95.0, 20.0, 35.0, 40.0)
    aligns = ("L", "R", "R", "R")
    pdf.set_font("Helvetica", style="B", size=9)
    pdf.set_fill_color(225, 225, 225)
    for text, w, align in zip(s.columns, widths, aligns, strict=True):
        pdf.cell(w, 7, _latin1(text), border="B", align=align, fill=s.template != 2)
    pdf.ln(7)
    pdf.set_font("Helvetica", size=9)
    for row in s.rows:
        for text, w, align in zip(row, widths, aligns, strict=True):
            pdf.cell(w, 6, _latin1(text), border="B" if s.template == 1 else 0, align=align)
        pdf.ln(6)
    pdf.ln(3)
    for i, (label, value) in enumerate(s.totals):
        last = i == len(s.totals) - 1
        pdf.set_font("Helvetica", style="B" if last else "", size=10 if last else 9)
        pdf.cell(sum(widths[:3]), 6, _latin1(label), align="R")
        pdf.cell(widths[3], 6, _latin1(value), border="T" if last else 0, align="R")
        pdf.ln(6)


def render_pdf(inv: dict[str, Any]) -> bytes:
    """The invoice as a one-page PDF with a real text layer, as a vendor's billing system makes.

    Helvetica is a PDF core font, so nothing is embedded and pypdf can extract the text; the cost
    is that core fonts only cover latin-1, hence the stand-ins. The creation date is the issue date
    so the output is byte-for-byte repeatable.
    """
    s = _sheet(inv)
    pdf = _Pdf(format="A4")
    pdf.set_creation_date(datetime.fromisoformat(inv["issue_date"]).replace(tzinfo=UTC))
    pdf.set_title(_latin1(f"{s.title} {inv['invoice_number']}"))
    pdf.set_author(_latin1(s.vendor))
    pdf.set_margins(10, 12, 10)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    if s.template == 0 or s.german:
        pdf.text_line(s.vendor, size=16, style="B")
        pdf.text_line(s.title, size=12, style="B", align="R")
        pdf.ln(4)
        for label, value in s.meta:
            pdf.text_line(f"{label}: {value}", size=10)
    elif s.template == 1:
        pdf.text_line(s.title, size=18, style="B", align="C")
        pdf.text_line(f"Issued by {s.vendor}", size=11, align="C")
        pdf.ln(6)
        for label, value in s.meta:
            pdf.set_font("Helvetica", style="B", size=10)
            pdf.cell(35, 6, _latin1(label))
            pdf.set_font("Helvetica", size=10)
            pdf.cell(0, 6, _latin1(value), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    else:
        pdf.text_line(s.vendor, size=12, style="B", align="R")
        pdf.ln(4)
        pdf.text_line(f"{s.bill_to[0]}:", size=9, style="B")
        pdf.text_line(s.bill_to[1], size=9)
        pdf.ln(4)
        pdf.text_line(f"{s.title} {s.number[1]}", size=15, style="B")
        pdf.text_line("    ".join(f"{label}: {value}" for label, value in s.meta[1:-1]))
    pdf.ln(6)
    _pdf_table(pdf, s)
    pdf.ln(8)
    pdf.set_font("Helvetica", size=9)
    pdf.multi_cell(0, 5, _latin1(s.terms))
    return bytes(pdf.output())


def document_event(inv: dict[str, Any]) -> dict[str, Any]:
    """The ``documents.received`` event a producer would write for this invoice.

    PDFs travel inline as base64 and text invoices as ``text``, the two inline shapes
    ``DocumentReceived`` accepts, so the eval exercises the same decoding path as production.
    """
    event: dict[str, Any] = {
        "event_id": f"ev-{inv['document_id']}",
        "document_id": inv["document_id"],
    }
    if inv["format"] == "pdf":
        event["content_type"] = "application/pdf"
        event["content_base64"] = base64.b64encode(render_pdf(inv)).decode("ascii")
    elif inv["format"] == "text":
        event["content_type"] = "text/plain"
        event["text"] = render_text(inv)
    else:
        raise ValueError(f"{inv['document_id']}: unknown format {inv['format']!r}")
    return event
