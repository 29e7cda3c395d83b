"""The ledger tool through run_effect, on both backends: a real SQLite file and a real PostgreSQL
server (``make postgres``), with real Redis; rows counted at the table."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from agents.effects import run_effect
from agents.idempotency import IdempotencyStore
from agents.ledger import PostgresLedger, PostInvoice, PostInvoiceTool, SqliteLedger
from agents.tools import Existing, digest
from streams.compose import toolbox
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


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """Where the ledger lives: a SQLite file, or a PostgreSQL URL on this test's own schema."""
    if request.param == "sqlite":
        return tmp_path / "ledger.db"
    return str(request.getfixturevalue("postgres_url"))


async def test_a_redelivered_invoice_is_posted_once(
    store: IdempotencyStore, target: Path | str
) -> None:
    tool = PostInvoiceTool(target)
    first = await run_effect(store, tool, INVOICE, "ev-1")
    again = await run_effect(store, tool, INVOICE, "ev-1")
    assert (first.status, again.status) == ("applied", "duplicate")
    assert again.result == first.result
    assert await tool.count() == 1


async def test_a_crash_after_the_insert_is_reconciled_from_the_table(
    store: IdempotencyStore, target: Path | str
) -> None:
    tool = PostInvoiceTool(target)
    key = tool.key("ev-1", INVOICE)
    claim = await store.claim(key, digest(INVOICE.model_dump(mode="json")))
    posted = await tool.apply(INVOICE, key)  # the row is written, then the process dies
    await asyncio.sleep(0.3)
    out = await run_effect(store, tool, INVOICE, "ev-1")
    assert (out.status, out.reconciled, out.attempts) == ("applied", True, 2)
    assert out.result == posted  # what the table holds, not a new posting
    assert claim.state == "claimed"
    assert await tool.count() == 1


async def test_a_crash_before_the_insert_posts_it_once(
    store: IdempotencyStore, target: Path | str
) -> None:
    tool = PostInvoiceTool(target)
    key = tool.key("ev-1", INVOICE)
    await store.claim(key, digest(INVOICE.model_dump(mode="json")))  # claimed, then died
    await asyncio.sleep(0.3)
    out = await run_effect(store, tool, INVOICE, "ev-1")
    assert (out.status, out.reconciled) == ("applied", False)
    assert await tool.count() == 1


async def test_the_key_as_primary_key_stops_a_second_row_even_without_redis(
    target: Path | str,
) -> None:
    # Two owners both believe they hold the key (one frozen past its lease): the table refuses
    # the second row, and both get the one posting back.
    tool = PostInvoiceTool(target)
    key = tool.key("ev-1", INVOICE)
    one, two = await asyncio.gather(tool.apply(INVOICE, key), tool.apply(INVOICE, key))
    posted, existing = (one, two) if isinstance(two, Existing) else (two, one)
    assert isinstance(existing, Existing)  # the loser is told: a duplicate, not a posting
    assert existing.result == posted
    assert await tool.count() == 1


async def test_a_lost_key_meets_the_row_and_records_a_duplicate(
    store: IdempotencyStore, target: Path | str
) -> None:
    # Redis lost the key (FLUSHALL) after the posting. Asked first, the table has the row; and
    # even a tool that skipped the lookup is refused a second row and records "duplicate".
    tool = PostInvoiceTool(target)
    first = await run_effect(store, tool, INVOICE, "ev-1")
    for reconciles in (True, False):
        await store.redis.delete(f"{store.prefix}:{first.key}")
        tool.reconciles = reconciles
        again = await run_effect(store, tool, INVOICE, "ev-1")
        assert (again.status, again.result) == ("duplicate", first.result), reconciles
        assert again.reconciled is reconciles
    assert await tool.count() == 1


async def test_postgres_row_has_typed_columns(postgres_url: str) -> None:
    tool = PostInvoiceTool(postgres_url)
    await tool.apply(INVOICE, "k-1")
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT total, issue_date, currency, event_id FROM ledger").fetchone()
    assert row == (Decimal("54.05"), date(2026, 3, 1), "EUR", "ev-1")


async def test_postgres_down_is_a_definite_failure_and_the_key_is_released(
    store: IdempotencyStore, postgres_url: str
) -> None:
    # A refused connection sent nothing: the claim is released, and once the database is back
    # the same event posts the invoice (not parked as "unknown", not lost).
    down = PostInvoiceTool(PostgresLedger("postgresql://sluice@127.0.0.1:1/sluice"))
    failed = await run_effect(store, down, INVOICE, "ev-1")
    assert failed.status == "failed"
    assert "cannot connect" in (failed.error or "")
    back = PostInvoiceTool(postgres_url)
    out = await run_effect(store, back, INVOICE, "ev-1")
    assert out.status == "applied"
    assert await back.count() == 1


def test_settings_choose_the_backend(services: Settings, postgres_url: str) -> None:
    with_url = services.model_copy(update={"ledger_url": SecretStr(postgres_url)})
    assert isinstance(toolbox(with_url).tools["post_invoice"].ledger, PostgresLedger)
    assert isinstance(toolbox(services).tools["post_invoice"].ledger, SqliteLedger)
