"""B13: a 21 KB PDF cost 174 s of CPU. PDF text extraction now has a budget.

The attack: a content stream of a few megabytes of text operators compresses ~1000:1, so the file
stays small while pypdf interprets every operator in Python. Extraction runs in a child process
that is killed at ``SLUICE_PDF_BUDGET_S``; the document is a dead letter ``document_too_costly``,
the calling thread is free within the budget, the event loop never waits on it, and a PDF whose
first pages already pass ``MAX_CHARS`` is not read to the end.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import time
import zlib

import pytest

from agents import documents
from agents.documents import MAX_CHARS, load, pdf_text
from agents.invoice import InvoiceExtractionAgent
from agents.llm import LLMClient, LLMConfig
from schemas import codec
from schemas.errors import DocumentTooCostly, InputTooLarge
from schemas.events import DocumentReceived
from schemas.records import DeadLetter
from streams.builtin import invoice_record
from streams.flow import Flow
from streams.pipeline import Pipeline
from streams.settings import Settings
from tests.unit.test_pipeline import meta

FONT = b"<< /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"


def hostile_pdf(operators: bytes, pages: int = 1) -> bytes:
    """A valid PDF whose pages all draw one Flate-compressed content stream of ``operators``."""
    stream = zlib.compress(b"BT /F1 12 Tf " + operators + b" ET", 9)
    kids = b" ".join(b"%d 0 R" % (4 + i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(stream), stream),
    ]
    page = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R /Resources %s >>"
    objects += [page % FONT] * pages
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)


#: 7 KB: 4.4 MB of "( ) Tj" once inflated, under pypdf's own limit of 2,000,000 tokens per
#: stream; pypdf needs about 18 s of CPU per page for it (each of 20 pages may draw it).
BOMB = hostile_pdf(b"( ) Tj " * 633_000, pages=10)
#: 20 pages of 25,000 characters each, cheap one by one: the first page already passes MAX_CHARS.
LONG = hostile_pdf(b"(a) Tj " * 25_000, pages=20)


def test_the_bomb_is_small() -> None:
    assert len(BOMB) < 10_000


def test_a_costly_pdf_is_refused_within_the_budget() -> None:
    began = time.monotonic()
    with pytest.raises(DocumentTooCostly, match="budget of 1s") as err:
        pdf_text(BOMB, budget_s=1.0)
    elapsed = time.monotonic() - began
    assert err.value.reason == "document_too_costly"
    assert not err.value.retriable
    assert elapsed < 1.0 + 0.5, elapsed  # the thread is free again: the child was killed
    assert multiprocessing.active_children() == []  # nothing keeps parsing behind our back


def test_extraction_stops_once_max_chars_are_collected() -> None:
    began = time.monotonic()
    with pytest.raises(InputTooLarge, match=f"limit of {MAX_CHARS} characters"):
        pdf_text(LONG, budget_s=30.0)
    # One page read (about 0.5 s), not twenty.
    assert time.monotonic() - began < 2.0


def test_a_real_invoice_pdf_is_still_read() -> None:
    from evals.documents import load_invoices, render_pdf

    inv = load_invoices()[0]
    event = DocumentReceived(
        document_id="D-1", content_base64=base64.b64encode(render_pdf(inv)).decode()
    )
    assert inv["invoice_number"] in load(event, None).text


async def test_the_pipeline_dead_letters_it_and_the_loop_keeps_moving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(documents, "PDF_BUDGET_S", 1.0)
    llm = LLMClient(LLMConfig(max_attempts=1))  # never reached
    flow = Flow("invoices", DocumentReceived, InvoiceExtractionAgent(llm), invoice_record)
    pipeline = Pipeline(flow, Settings(topic_suffix=".unit"))
    value = b'{"document_id": "D-bomb", "content_base64": "%s"}' % base64.b64encode(BOMB)

    gaps: list[float] = []

    async def heartbeat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    began = time.monotonic()
    outcome = await pipeline.handle(meta(value))
    elapsed = time.monotonic() - began
    beat.cancel()
    record = codec.decode_as(outcome.value, DeadLetter)
    assert (outcome.lane, record.reason) == ("deadletter", "document_too_costly")
    assert record.error_class == "schemas.errors.DocumentTooCostly"
    assert record.original_value == value
    assert elapsed < 1.0 + 0.5, elapsed
    assert max(gaps) < 0.1, max(gaps)  # the event loop never waited for the parse
