"""The ``post_invoice`` tool: one row per extracted invoice in a ledger table.

The idempotency key is the table's primary key, so the target itself refuses a second row for the
same key: even a process frozen past its lease and overtaken by a reconciling peer cannot post an
invoice twice. ``reconcile`` looks the row up by that key.

Two backends hold the table, chosen by the target given to :class:`PostInvoiceTool`:

- a SQLite file (the default, ``SLUICE_LEDGER_PATH``): calls run in a thread, each on its own
  connection, so the event loop never waits on the disk;
- PostgreSQL when ``SLUICE_LEDGER_URL`` names one (``postgresql://...``), through psycopg's async
  connections, at most ``max_connections`` at once per process.

Both say the same three things about a failed insert: the database refused the statement (a
constraint, a full disk, a lock timeout) → :class:`~schemas.errors.EffectFailed`, nothing was
written; the connection was lost while the statement was out → the exception goes on as is, the
outcome is unknown and ``run_effect`` asks ``reconcile``; the row was already there → the earlier
posting is returned as :class:`~agents.tools.Existing` (recorded ``duplicate``), not a second one.

Every value reaches SQL as a bound parameter; the identifiers are held to a strict alphabet as well
(:class:`PostInvoice`), so a document id or invoice number cannot carry more than an identifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, Field, model_validator

from agents.tools import Existing, Identifier, Reconciled, Tool, ToolPolicy
from schemas.errors import EffectFailed

COLUMNS = (
    "idempotency_key",
    "event_id",
    "document_id",
    "vendor_name",
    "invoice_number",
    "issue_date",
    "currency",
    "total",
    "posted_at",
)

SQLITE_SCHEMA = """
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

POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS ledger (
    idempotency_key TEXT PRIMARY KEY,
    event_id TEXT NOT NULL,
    document_id TEXT NOT NULL,
    vendor_name TEXT NOT NULL,
    invoice_number TEXT,
    issue_date DATE NOT NULL,
    currency CHAR(3) NOT NULL,
    total NUMERIC NOT NULL,
    posted_at TIMESTAMPTZ NOT NULL
)
"""


INVOICE_NUMBER = r"^[A-Za-z0-9][A-Za-z0-9 ._/#-]{0,63}$"
"""An invoice number as vendors print them (``2024/FE/0318``, ``INV #1187``), nothing more."""


class PostInvoice(BaseModel):
    """What the ledger needs of an :class:`~schemas.records.InvoiceExtracted` record."""

    event_id: str = Field(min_length=1, max_length=128)
    document_id: Identifier
    vendor_name: str = Field(min_length=1, max_length=200)
    invoice_number: str | None = Field(pattern=INVOICE_NUMBER)
    issue_date: date
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    total: Decimal = Field(allow_inf_nan=False, max_digits=18, decimal_places=2)
    document_kind: Literal["invoice", "credit_note"] = "invoice"
    """Only a credit note may carry a negative total (money back from the vendor)."""

    @model_validator(mode="after")
    def _negative_only_for_credit_notes(self) -> PostInvoice:
        if self.total < 0 and self.document_kind != "credit_note":
            raise ValueError("a negative total is only posted for a credit note")
        return self


def _row(key: str, data: PostInvoice, posted_at: datetime) -> tuple[Any, ...]:
    """One ledger row's values, in ``COLUMNS`` order."""
    return (
        key,
        data.event_id,
        data.document_id,
        data.vendor_name,
        data.invoice_number,
        data.issue_date,
        data.currency,
        data.total,
        posted_at,
    )


class LedgerBackend(Protocol):
    """Where ledger rows live. ``insert`` returns False when the key's row exists already."""

    async def insert(self, key: str, data: PostInvoice, posted_at: datetime) -> bool: ...

    async def find(self, key: str) -> dict[str, Any] | None: ...

    async def count(self) -> int: ...


class SqliteLedger:
    """The ledger table in a SQLite file (WAL: reconcile and counts never block a writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as db:
            db.execute(SQLITE_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    async def insert(self, key: str, data: PostInvoice, posted_at: datetime) -> bool:
        return await asyncio.to_thread(self._insert, key, data, posted_at)

    def _insert(self, key: str, data: PostInvoice, posted_at: datetime) -> bool:
        row = tuple(
            v.isoformat() if isinstance(v, date) else str(v) if isinstance(v, Decimal) else v
            for v in _row(key, data, posted_at)
        )  # SQLite stores dates and amounts as text
        with contextlib.closing(self._connect()) as db:
            try:
                db.execute(f"INSERT INTO ledger VALUES ({', '.join('?' * len(COLUMNS))})", row)
            except sqlite3.IntegrityError:
                return False  # the key's row is there: an earlier attempt got through
            except sqlite3.DatabaseError as exc:  # a full disk, a locked file: nothing written
                raise EffectFailed(f"ledger: {exc}", retriable=True) from exc
        return True

    async def find(self, key: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._find, key)

    def _find(self, key: str) -> dict[str, Any] | None:
        with contextlib.closing(self._connect()) as db:
            found = db.execute(
                "SELECT idempotency_key, posted_at FROM ledger WHERE idempotency_key = ?", (key,)
            ).fetchone()
        return None if found is None else {"ledger_key": found[0], "posted_at": found[1]}

    async def count(self) -> int:
        def rows() -> int:
            with contextlib.closing(self._connect()) as db:
                return int(db.execute("SELECT count(*) FROM ledger").fetchone()[0])

        return await asyncio.to_thread(rows)


class PostgresLedger:
    """The ledger table in PostgreSQL, created on first use.

    One autocommit connection per call, at most ``max_connections`` at once: the executor keeps
    hundreds of actions in flight, and a database's connection limit is far lower. No pool, so there
    is nothing to close when the process ends.
    """

    def __init__(self, url: str, *, max_connections: int = 8, connect_timeout_s: int = 10) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._slots = asyncio.Semaphore(max_connections)
        self._created = False

    @contextlib.asynccontextmanager
    async def _connect(self) -> Any:
        import psycopg  # imported here: the SQLite default needs no driver

        async with self._slots:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=self.connect_timeout_s
                )
            except psycopg.Error as exc:  # nothing was sent
                raise EffectFailed(f"ledger: cannot connect: {exc}", retriable=True) from exc
            async with conn:
                if not self._created:
                    await self._create(conn)
                yield conn

    async def _create(self, conn: Any) -> None:
        import psycopg

        # Another connection may create it at the same moment: CREATE TABLE IF NOT EXISTS is not
        # atomic in PostgreSQL, and the loser sees the table, its row type or the catalog key
        # taken (DuplicateTable, DuplicateObject "type ledger already exists", UniqueViolation).
        errors = psycopg.errors
        with contextlib.suppress(
            errors.UniqueViolation, errors.DuplicateTable, errors.DuplicateObject
        ):
            await conn.execute(POSTGRES_SCHEMA)
        self._created = True

    async def insert(self, key: str, data: PostInvoice, posted_at: datetime) -> bool:
        import psycopg

        row = _row(key, data, posted_at)
        sql = (
            f"INSERT INTO ledger ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
            " ON CONFLICT (idempotency_key) DO NOTHING"
        )
        async with self._connect() as conn:
            try:
                cur = await conn.execute(sql, row)
            except psycopg.Error as exc:
                if exc.sqlstate is None:  # the connection went away mid-statement: unknown
                    raise
                raise EffectFailed(f"ledger: {exc.sqlstate} {exc}", retriable=False) from exc
            return bool(cur.rowcount == 1)

    async def find(self, key: str) -> dict[str, Any] | None:
        async with self._connect() as conn:
            cur = await conn.execute(
                "SELECT idempotency_key, posted_at FROM ledger WHERE idempotency_key = %s", (key,)
            )
            found = await cur.fetchone()
        if found is None:
            return None
        return {"ledger_key": found[0], "posted_at": found[1].isoformat()}

    async def count(self) -> int:
        async with self._connect() as conn:
            cur = await conn.execute("SELECT count(*) FROM ledger")
            found = await cur.fetchone()
        return int(found[0])


def ledger_backend(target: Path | str) -> LedgerBackend:
    """A backend for ``target``: a ``postgresql://`` or ``postgres://`` URL, else a SQLite path."""
    if isinstance(target, str) and target.split("://", 1)[0] in ("postgresql", "postgres"):
        return PostgresLedger(target)
    return SqliteLedger(Path(target))


class PostInvoiceTool(Tool[PostInvoice]):
    """Posts an invoice to the ledger, once per document per event.

    ``target`` is a SQLite file path or a PostgreSQL URL (see :func:`ledger_backend`), or a
    :class:`LedgerBackend` of your own.
    """

    name: ClassVar[str] = "post_invoice"
    input_model = PostInvoice
    key_fields = ("document_id",)
    reconciles = True

    def __init__(
        self, target: Path | str | LedgerBackend, policy: ToolPolicy | None = None
    ) -> None:
        super().__init__(policy)
        self.ledger = ledger_backend(target) if isinstance(target, (Path, str)) else target

    def amount(self, data: PostInvoice) -> Decimal:
        return data.total

    async def apply(self, data: PostInvoice, key: str) -> dict[str, Any] | Existing:
        posted_at = datetime.now(UTC)
        if await self.ledger.insert(key, data, posted_at):
            return {"ledger_key": key, "posted_at": posted_at.isoformat()}
        # The row is there already: an earlier attempt got through. Not a second posting.
        row = await self.ledger.find(key)
        if row is None:  # cannot be: the row blocked this insert; say so rather than guess
            raise RuntimeError(f"ledger: key {key} both exists and is missing")
        return Existing(row)

    async def reconcile(self, data: PostInvoice, key: str) -> Reconciled:
        row = await self.ledger.find(key)
        return Reconciled(row is not None, row)

    async def count(self) -> int:
        """Rows in the ledger (tests and ``make chaos`` count effects at the sink)."""
        return await self.ledger.count()
