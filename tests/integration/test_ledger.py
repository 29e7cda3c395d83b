"""The ledger tool through run_effect: real SQLite file, real Redis; rows counted at the sink."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agents.effects import run_effect
from agents.idempotency import IdempotencyStore
from agents.ledger import PostInvoice, PostInvoiceTool
from agents.tools import digest
from streams.settings import Settings

INVOICE = PostInvoice(
    event_id="ev-1",
    document_id="DOC-1",
    vendor_name="Lumen Cloud Hosting",
    invoice_number="LC-77",
    issue_date=date(2026, 3, 1),
    currency="EUR",
    total=Decimal("54.05"),
)


@pytest.fixture
async def store(services: Settings) -> AsyncIterator[IdempotencyStore]:
    r = aioredis.Redis.from_url(services.redis_url)
    yield IdempotencyStore(r, prefix=f"sluice:test:{uuid.uuid4().hex[:8]}", lease_s=0.2)
    await r.aclose()


async def test_a_redelivered_invoice_is_posted_once(
    store: IdempotencyStore, tmp_path: Path
) -> None:
    tool = PostInvoiceTool(tmp_path / "ledger.db")
    first = await run_effect(store, tool, INVOICE, "ev-1")
    again = await run_effect(store, tool, INVOICE, "ev-1")
    assert (first.status, again.status) == ("applied", "duplicate")
    assert again.result == first.result
    assert tool.count() == 1


async def test_a_crash_after_the_insert_is_reconciled_from_the_table(
    store: IdempotencyStore, tmp_path: Path
) -> None:
    tool = PostInvoiceTool(tmp_path / "ledger.db")
    key = tool.key("ev-1", INVOICE)
    claim = await store.claim(key, digest(INVOICE.model_dump(mode="json")))
    await tool.apply(INVOICE, key)  # the row is written, then the process dies before "done"
    await asyncio.sleep(0.3)
    out = await run_effect(store, tool, INVOICE, "ev-1")
    assert (out.status, out.reconciled, out.attempts) == ("applied", True, 2)
    assert claim.state == "claimed"
    assert tool.count() == 1


async def test_the_key_as_primary_key_stops_a_second_row_even_without_redis(
    tmp_path: Path,
) -> None:
    # Two owners both believe they hold the key (one frozen past its lease): the table refuses
    # the second row, and both get the one posting back.
    tool = PostInvoiceTool(tmp_path / "ledger.db")
    key = tool.key("ev-1", INVOICE)
    one, two = await asyncio.gather(tool.apply(INVOICE, key), tool.apply(INVOICE, key))
    assert one == two
    assert tool.count() == 1
