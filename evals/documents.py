"""Load the labeled eval sets and render invoices as the documents an extraction agent would see.

The invoice data in ``invoices.jsonl`` is the answer key; the agent must never see it as JSON. It
sees a PDF or a plain-text email rendered from it here, in one of three layouts chosen from the
document id, with wording, date and number formats that vary by template and by the vendor's
country, so a score measures reading invoices rather than memorising one format.

An answer key may carry an optional ``render`` object: how the document looks, never what is
scored. ``country`` (ISO 3166 alpha-2) picks the language, number and date formats (without it the
original rules apply: German for a GmbH invoicing in EUR, dates by currency); ``kind`` is
``"invoice"`` or ``"credit_note"``; ``tax_line: false`` prints no tax line (the tax is then 0);
``references`` are extra header fields such as a customer or order number, and ``notes`` extra
lines under the totals (a reverse-charge remark, an exchange-rate note). Long invoices break over
pages with the column headings repeated and page numbers in the footer.

Rendering is deterministic (fixed PDF creation date, no randomness): the same answer key always
gives the same bytes, so eval runs are comparable and results can be cached by content.

How both sets are labelled, the tag vocabulary and how to add an item: ``evals/LABELLING.md``.
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

#: Currencies without minor units print no decimals (the answer key still writes "12500.00").
_MINOR_UNITS = {"JPY": 0, "KRW": 0, "ISK": 0}

#: A table longer than this gets page numbers: it may run over a page.
_NUMBERED_ROWS = 20

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


@dataclass(frozen=True)
class Locale:
    """How a vendor's country writes an invoice: language, number and date formats."""

    language: str
    """``en``, ``de``, ``fr`` or ``nl``: the wording of labels, headings and terms."""
    thousands: str
    decimal: str
    dates: str
    """``us`` (May 3, 2024), ``uk`` (3 May 2024), ``dots`` (03.05.2024), ``slashes``
    (03/05/2024, day first), ``dashes`` (03-05-2024) or ``ymd`` (2024/05/03)."""
    currency: str
    """The country's own currency: an invoice in another one is a multi-currency case."""
    tax_word: str
    """What an English-language invoice calls the tax."""


_COUNTRIES: dict[str, Locale] = {
    "US": Locale("en", ",", ".", "us", "USD", "Sales tax"),
    "GB": Locale("en", ",", ".", "uk", "GBP", "VAT"),
    "IE": Locale("en", ",", ".", "uk", "EUR", "VAT"),
    "DE": Locale("de", ".", ",", "dots", "EUR", "MwSt."),
    "AT": Locale("de", ".", ",", "dots", "EUR", "USt."),
    "FR": Locale("fr", " ", ",", "slashes", "EUR", "TVA"),
    "NL": Locale("nl", ".", ",", "dashes", "EUR", "BTW"),
    "ES": Locale("en", ".", ",", "slashes", "EUR", "IVA"),
    "IT": Locale("en", ".", ",", "slashes", "EUR", "IVA"),
    "PT": Locale("en", ".", ",", "slashes", "EUR", "IVA"),
    "SE": Locale("en", " ", ",", "dots", "SEK", "Moms"),
    "CH": Locale("en", "'", ".", "dots", "CHF", "MWST/VAT"),
    "JP": Locale("en", ",", ".", "ymd", "JPY", "Consumption tax"),
}

#: Countries a ``render.country`` may name.
COUNTRIES = frozenset(_COUNTRIES)


def vendor_locale(inv: dict[str, Any]) -> Locale:
    """The locale a document is printed in: ``render.country`` if given, else the original rules
    (a GmbH invoicing in EUR writes German; otherwise English, dates by currency)."""
    country = (inv.get("render") or {}).get("country")
    if country is not None:
        return _COUNTRIES[country]
    cur = inv["currency"]
    if _is_german(inv):
        return Locale("de", ".", ",", "dots", cur, "MwSt.")
    dates = {"USD": "us", "GBP": "uk"}.get(cur, "dots")
    return Locale(
        "en", ",", ".", dates, cur, {"USD": "Sales tax", "CHF": "MWST/VAT"}.get(cur, "VAT")
    )


def _money(value: str, loc: Locale, grouped: bool, currency: str) -> str:
    """A decimal string as the locale prints it: 1234.50, 1,234.50, 1.234,50, 1 234,50, 1'234.50;
    no decimals for currencies without minor units (JPY 12,500)."""
    places = _MINOR_UNITS.get(currency, 2)
    amount = Decimal(value).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = f"{amount:,.{places}f}" if grouped else f"{amount:.{places}f}"
    return text.translate(str.maketrans(",.", loc.thousands + loc.decimal))


def _quantity(value: str, loc: Locale) -> str:
    return format(Decimal(value).normalize(), "f").replace(".", loc.decimal)


def _date(value: str, loc: Locale) -> str:
    """A date written the way the vendor's country writes it, so ISO is never handed over."""
    d = date.fromisoformat(value)
    if loc.dates == "us":
        return f"{_MONTHS_EN[d.month - 1]} {d.day}, {d.year}"
    if loc.dates == "uk":
        return f"{d.day} {_MONTHS_EN[d.month - 1]} {d.year}"
    if loc.dates == "ymd":
        return f"{d.year}/{d.month:02d}/{d.day:02d}"
    sep = {"dots": ".", "slashes": "/", "dashes": "-"}[loc.dates]
    return f"{d.day:02d}{sep}{d.month:02d}{sep}{d.year}"


def _tax_rate(subtotal: str, tax: str) -> str:
    """The shortest printed rate (19, 8.1, 8.875) that reproduces the tax from the subtotal.

    The answer key stores amounts only; invoices print a rate, so recover the one the vendor used.
    """
    sub, due = Decimal(subtotal), Decimal(tax)
    if sub == 0 or due == 0:
        return "0"
    for places in range(4):
        step = Decimal(1).scaleb(-places)
        rate = (due * 100 / sub).quantize(step, rounding=ROUND_HALF_UP)
        if (sub * rate / 100).quantize(_CENT, rounding=ROUND_HALF_UP) == due:
            return format(rate.normalize(), "f")
    return format((due * 100 / sub).quantize(Decimal("0.001")).normalize(), "f")


@dataclass(frozen=True)
class _Words:
    """The fixed wording of a language other than English (English has three templates)."""

    title: str
    credit_title: str
    number: str
    credit_number: str
    issued: str
    credit_issued: str
    due: str
    bill_to: str
    sender: str
    continued: str
    page: str
    columns: tuple[str, str, str, str]
    subtotal: str
    tax: str
    """With ``{rate}``."""
    total: str
    credit_total: str
    paid: str
    terms: str
    """With ``{days}``."""
    credit_terms: str


_WORDS = {
    "de": _Words(
        title="RECHNUNG",
        credit_title="GUTSCHRIFT",
        number="Rechnung Nr.",
        credit_number="Gutschrift Nr.",
        issued="Rechnungsdatum",
        credit_issued="Datum",
        due="Fällig am",
        bill_to="Rechnungsempfänger",
        sender="Von:",
        continued="Fortsetzung",
        page="Seite",
        columns=("Beschreibung", "Menge", "Einzelpreis", "Betrag"),
        subtotal="Nettobetrag",
        tax="zzgl. MwSt. {rate} %",
        total="Rechnungsbetrag",
        credit_total="Gutschriftsbetrag",
        paid="Betrag dankend per Karte erhalten.",
        terms="Zahlbar innerhalb von {days} Tagen ohne Abzug. Bitte Rechnungsnummer angeben.",
        credit_terms="Der Betrag wird mit Ihrer nächsten Rechnung verrechnet.",
    ),
    "fr": _Words(
        title="FACTURE",
        credit_title="AVOIR",
        number="Facture n°",
        credit_number="Avoir n°",
        issued="Date de facture",
        credit_issued="Date de l'avoir",
        due="Date d'échéance",
        bill_to="Client",
        sender="De :",
        continued="suite",
        page="Page",
        columns=("Désignation", "Qté", "Prix unit. HT", "Montant HT"),
        subtotal="Total HT",
        tax="TVA {rate} %",
        total="Total TTC",
        credit_total="Total TTC de l'avoir",
        paid="Facture acquittée par carte bancaire le jour de la commande.",
        terms="Paiement à {days} jours date de facture, par virement. Merci de rappeler le numéro "
        "de facture.",
        credit_terms="Cet avoir sera déduit de votre prochaine facture.",
    ),
    "nl": _Words(
        title="FACTUUR",
        credit_title="CREDITNOTA",
        number="Factuurnummer",
        credit_number="Creditnotanummer",
        issued="Factuurdatum",
        credit_issued="Datum",
        due="Vervaldatum",
        bill_to="Factuuradres",
        sender="Van:",
        continued="vervolg",
        page="Pagina",
        columns=("Omschrijving", "Aantal", "Prijs", "Bedrag"),
        subtotal="Subtotaal",
        tax="BTW {rate}%",
        total="Totaal te betalen",
        credit_total="Totaal gecrediteerd",
        paid="Reeds voldaan per pinbetaling, er staat niets meer open.",
        terms="Gelieve binnen {days} dagen te betalen onder vermelding van het factuurnummer.",
        credit_terms="Dit bedrag wordt verrekend met uw volgende factuur.",
    ),
}

#: English headings per template: (title, number label, total label), per kind of document.
_EN_HEADINGS = {
    "invoice": (
        ("INVOICE", "Invoice No.", "Total"),
        ("TAX INVOICE", "Invoice #", "Amount due"),
        ("Invoice", "Invoice number", "Total due"),
    ),
    "credit_note": (
        ("CREDIT NOTE", "Credit note No.", "Total credit"),
        ("CREDIT NOTE", "Credit note #", "Amount credited"),
        ("Credit note", "Credit note number", "Total credit"),
    ),
}


@dataclass(frozen=True)
class _Sheet:
    """Everything printed on one invoice, already worded and formatted for its template.

    Text and PDF renderers both read this, so the two formats of a document say the same thing.
    """

    template: int
    language: str
    credit: bool
    vendor: str
    title: str
    number: tuple[str, str] | None
    """Absent when the document prints no invoice number."""
    issued: tuple[str, str]
    due: tuple[str, str] | None
    """Absent when the invoice was paid on the spot or is a credit note: no due date is printed."""
    references: list[tuple[str, str]]
    bill_to: tuple[str, str]
    columns: tuple[str, str, str, str]
    rows: list[tuple[str, str, str, str]]
    totals: list[tuple[str, str]]
    notes: list[str]
    terms: str
    sender: str
    continued: str
    page: str

    @property
    def heading(self) -> str:
        """The title with the number after it, as a heading or a PDF's document title."""
        return self.title if self.number is None else f"{self.title} {self.number[1]}"

    @property
    def dates(self) -> list[tuple[str, str]]:
        """The date fields and the extra references, in print order."""
        return [self.issued, *([self.due] if self.due else []), *self.references]

    @property
    def meta(self) -> list[tuple[str, str]]:
        """The header fields as (label, value), in print order."""
        return [*([self.number] if self.number else []), *self.dates, self.bill_to]


def _terms(inv: dict[str, Any], loc: Locale, template: int, credit: bool) -> str:
    if loc.language != "en":
        words = _WORDS[loc.language]
        if credit:
            return words.credit_terms
        if inv["due_date"] is None:
            return words.paid
        days = (date.fromisoformat(inv["due_date"]) - date.fromisoformat(inv["issue_date"])).days
        return words.terms.format(days=days)
    if credit:
        return (
            "This credit will be offset against your next invoice.",
            "The credited amount will be refunded to your original payment method within 10 days.",
            "Please deduct this credit from your next payment to us.",
        )[template]
    if inv["due_date"] is None:
        return "Paid by card at the time of order - thank you. No balance outstanding."
    days = (date.fromisoformat(inv["due_date"]) - date.fromisoformat(inv["issue_date"])).days
    return (
        f"Payment terms: Net {days}. Please quote the invoice number with your payment.",
        f"Terms: payment within {days} days of the invoice date by bank transfer.",
        f"Please pay within {days} days. Late payments may incur interest.",
    )[template]


def _sheet(inv: dict[str, Any]) -> _Sheet:
    template = _template(inv["document_id"])
    loc = vendor_locale(inv)
    opts: dict[str, Any] = inv.get("render") or {}
    kind = opts.get("kind", "invoice")
    if kind not in _EN_HEADINGS:
        raise ValueError(f"{inv['document_id']}: unknown render.kind {kind!r}")
    credit = kind == "credit_note"
    tax_line = opts.get("tax_line", True)
    if not tax_line and Decimal(inv["tax"]) != 0:
        raise ValueError(f"{inv['document_id']}: tax_line false needs tax 0.00")
    cur = inv["currency"]
    # Comma decimals always group (1.234,50); dot decimals group in one English template only.
    grouped = template == 1 or loc.thousands != ","

    def money(value: str) -> str:
        return _money(value, loc, grouped, cur)

    def amount(value: str) -> str:
        return f"{cur} {money(value)}" if loc.language == "en" else f"{money(value)} {cur}"

    rate = _tax_rate(inv["subtotal"], inv["tax"]).replace(".", loc.decimal)
    issued = _date(inv["issue_date"], loc)
    due = None if inv["due_date"] is None else _date(inv["due_date"], loc)
    number = inv["invoice_number"]
    paid = due is None and not credit
    if loc.language == "en":
        title, number_label, total_label = _EN_HEADINGS[kind][template]
        date_label = "Date" if template == 2 or credit else "Invoice date"
        labels = (number_label, date_label, "Due date", "Bill to")
        columns = (
            ("Description", "Qty", "Unit price", "Amount"),
            ("Item", "Quantity", "Rate", "Line total"),
            ("Service / product", "Units", "Price", "Net"),
        )[template]
        totals = [
            ("Subtotal", amount(inv["subtotal"])),
            (f"{loc.tax_word} ({rate}%)", amount(inv["tax"])),
            ("Total paid" if paid else total_label, amount(inv["total"])),
        ]
        sender, continued, page = "From:", "continued", "Page"
    else:
        w = _WORDS[loc.language]
        title = w.credit_title if credit else w.title
        labels = (
            w.credit_number if credit else w.number,
            w.credit_issued if credit else w.issued,
            w.due,
            w.bill_to,
        )
        columns = w.columns
        totals = [
            (w.subtotal, amount(inv["subtotal"])),
            (w.tax.format(rate=rate), amount(inv["tax"])),
            (w.credit_total if credit else w.total, amount(inv["total"])),
        ]
        sender, continued, page = w.sender, w.continued, w.page
    if not tax_line:
        # No tax on the page at all: one English template still prints the net subtotal.
        totals = [totals[0], totals[2]] if loc.language == "en" and template != 0 else totals[2:]
    rows = [
        (
            item["description"],
            _quantity(item["quantity"], loc),
            money(item["unit_price"]),
            money(item["amount"]),
        )
        for item in inv["line_items"]
    ]
    return _Sheet(
        template=template,
        language=loc.language,
        credit=credit,
        vendor=inv["vendor_name"],
        title=title,
        number=None if number is None else (labels[0], number),
        issued=(labels[1], issued),
        due=None if due is None else (labels[2], due),
        references=[(str(label), str(value)) for label, value in opts.get("references", [])],
        bill_to=(labels[3], BILL_TO),
        columns=columns,
        rows=rows,
        totals=totals,
        notes=[str(note) for note in opts.get("notes", [])],
        terms=_terms(inv, loc, template, credit),
        sender=sender,
        continued=continued,
        page=page,
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
    notes = [*s.notes, ""] if s.notes else []
    if s.template == 1 and s.language == "en":
        what = "credit note" if s.credit else "invoice"
        number = f" {s.number[1]}" if s.number else ""
        lines = [
            "Dear customer,",
            "",
            f"please find below our {what}{number} from {s.vendor}, issued {s.issued[1]}.",
            *(f"{label}: {value}" for label, value in s.references),
            f"Billed to: {BILL_TO}",
            "",
            "| " + " | ".join(s.columns) + " |",
            "|---|---:|---:|---:|",
            *("| " + " | ".join(row) + " |" for row in s.rows),
            "",
            *(f"{label}: {value}" for label, value in s.totals),
            *([f"{s.due[0]}: {s.due[1]}"] if s.due else []),
            "",
            *notes,
            s.terms,
            "",
            "Kind regards,",
            f"{s.vendor} - accounts team",
        ]
    elif s.template == 2 and s.language == "en":
        lines = [
            s.vendor,
            *([s.title] if s.credit else []),
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
            *notes,
            s.terms,
        ]
    else:
        width = max(len(label) for label, _ in s.meta) + 2
        lines = [
            s.title,
            "",
            f"{s.sender:<{width}}{s.vendor}",
            *(f"{label + ':':<{width}}{value}" for label, value in s.meta),
            "",
            *_fixed_table(s),
            "",
            *notes,
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

    #: "Page" in the document's language when pages are numbered; None prints no footer.
    page_word: str | None = None

    def text_line(self, text: str, size: float = 10, style: str = "", align: str = "L") -> None:
        self.set_font("Helvetica", style=style, size=size)
        self.cell(0, size * 0.55, _latin1(text), align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def footer(self) -> None:
        if self.page_word is None:
            return
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(0, 5, f"{_latin1(self.page_word)} {self.page_no()}/{{nb}}", align="C")


def _pdf_table(pdf: _Pdf, s: _Sheet) -> None:
    widths = (95.0, 20.0, 35.0, 40.0)
    aligns = ("L", "R", "R", "R")

    def column_headings() -> None:
        pdf.set_font("Helvetica", style="B", size=9)
        pdf.set_fill_color(225, 225, 225)
        for text, w, align in zip(s.columns, widths, aligns, strict=True):
            pdf.cell(w, 7, _latin1(text), border="B", align=align, fill=s.template != 2)
        pdf.ln(7)
        pdf.set_font("Helvetica", size=9)

    column_headings()
    for row in s.rows:
        if pdf.will_page_break(6):
            # A row never splits from its page's headings: new page, who and what, headings again.
            pdf.add_page()
            pdf.text_line(f"{s.vendor} - {s.heading} ({s.continued})", size=9, style="I")
            pdf.ln(2)
            column_headings()
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
    """The invoice as a PDF with a real text layer, as a vendor's billing system makes.

    Helvetica is a PDF core font, so nothing is embedded and pypdf can extract the text; the cost
    is that core fonts only cover latin-1, hence the stand-ins. The creation date is the issue date
    so the output is byte-for-byte repeatable. Short invoices fit one page; a long one runs over
    as many as it needs, numbered.
    """
    s = _sheet(inv)
    pdf = _Pdf(format="A4")
    if len(s.rows) > _NUMBERED_ROWS:
        pdf.page_word = s.page
    pdf.set_creation_date(datetime.fromisoformat(inv["issue_date"]).replace(tzinfo=UTC))
    pdf.set_title(_latin1(s.heading))
    pdf.set_author(_latin1(s.vendor))
    pdf.set_margins(10, 12, 10)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    if s.template == 0 or s.language != "en":
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
        pdf.text_line(s.heading, size=15, style="B")
        pdf.text_line("    ".join(f"{label}: {value}" for label, value in s.dates[:2]))
        if s.dates[2:]:
            pdf.text_line("    ".join(f"{label}: {value}" for label, value in s.dates[2:]))
    pdf.ln(6)
    _pdf_table(pdf, s)
    pdf.set_font("Helvetica", size=9)
    if s.notes:
        pdf.ln(4)
        for note in s.notes:
            pdf.multi_cell(0, 5, _latin1(note), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
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
