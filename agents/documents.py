"""Turning a document event into text an agent can read: inline bytes, text, or an allowlisted file.

Files are read only from under one configured directory, resolved with symlinks followed, so an
event cannot name ``../../etc/passwd`` or a link out of it. There is no URL fetching at all. PDF
text comes from pypdf; a PDF without a text layer (a scan) is refused with that reason rather than
sent to the model as an empty string.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

from pypdf import PdfReader
from pypdf.errors import PyPdfError

from schemas.errors import InputTooLarge, InvalidInput, UndecodableInput
from schemas.events import ContentType, DocumentReceived

MAX_PAGES = 20
MAX_CHARS = 24_000


@dataclass(frozen=True)
class Document:
    text: str
    content_type: ContentType


def _read_allowlisted(relative: str, root: Path | None) -> bytes:
    if root is None:
        raise InvalidInput("documents by path are disabled: set SLUICE_DOCUMENT_DIR to allow a dir")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        # Messages name the problem, not the path: event values stay out of logs and dead letters.
        raise InvalidInput("path is outside the document directory")
    if not target.is_file():
        raise InvalidInput("no document at that path in the document directory")
    return target.read_bytes()


def pdf_text(data: bytes) -> str:
    try:
        reader = PdfReader(io.BytesIO(data))
        if len(reader.pages) > MAX_PAGES:
            raise InputTooLarge(f"PDF has {len(reader.pages)} pages; at most {MAX_PAGES} are read")
        text = "\n".join(page.extract_text() or "" for page in reader.pages)
    except InputTooLarge:
        raise
    except (PyPdfError, RecursionError, Exception) as exc:
        # pypdf raises anything from KeyError to RecursionError on a malformed file; whatever it
        # is, the document is what's broken, not the worker.
        raise UndecodableInput(f"not a readable PDF: {type(exc).__name__}: {exc}"[:300]) from None
    if not text.strip():
        raise InvalidInput("the PDF has no text layer (a scan?); OCR is not supported")
    return text


def load(event: DocumentReceived, root: Path | None) -> Document:
    """The document's text and media type; an :class:`InputError` names what is wrong."""
    if event.text is not None:
        data, kind = event.text.encode(), event.content_type or "text/plain"
    else:
        if event.path is not None:
            data = _read_allowlisted(event.path, root)
        else:
            try:
                data = base64.b64decode(event.content_base64 or "", validate=True)
            except (binascii.Error, ValueError) as exc:
                raise UndecodableInput(f"content_base64 is not base64: {exc}") from None
        sniffed: ContentType = "application/pdf" if data[:5] == b"%PDF-" else "text/plain"
        kind = event.content_type or sniffed
    if kind == "application/pdf":
        text = pdf_text(data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UndecodableInput(
                f"text document is not UTF-8: {exc.reason} at byte {exc.start}"
            ) from None
    if not text.strip():
        raise InvalidInput("the document is empty")
    if len(text) > MAX_CHARS:
        raise InputTooLarge(f"document text has {len(text)} characters; the limit is {MAX_CHARS}")
    return Document(text=text, content_type=kind)
