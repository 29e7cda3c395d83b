"""PDF text extraction as a child process, so that a hostile PDF can be killed.

pypdf interprets content streams in pure Python and cannot be interrupted from another thread; a
small file whose streams inflate to megabytes of operators kept it busy for minutes.
:func:`agents.documents.pdf_text` runs this module in a child process (``python -c``, see there),
writes the PDF to its stdin and reads one JSON line ``{"kind": ..., "value": ...}`` from its
stdout, and kills it at the budget. It imports nothing but pypdf: a fresh interpreter starts in
about a quarter of a second.

``kind`` is ``ok`` (the text), ``too_large`` (more than ``max_pages`` pages, or more than
``max_chars`` characters collected: extraction stops there) or ``unreadable`` (whatever pypdf
raised). A child that dies without a line (a crash, or the CPU limit set below) is unreadable too.
"""

from __future__ import annotations

import io
import json
import resource
import sys


def extract(data: bytes, max_pages: int, max_chars: int) -> tuple[str, str]:
    """``(kind, text or message)`` for the PDF in ``data``, page by page, stopping once the text
    passes ``max_chars`` (the document is too large then whatever follows)."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        pages = len(reader.pages)
        if pages > max_pages:
            return "too_large", f"PDF has {pages} pages; at most {max_pages} are read"
        parts: list[str] = []
        length = -1  # "\n".join: one separator fewer than pages
        for page in reader.pages:
            parts.append(page.extract_text() or "")
            length += len(parts[-1]) + 1
            if length > max_chars:
                return "too_large", (
                    f"PDF text passes the limit of {max_chars} characters; extraction stopped "
                    f"after page {len(parts)} of {pages}"
                )
    except BaseException as exc:  # pypdf raises anything from KeyError to RecursionError
        return "unreadable", f"not a readable PDF: {type(exc).__name__}: {exc}"[:300]
    return "ok", "\n".join(parts)


def main(max_pages: int, max_chars: int, cpu_s: int) -> None:
    """Read the PDF from stdin, write the answer to stdout. ``cpu_s``: the kernel ends this
    process after that much CPU, a backstop should its parent die before it can kill it."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    kind, value = extract(sys.stdin.buffer.read(), max_pages, max_chars)
    sys.stdout.write(json.dumps({"kind": kind, "value": value}) + "\n")
    sys.stdout.flush()
