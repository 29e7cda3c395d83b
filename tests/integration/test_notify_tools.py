"""The ticket tools against their real local targets (webhook receiver, SMTP server) and Redis:
a crash after the effect is settled by asking the target, and nothing is sent twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.effects import run_effect
from agents.idempotency import IdempotencyStore
from agents.notify import Acknowledge, AcknowledgeTool, RouteTicket, RouteTicketTool
from agents.tools import digest
from streams.settings import Settings
from tests.integration.conftest import Sinks


@pytest.fixture
async def store(services: Settings) -> AsyncIterator[IdempotencyStore]:
    r = aioredis.Redis.from_url(services.redis_url)
    yield IdempotencyStore(r, prefix=f"sluice:test:{uuid.uuid4().hex[:8]}", lease_s=0.3)
    await r.aclose()


def tools(sinks: Sinks) -> tuple[RouteTicketTool, AcknowledgeTool]:
    env = sinks.env
    route = RouteTicketTool(env["SLUICE_WEBHOOK_URL"])
    mail = AcknowledgeTool("127.0.0.1", int(env["SLUICE_SMTP_PORT"]), sinks.state / "mail.db")
    return route, mail


@pytest.mark.parametrize("which", ["route", "mail"])
async def test_a_crash_after_the_effect_is_reconciled_not_resent(
    store: IdempotencyStore, sinks: Sinks, which: str
) -> None:
    route, mail = tools(sinks)
    tool: Any = route if which == "route" else mail
    data: Any = (
        RouteTicket(event_id="ev-1", ticket_id="T-1", team="billing")
        if which == "route"
        else Acknowledge(event_id="ev-1", ticket_id="T-1")
    )
    count = sinks.webhook_requests if which == "route" else sinks.mails
    key = tool.key("ev-1", data)
    assert (await tool.reconcile(data, key)).happened is False
    await store.claim(key, digest(data.model_dump(mode="json")))
    await tool.apply(data, key)  # reached the target; the executor dies before "done"
    await asyncio.sleep(0.4)
    out = await run_effect(store, tool, data, "ev-1")
    assert (out.status, out.reconciled, out.attempts) == ("applied", True, 2)
    assert (await run_effect(store, tool, data, "ev-1")).status == "duplicate"
    assert count() == 1


async def test_a_crash_before_the_effect_sends_it_once(
    store: IdempotencyStore, sinks: Sinks
) -> None:
    route, mail = tools(sinks)
    data = RouteTicket(event_id="ev-2", ticket_id="T-2", team="logistics")
    await store.claim(route.key("ev-2", data), digest(data.model_dump(mode="json")))
    await asyncio.sleep(0.4)  # died before sending
    out = await run_effect(store, route, data, "ev-2")
    assert (out.status, out.reconciled) == ("applied", False)
    assert sinks.webhook_requests() == 1
    ack = await run_effect(store, mail, Acknowledge(event_id="ev-2", ticket_id="T-2"), "ev-2")
    assert ack.status == "applied"
    assert sinks.mails() == 1
