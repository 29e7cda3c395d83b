"""Turning a document event into text an agent can read: inline bytes, text, or an allowlisted file.

Files are read only from under one configured directory, resolved with symlinks followed, so an
event cannot name ``../../etc/passwd`` or a link out of it. There is no URL fetching at all. A
file's size is checked on the open file before it is read, and no more than the limit is read,
so a path to a huge (or sparse) file costs nothing. PDF text comes from pypdf; a PDF without a
text layer (a scan) is refused with that reason rather than sent to the model as an empty string.

**PDF parsing is untrusted work with a budget.** A 21 KB PDF whose content stream inflates to
megabytes of text operators kept pypdf busy for minutes of CPU, and pypdf cannot be interrupted
from another thread. So the text is extracted in a child process (:mod:`agents.pdftext`, a fresh
interpreter that imports only pypdf: about 0.25 s to start), page by page, stopping once more
than :data:`MAX_CHARS` are collected; the caller waits at most the budget
(``SLUICE_PDF_BUDGET_S``), then kills the child and refuses the document as
:class:`~schemas.errors.DocumentTooCostly`. The calling thread is free again within the budget
whatever the file holds; a crash of the parser is the document's fault, not the worker's. Not
``multiprocessing``: its children import the parent's ``__main__`` again, which a script without
a main guard (a benchmark, a notebook) does not survive. At most one child per CPU runs at a time:
more would only share the cores.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import stat
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import DocumentTooCostly, InputTooLarge, InvalidInput, UndecodableInput
from schemas.events import ContentType, DocumentReceived

MAX_PAGES = 20
MAX_CHARS = 24_000
#: Largest file read by path: what the largest inline document decodes to (``content_base64`` is at
#: most 14,000,000 base64 characters).
MAX_FILE_BYTES = 10_500_000
#: Seconds of wall time one PDF's text extraction may take (``SLUICE_PDF_BUDGET_S``). A real
#: invoice of a few pages takes well under 100 ms.
PDF_BUDGET_S = 5.0

#: Children parsing at once (each holds a core while it runs); callers beyond it wait their turn,
#: and the wait is not charged to their budget.
_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


@dataclass(frozen=True)
class Document:
    text: str
    content_type: ContentType


def _read_allowlisted(relative: str, root: Path | None, limit: int = MAX_FILE_BYTES) -> bytes:
    if root is None:
        raise InvalidInput("documents by path are disabled: set SLUICE_DOCUMENT_DIR to allow a dir")
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base):
        # Messages name the problem, not the path: event values stay out of logs and dead letters.
        raise InvalidInput("path is outside the document directory")
    if not target.is_file():
        raise InvalidInput("no document at that path in the document directory")
    # The size is checked on the opened file (not the name, which may be swapped in between), and
    # at most limit + 1 bytes are read whatever it says: a file growing while read is caught too.
    # O_NONBLOCK: a FIFO swapped in after the check must not hang the reading thread.
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        raise InvalidInput("the document cannot be opened") from None
    with open(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput("no document at that path in the document directory")
        if info.st_size > limit:
            raise InputTooLarge(f"document file has {info.st_size} bytes; the limit is {limit}")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise InputTooLarge(f"document file has more than {limit} bytes; the limit is {limit}")
    return data


#: The child: this checkout's (or installation's) root first on its path, nothing from the
#: current directory (``-I``), then :func:`agents.pdftext.main`.
_CHILD = (
    "import sys; sys.path.insert(0, {root!r}); from agents.pdftext import main; "
    "main({pages}, {chars}, {cpu})"
)
_ROOT = str(Path(__file__).resolve().parents[1])


def pdf_text(data: bytes, budget_s: float | None = None) -> str:
    """The text of a PDF, extracted within ``budget_s`` seconds of wall time (default
    :data:`PDF_BUDGET_S`) or refused.

    Raises :class:`DocumentTooCostly` past the budget (the child is killed: nothing keeps
    running), :class:`InputTooLarge` past :data:`MAX_PAGES` or :data:`MAX_CHARS`,
    :class:`UndecodableInput` for a file pypdf cannot read (or that crashes it), and
    :class:`InvalidInput` for a PDF without a text layer.
    """
    budget_s = PDF_BUDGET_S if budget_s is None else budget_s
    code = _CHILD.format(root=_ROOT, pages=MAX_PAGES, chars=MAX_CHARS, cpu=math.ceil(budget_s) + 1)
    with _SLOTS:
        # stderr to /dev/null: pypdf may log a warning per broken object, megabytes of them.
        child = subprocess.Popen(
            [sys.executable, "-I", "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={},  # the parser reads hostile input: it gets none of our credentials
        )
        try:
            out, _ = child.communicate(data, timeout=budget_s)
        except subprocess.TimeoutExpired:
            raise DocumentTooCostly(
                f"PDF text extraction passed its budget of {budget_s:g}s "
                f"(SLUICE_PDF_BUDGET_S); the document was not read"
            ) from None
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    try:
        answer = json.loads(out.decode().splitlines()[-1])
        kind, value = str(answer["kind"]), str(answer["value"])
    except (ValueError, IndexError, KeyError, TypeError):
        kind, value = "unreadable", f"not a readable PDF: the parser died ({child.returncode})"
    if kind == "too_large":
        raise InputTooLarge(value)
    if kind != "ok":
        raise UndecodableInput(value)
    if not value.strip():
        raise InvalidInput("the PDF has no text layer (a scan?); OCR is not supported")
    return value


def load(
    event: DocumentReceived, root: Path | None, *, pdf_budget_s: float | None = None
) -> Document:
    """The document's text and media type; an :class:`InputError` names what is wrong.

    Blocking (file reads, waiting for the PDF child up to ``pdf_budget_s``): call it in a thread.
    """
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
        text = pdf_text(data, pdf_budget_s)
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
