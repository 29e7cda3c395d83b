"""Every state of the two-phase idempotency claim, against the real Redis.

The target system of the test tool is a dict the test owns (what a ledger or a mail server would
hold); Redis is real. Each test counts effects at that target: "exactly once" is a count there, not
a status in a record. Crashes are simulated the way they happen: a claim is taken and its owner
goes away without completing it (before or after reaching the target).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from agents.effects import run_effect
from agents.idempotency import IdempotencyStore
from agents.tools import Reconciled, Tool, digest
from schemas.errors import EffectFailed, IdempotencyConflict, StoreUnavailable
from streams.settings import Settings


class Route(BaseModel):
    ticket_id: str
    team: str


class RouteTool(Tool[Route]):
    """Routes a ticket; its target remembers every key it was reached with."""

    name = "route_to_team"
    input_model = Route
    key_fields = ("ticket_id",)

    def __init__(self, *, reconciles: bool = True, apply_s: float = 0.0) -> None:
        super().__init__()
        self.target: dict[str, list[str]] = {}  # key -> teams routed with it
        self.calls = 0
        self.reconciles = reconciles
        self.apply_s = apply_s
        self.fail_with: Exception | None = None

    async def apply(self, data: Route, key: str) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(self.apply_s)
        if isinstance(self.fail_with, EffectFailed):
            raise self.fail_with  # refused before anything happened
        self.target.setdefault(key, []).append(data.team)
        if self.fail_with is not None:
            raise self.fail_with  # happened, but the answer was lost on the way back
        return {"routed": data.team}

    async def reconcile(self, data: Route, key: str) -> Reconciled:
        if not self.reconciles:
            return Reconciled(None)
        teams = self.target.get(key)
        return Reconciled(bool(teams), {"routed": teams[0]} if teams else None)

    def effects(self) -> int:
        return sum(len(v) for v in self.target.values())


@pytest.fixture
async def client(services: Settings) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.Redis.from_url(services.redis_url)
    yield r
    await r.aclose()


def store_on(r: aioredis.Redis, lease_s: float = 5.0) -> IdempotencyStore:
    return IdempotencyStore(r, prefix=f"sluice:test:{uuid.uuid4().hex[:8]}", lease_s=lease_s)


async def crash_after_claim(store: IdempotencyStore, tool: RouteTool, data: Route, ev: str) -> None:
    """An owner that claimed the key and died without marking it (its lease then runs out)."""
    claim = await store.claim(tool.key(ev, data), digest(data.model_dump(mode="json")))
    assert claim.state == "claimed"


A = Route(ticket_id="T-1", team="billing")


async def test_fresh_then_done_returns_the_stored_result(client: aioredis.Redis) -> None:
    store, tool = store_on(client), RouteTool()
    first = await run_effect(store, tool, A, "ev-1")
    again = await run_effect(store, tool, A, "ev-1")
    assert (first.status, first.attempts, first.result) == ("applied", 1, {"routed": "billing"})
    assert (again.status, again.result) == ("duplicate", {"routed": "billing"})
    assert tool.effects() == 1
    assert tool.calls == 1
    ttl = await client.ttl(f"{store.prefix}:{first.key}")
    assert 0 < ttl <= store.ttl_s  # the key expires, but not before the configured TTL
    other = await run_effect(store, tool, A, "ev-2")  # another event: its own effect
    assert other.status == "applied"
    assert tool.effects() == 2


async def test_a_peer_in_flight_is_waited_for_not_run_again(client: aioredis.Redis) -> None:
    # Two executors get the same decision at once (a rebalance overlap). The effect takes longer
    # than the lease (0.6 s against 0.3 s): the owner renews it, so the peer waits, never runs.
    store, tool = store_on(client, lease_s=0.3), RouteTool(apply_s=0.6)
    one, two = await asyncio.gather(
        run_effect(store, tool, A, "ev-1"), run_effect(store, tool, A, "ev-1")
    )
    assert sorted([one.status, two.status]) == ["applied", "duplicate"]
    assert tool.effects() == 1
    assert tool.calls == 1


async def test_stale_claim_whose_effect_happened_is_marked_done_not_rerun(
    client: aioredis.Redis,
) -> None:
    store, tool = store_on(client, lease_s=0.2), RouteTool()
    await crash_after_claim(store, tool, A, "ev-1")
    tool.target[tool.key("ev-1", A)] = ["billing"]  # it reached the target before the crash
    await asyncio.sleep(0.3)
    out = await run_effect(store, tool, A, "ev-1")
    assert (out.status, out.reconciled, out.attempts) == ("applied", True, 2)
    assert tool.calls == 0
    assert tool.effects() == 1
    assert (await run_effect(store, tool, A, "ev-1")).status == "duplicate"


async def test_stale_claim_whose_effect_did_not_happen_runs_once(client: aioredis.Redis) -> None:
    store, tool = store_on(client, lease_s=0.2), RouteTool()
    await crash_after_claim(store, tool, A, "ev-1")  # died before reaching the target
    await asyncio.sleep(0.3)
    out = await run_effect(store, tool, A, "ev-1")
    assert (out.status, out.attempts) == ("applied", 2)
    assert tool.calls == 1
    assert tool.effects() == 1


async def test_stale_claim_a_tool_cannot_reconcile_is_parked_unknown(
    client: aioredis.Redis,
) -> None:
    store, tool = store_on(client, lease_s=0.2), RouteTool(reconciles=False)
    await crash_after_claim(store, tool, A, "ev-1")
    await asyncio.sleep(0.3)
    out = await run_effect(store, tool, A, "ev-1")
    later = await run_effect(store, tool, A, "ev-1")
    assert (out.status, out.reconciled) == ("unknown", True)
    assert "cannot tell" in (out.error or "")
    assert later.status == "unknown"  # parked: never re-run blindly
    assert tool.calls == 0


async def test_same_key_with_different_input_is_a_conflict(client: aioredis.Redis) -> None:
    # The event came back and the model now says another team: same key (ticket), other input.
    store, tool = store_on(client), RouteTool()
    await run_effect(store, tool, A, "ev-1")
    with pytest.raises(IdempotencyConflict):
        await run_effect(store, tool, Route(ticket_id="T-1", team="logistics"), "ev-1")
    assert tool.target == {tool.key("ev-1", A): ["billing"]}


async def test_lease_lost_while_the_effect_runs_is_detected(client: aioredis.Redis) -> None:
    # An owner frozen past its lease (no renewal): a peer takes the key over as stale and owns it;
    # the first owner's late completion is refused, so the key records one outcome.
    store, tool = store_on(client, lease_s=0.2), RouteTool()
    key, fp = tool.key("ev-1", A), digest(A.model_dump(mode="json"))
    frozen = await store.claim(key, fp)
    await asyncio.sleep(0.3)
    peer = await store.claim(key, fp)
    assert peer.state == "stale"
    assert peer.claims == 2
    assert not await store.complete(frozen, '{"routed": "billing"}')
    assert not await store.renew(frozen)
    assert not await store.release(frozen)
    assert await store.complete(peer, '{"routed": "billing"}')
    done = await store.claim(key, fp)
    assert (done.state, done.result) == ("done", '{"routed": "billing"}')


async def test_a_definite_failure_releases_the_key_for_a_later_attempt(
    client: aioredis.Redis,
) -> None:
    store, tool = store_on(client), RouteTool()
    tool.fail_with = EffectFailed("team queue closed")
    failed = await run_effect(store, tool, A, "ev-1")
    assert failed.status == "failed"
    assert "team queue closed" in (failed.error or "")
    tool.fail_with = None
    retried = await run_effect(store, tool, A, "ev-1")
    assert retried.status == "applied"
    assert tool.effects() == 1
    assert tool.calls == 2


async def test_an_unclear_failure_is_reconciled_at_once(client: aioredis.Redis) -> None:
    # The effect happened but the answer was lost (a timeout on the way back): reconcile finds it.
    store, tool = store_on(client), RouteTool()
    tool.fail_with = TimeoutError("no answer")
    out = await run_effect(store, tool, A, "ev-1")
    assert (out.status, out.reconciled, out.result) == ("applied", True, {"routed": "billing"})
    tool.fail_with = None
    assert (await run_effect(store, tool, A, "ev-1")).status == "duplicate"
    assert tool.effects() == 1


async def test_redis_down_means_nothing_runs() -> None:
    closed = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
    tool = RouteTool()
    with pytest.raises(StoreUnavailable):
        await run_effect(store_on(closed), tool, A, "ev-1")
    assert tool.calls == 0
    await closed.aclose()


async def test_a_stale_claim_taken_over_gets_a_new_lease_so_a_third_claimer_waits(
    client: aioredis.Redis,
) -> None:
    # Two owners at once would be two effects: the peer that takes a stale key over must hold a
    # fresh lease, so a third caller right after it sees the key in flight, not stale again.
    store = store_on(client, lease_s=0.2)
    key, fp = "k-stale", "fp"
    first = await store.claim(key, fp)
    assert first.state == "claimed"
    await asyncio.sleep(0.3)  # the first owner died: its lease ran out
    second = await store.claim(key, fp)
    third = await store.claim(key, fp)
    assert (second.state, second.claims) == ("stale", 2)
    assert third.state == "in_flight"
    assert 0 < third.lease_left_ms <= 200
    assert third.claims == 2  # a waiter is not counted as an attempt


async def test_a_definite_refusal_releases_the_key_at_once_with_one_attempt(
    client: aioredis.Redis,
) -> None:
    # A long lease: if the refusal left the key claimed, the retry would wait it out (30 s) and
    # then count a second attempt. Released, the retry claims it fresh and runs at once.
    store, tool = store_on(client, lease_s=30.0), RouteTool()
    tool.fail_with = EffectFailed("team queue closed")
    failed = await run_effect(store, tool, A, "ev-1")
    assert (failed.status, failed.attempts) == ("failed", 1)
    assert await client.exists(f"{store.prefix}:{failed.key}") == 0  # nothing left claimed
    tool.fail_with = None
    async with asyncio.timeout(3):
        retried = await run_effect(store, tool, A, "ev-1")
    assert (retried.status, retried.attempts) == ("applied", 1)
    assert tool.calls == 2
    assert tool.effects() == 1


# --- the key lost, the effect not (B9): a tool that can reconcile is asked before its first apply


async def test_a_lost_key_finds_the_effect_at_the_target_and_records_a_duplicate(
    client: aioredis.Redis,
) -> None:
    store, tool = store_on(client), RouteTool()
    first = await run_effect(store, tool, A, "ev-1")
    await client.delete(f"{store.prefix}:{first.key}")  # what FLUSHALL does to this key
    again = await run_effect(store, tool, A, "ev-1")
    assert (again.status, again.reconciled, again.result) == ("duplicate", True, first.result)
    assert tool.calls == 1
    assert tool.effects() == 1
    assert (await run_effect(store, tool, A, "ev-1")).status == "duplicate"  # the key is back


async def test_a_tool_that_cannot_reconcile_is_not_asked_before_its_first_apply(
    client: aioredis.Redis,
) -> None:
    class Blind(RouteTool):
        reconciles = False
        asked = 0

        async def reconcile(self, data: Route, key: str) -> Reconciled:
            self.asked += 1
            return Reconciled(None)

    store, tool = store_on(client), Blind()
    tool.reconciles = False
    out = await run_effect(store, tool, A, "ev-1")
    assert (out.status, tool.asked, tool.calls) == ("applied", 0, 1)


async def test_a_target_that_cannot_answer_the_first_lookup_gets_nothing_sent(
    client: aioredis.Redis,
) -> None:
    class Down(RouteTool):
        async def reconcile(self, data: Route, key: str) -> Reconciled:
            raise ConnectionRefusedError("target down")

    store, tool = store_on(client), Down()
    out = await run_effect(store, tool, A, "ev-1")
    assert out.status == "failed"
    assert "target down" in (out.error or "")
    assert tool.calls == 0
    assert await client.exists(f"{store.prefix}:{out.key}") == 0  # released: a redrive runs it
