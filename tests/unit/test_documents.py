"""Document loading: inline text, PDF bytes, allowlisted paths — and what is refused."""

import base64
from pathlib import Path

import pytest

from agents.documents import load
from evals.documents import load_invoices, render_pdf
from schemas.errors import InvalidInput, UndecodableInput
from schemas.events import DocumentReceived, parse_event


def event(**fields: str) -> DocumentReceived:
    return DocumentReceived.model_validate({"document_id": "D-1", **fields})


def test_inline_text_and_pdf() -> None:
    assert load(event(text="Invoice 7"), None).text == "Invoice 7"
    inv = load_invoices()[0]
    pdf = render_pdf(inv)
    doc = load(event(content_base64=base64.b64encode(pdf).decode()), None)
    assert doc.content_type == "application/pdf"  # sniffed from %PDF-
    assert inv["invoice_number"] in doc.text


def test_path_only_inside_the_document_dir(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("Invoice A")
    (tmp_path / "secret.txt").write_text("secret")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert load(event(path="a.txt"), root).text == "Invoice A"
    for escape in ("../secret.txt", "link.txt", str(tmp_path / "secret.txt")):
        with pytest.raises(InvalidInput, match="outside the document directory"):
            load(event(path=escape), root)
    with pytest.raises(InvalidInput, match="SLUICE_DOCUMENT_DIR"):
        load(event(path="a.txt"), None)
    with pytest.raises(InvalidInput, match="no document"):
        load(event(path="missing.txt"), root)


@pytest.mark.parametrize(
    ("raw", "error", "match"),
    [
        (b'{"document_id": "D", "path": "http://evil/x.pdf"}', InvalidInput, "not a URL"),
        (b'{"document_id": "D"}', InvalidInput, "exactly one of"),
        (b'{"document_id": "D", "text": "a", "path": "b"}', InvalidInput, "exactly one of"),
    ],
)
def test_event_shape_is_validated(raw: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_event(raw, DocumentReceived)


def test_unreadable_documents() -> None:
    with pytest.raises(UndecodableInput, match="not base64"):
        load(event(content_base64="%%%"), None)
    broken = base64.b64encode(b"%PDF-1.4 garbage").decode()
    with pytest.raises(UndecodableInput, match="not a readable PDF"):
        load(event(content_base64=broken), None)
    with pytest.raises(UndecodableInput, match="not UTF-8"):
        load(event(content_base64=base64.b64encode(b"\xff\xfe\x00").decode()), None)
