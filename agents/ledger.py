"""The ``post_invoice`` tool: one row per extracted invoice in a ledger table (SQLite).

The idempotency key is the table's primary key, so the target itself refuses a second row for the
same key: even a process frozen past its lease and overtaken by a reconciling peer cannot post an
invoice twice. ``reconcile`` looks the row up by that key.

The database is a SQLite file (``SLUICE_LEDGER_PATH``); calls run in a thread, each on its own
connection, so the event loop never waits on the disk. PostgreSQL is not supported yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from agents.tools import Reconciled, Tool, ToolPolicy
from schemas.errors import EffectFailed

SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    idempotency_key TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    vendor_name TEXT NOT NULL,
    invoice_number TEXT,
    issue_date TEXT NOT NULL,
    currency TEXT NOT NULL,
    total TEXT NOT NULL,
    posted_at TEXT NOT NULL
)
"""


class PostInvoice(BaseModel):
    """What the ledger needs of an :class:`~schemas.records.InvoiceExtracted` record."""

    event_id: str
    document_id: str = Field(min_length=1)
    vendor_name: str = Field(min_length=1)
    invoice_number: str | None
    issue_date: date
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    total: Decimal


class PostInvoiceTool(Tool[PostInvoice]):
    """Posts an invoice to the ledger, once per document per event."""

    name: ClassVar[str] = "post_invoice"
    input_model = PostInvoice
    key_fields = ("document_id",)

    def __init__(self, path: Path, policy: ToolPolicy | None = None) -> None:
        super().__init__(policy)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as db:
            db.execute(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")  # readers (reconcile, counts) never block the writer
        return db

    def amount(self, data: PostInvoice) -> Decimal:
        return data.total

    async def apply(self, data: PostInvoice, key: str) -> dict[str, Any]:
        return await asyncio.to_thread(self._insert, data, key)

    async def reconcile(self, data: PostInvoice, key: str) -> Reconciled:
        row = await asyncio.to_thread(self._row, key)
        return Reconciled(row is not None, row)

    def _insert(self, data: PostInvoice, key: str) -> dict[str, Any]:
        posted_at = datetime.now(UTC).isoformat()
        with contextlib.closing(self._connect()) as db:
            try:
                db.execute(
                    "INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        data.event_id,
                        data.document_id,
                        data.vendor_name,
                        data.invoice_number,
                        data.issue_date.isoformat(),
                        data.currency,
                        str(data.total),
                        posted_at,
                    ),
                )
            except sqlite3.IntegrityError:
                # The row is there already: an earlier attempt got through. Not a second posting.
                row = self._row(key)
                assert row is not None
                return row
            except sqlite3.DatabaseError as exc:  # a full disk, a locked file: nothing written
                raise EffectFailed(f"ledger: {exc}", retriable=True) from exc
        return {"ledger_key": key, "posted_at": posted_at}

    def _row(self, key: str) -> dict[str, Any] | None:
        with contextlib.closing(self._connect()) as db:
            found = db.execute(
                "SELECT idempotency_key, posted_at FROM ledger WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if found is None else {"ledger_key": found[0], "posted_at": found[1]}

    def count(self) -> int:
        """Rows in the ledger (tests and ``make chaos`` count effects at the sink)."""
        with contextlib.closing(self._connect()) as db:
            return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])
