"""The circuit breaker against real Redis: every state and transition, and two breakers (two
workers) sharing one state."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from streams.breaker import Breaker, BreakerConfig
from streams.settings import Settings

FAST = BreakerConfig(
    window_size=10, minimum_calls=4, failure_rate=0.5, slow_call_rate=0.75, slow_call_s=1.0,
    wait_open_s=1.0, half_open_calls=2,
)  # fmt: skip


@pytest.fixture
async def redis(services: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(services.redis_url)
    yield client
    await client.aclose()


def breaker(redis: aioredis.Redis, prefix: str, config: BreakerConfig = FAST) -> Breaker:
    return Breaker(redis, "tickets", config, prefix=prefix)


@pytest.fixture
def prefix() -> str:
    return f"sluice:test:{uuid.uuid4().hex[:8]}"


async def calls(b: Breaker, *failed: bool, seconds: float = 0.1) -> str:
    state = ""
    for f in failed:
        state = await b.record(failed=f, seconds=seconds)
    return state


async def test_it_opens_at_the_failure_rate_only_after_the_minimum_calls(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix)
    assert await calls(b, True, True, True) == "closed"  # 3 < minimum_calls, even at 100 %
    assert await b.acquire() == (True, "closed")
    assert await calls(b, True) == "open"  # 4 calls, 100 % failed
    assert await b.acquire() == (False, "open")


async def test_below_the_rate_it_stays_closed(redis: aioredis.Redis, prefix: str) -> None:
    b = breaker(redis, prefix)
    # never 50 % failed once the minimum is reached (25 %, 40 %, 33 %, 43 %, ... 40 %): closed
    sequence = (False, False, True, False, True, False, True, False, True, False)
    assert await calls(b, *sequence) == "closed"
    assert await calls(b, True) == "open"  # the oldest call slid out: now 5 of 10 failed


async def test_slow_calls_open_it_too(redis: aioredis.Redis, prefix: str) -> None:
    b = breaker(redis, prefix)
    assert await calls(b, False, False, False, seconds=2.0) == "closed"
    assert await calls(b, False, seconds=2.0) == "open"  # 4 of 4 slow >= 75 %


async def test_after_the_wait_trials_close_it_when_they_succeed(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix)
    await calls(b, True, True, True, True)
    assert await b.acquire() == (False, "open")
    await asyncio.sleep(1.1)
    assert await b.acquire() == (True, "half_open")
    assert await b.acquire() == (True, "half_open")
    assert await b.acquire() == (False, "half_open")  # only half_open_calls trials
    assert await calls(b, False, False) == "closed"
    assert await b.acquire() == (True, "closed")
    # the window starts empty again: it takes the minimum calls to judge
    assert await calls(b, True, True, True) == "closed"


async def test_failing_trials_open_it_again(redis: aioredis.Redis, prefix: str) -> None:
    b = breaker(redis, prefix)
    await calls(b, True, True, True, True)
    await asyncio.sleep(1.1)
    assert (await b.acquire())[0]
    assert (await b.acquire())[0]
    assert await calls(b, True, False) == "open"  # 1 of 2 failed >= 50 %
    assert await b.acquire() == (False, "open")


async def test_trials_that_never_report_are_handed_out_again(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix)
    await calls(b, True, True, True, True)
    await asyncio.sleep(1.1)
    assert (await b.acquire())[0]  # both trials are taken, and their workers die
    assert (await b.acquire())[0]
    assert await b.acquire() == (False, "half_open")
    await asyncio.sleep(1.1)
    assert await b.acquire() == (True, "half_open")  # a new round, not stuck forever


async def test_the_kill_switch_holds_until_closed(redis: aioredis.Redis, prefix: str) -> None:
    b = breaker(redis, prefix)
    await b.force("forced_open", by="ops", reason="agent misbehaving")
    assert await b.acquire() == (False, "forced_open")
    assert await calls(b, False, False, False, False, False) == "forced_open"  # no auto-recovery
    await asyncio.sleep(1.1)
    assert await b.acquire() == (False, "forced_open")  # no wait ends it either
    status = await b.status()
    assert (status["state"], status["by"], status["reason"]) == (
        "forced_open", "ops", "agent misbehaving",
    )  # fmt: skip
    await b.force("closed", by="ops", reason="fixed")
    assert await b.acquire() == (True, "closed")


async def test_disabled_always_permits_and_never_opens(redis: aioredis.Redis, prefix: str) -> None:
    b = breaker(redis, prefix)
    await b.force("disabled", by="ops", reason="testing the provider by hand")
    assert await calls(b, *([True] * 10)) == "disabled"
    assert await b.acquire() == (True, "disabled")


async def test_two_workers_share_one_breaker(redis: aioredis.Redis, prefix: str) -> None:
    a, b = breaker(redis, prefix), breaker(redis, prefix)
    await calls(a, True, True)
    await calls(b, True, True)  # each saw 2 failures; together 4: the shared window opens
    assert await a.acquire() == (False, "open")
    assert await b.acquire() == (False, "open")


async def test_redis_down_fails_open(prefix: str) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    b = breaker(dead, prefix)
    assert await b.acquire() == (True, "closed")  # never the reason a healthy model is not called
    assert await b.record(failed=True, seconds=0.1) == "closed"
    await dead.aclose()
