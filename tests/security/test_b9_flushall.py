"""B9: losing every idempotency key does not repeat an effect.

An executor runs the auto lanes of both flows (route a ticket through the webhook, acknowledge it by
mail, post invoices to the ledger) on a Redis database of this test's own. Then that database is
flushed (``FLUSHDB``: what ``FLUSHALL`` does to it, without touching the databases other tests use)
and a fresh executor group reads both auto lanes again from offset 0. Each tool asks its target
before its first apply, finds the effect there and records ``duplicate``: the webhook receiver, the
SMTP sink and the ledger still hold exactly one of each effect.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import redis

from schemas import codec
from schemas.records import ProposedAction, ToolEffect
from tests.integration.conftest import Isolated, Sinks, send_values, start_worker
from tests.integration.test_executor import read_all
from tests.security import lanes

#: A Redis database no other test uses: this test flushes it.
REDIS_URL = "redis://127.0.0.1:6379/13"
TICKETS, INVOICES = 2, 2
EFFECTS = 2 * TICKETS + INVOICES
ACTIONS = (
    ProposedAction(action="route_to_team", target="logistics", confidence=0.95),
    ProposedAction(action="send_acknowledgement", target=None, confidence=0.95),
)


async def test_a_flushed_store_and_a_full_redelivery_send_nothing_twice(
    isolated: Isolated, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix
    env = {**isolated.env, **sinks.env, "REDIS_URL": REDIS_URL}
    executor = start_worker(env, tmp_path / "executor.log", command="executor")
    fresh = None
    try:
        await send_values(
            s.bootstrap_servers,
            s.topics.of("tickets", "auto"),
            [lanes.ticket(f"ev-b9-t{i}{run}", f"T-{i}", *ACTIONS) for i in range(TICKETS)],
        )
        await send_values(
            s.bootstrap_servers,
            s.topics.of("invoices", "auto"),
            [lanes.invoice(f"ev-b9-i{i}{run}", f"{100 + i}.50") for i in range(INVOICES)],
        )
        first = [codec.decode_as(v, ToolEffect)
                 for v in await read_all(s, s.topics.effects, EFFECTS, timeout_s=60)]  # fmt: skip
        assert [e.status for e in first] == ["applied"] * EFFECTS, [e.error for e in first]
        assert (sinks.webhook_requests(), sinks.mails(), sinks.ledger_rows()) == (2, 2, 2)
        lanes.kill(executor)

        redis.Redis.from_url(REDIS_URL).flushdb()  # every idempotency key is gone
        again = {**env, "SLUICE_APP_ID": f"{s.app_id}-fresh"}  # a new group: from offset 0
        fresh = start_worker(again, tmp_path / "fresh.log", command="executor")
        raw = await read_all(s, s.topics.effects, 2 * EFFECTS, timeout_s=60)
        assert fresh.alive(), fresh.log_tail()
        by_effect: dict[tuple[str, str], list[ToolEffect]] = defaultdict(list)
        for e in (codec.decode_as(v, ToolEffect) for v in raw):
            by_effect[(e.event_id, e.tool)].append(e)
        assert len(by_effect) == EFFECTS
        for (event_id, tool), records in by_effect.items():
            statuses = sorted((e.status, e.reconciled) for e in records)
            assert statuses == [("applied", False), ("duplicate", True)], (event_id, tool, records)
            assert len({e.idempotency_key for e in records}) == 1
        assert (sinks.webhook_requests(), sinks.mails(), sinks.ledger_rows()) == (2, 2, 2)
    finally:
        lanes.kill(executor, fresh)
