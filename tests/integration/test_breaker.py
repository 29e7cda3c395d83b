"""The circuit breaker against real Redis: every state and transition, and two breakers (two
workers) sharing one state."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from agents.observe import BreakerTransition, Fact, add_observer, remove_observer
from streams import breaker as breaker_module
from streams.breaker import FLUSH_AT, Breaker, BreakerConfig
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
    assert await b.acquire() == (False, "open")  # the worker whose outcome opened it: at once
    await asyncio.sleep(FAST.refresh_s)
    assert await a.acquire() == (False, "open")  # the other one: within refresh_s


async def test_without_a_local_view_every_worker_sees_the_shared_state_at_once(
    redis: aioredis.Redis, prefix: str
) -> None:
    uncached = replace(FAST, refresh_s=0.0)  # ask Redis on every call
    a, b = breaker(redis, prefix, uncached), breaker(redis, prefix, uncached)
    await calls(a, True, True)
    await calls(b, True, True)
    assert await a.acquire() == (False, "open")
    assert await b.acquire() == (False, "open")


async def test_redis_down_fails_open(prefix: str) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    b = breaker(dead, prefix)
    assert await b.acquire() == (True, "closed")  # never the reason a healthy model is not called
    assert await b.record(failed=True, seconds=0.1) == "closed"
    await dead.aclose()


# --- time-based window -------------------------------------------------------------------------

TIMED = replace(FAST, window_type="time", window_size=1)  # the calls of the last second


async def window(redis: aioredis.Redis, b: Breaker) -> tuple[int, int, int]:
    """(calls, failed, slow) in the shared window, from the list itself."""
    found = await redis.lrange(b.window_key, 0, -1)
    entries = [e.decode() if isinstance(e, bytes) else e for e in found]
    return len(entries), sum(e[-2] == "1" for e in entries), sum(e[-1] == "1" for e in entries)


async def test_a_time_window_forgets_calls_older_than_its_seconds(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix, TIMED)
    assert await calls(b, True, True, True) == "closed"
    await asyncio.sleep(1.1)
    assert await calls(b, True) == "closed"  # the three earlier failures left the window
    assert await window(redis, b) == (1, 1, 0)
    assert (await b.status())["window_calls"] == "1"
    assert await calls(b, True, True) == "closed"
    assert await calls(b, True) == "open"  # 4 failures within the second


async def test_a_time_window_holds_every_call_of_its_seconds_up_to_a_cap(
    redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = breaker(redis, prefix, replace(TIMED, window_size=60))
    await calls(b, *([False] * 30))
    await b.flush()
    assert await window(redis, b) == (30, 0, 0)  # window_size is seconds, not calls
    monkeypatch.setattr(breaker_module, "MAX_ENTRIES", 40)
    await calls(b, *([False] * 20))
    await b.flush()
    assert await window(redis, b) == (40, 0, 0)  # a flood cannot grow Redis without bound
    assert (await b.status())["window_calls"] == "40"


async def test_a_time_window_judges_slow_calls_and_the_minimum_too(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix, TIMED)
    assert await calls(b, False, False, False, seconds=2.0) == "closed"
    assert await calls(b, False, seconds=2.0) == "open"  # 4 of 4 slow >= 75 %


# --- batched outcomes --------------------------------------------------------------------------

WIDE = replace(FAST, window_size=100, minimum_calls=20, refresh_s=0.5)


async def test_successes_are_sent_in_batches_and_counted_exactly(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix, WIDE)
    await calls(b, *([False] * (FLUSH_AT - 1)))
    assert await window(redis, b) == (0, 0, 0)  # still buffered
    await calls(b, False)
    assert await window(redis, b) == (FLUSH_AT, 0, 0)  # one batch
    await calls(b, False, False)
    assert await b.flush() == "closed"
    assert await window(redis, b) == (FLUSH_AT + 2, 0, 0)
    status = await b.status()
    assert (status["window_calls"], status["window_failed"]) == (str(FLUSH_AT + 2), "0")


async def test_buffered_outcomes_are_sent_after_refresh_s(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix, WIDE)
    await calls(b, False, False)
    assert await window(redis, b) == (0, 0, 0)
    await asyncio.sleep(WIDE.refresh_s)
    await calls(b, False)  # due: the two waiting and this one go together
    assert await window(redis, b) == (3, 0, 0)
    await calls(b, False)
    await asyncio.sleep(WIDE.refresh_s)
    await b.acquire()  # a stale view sends what waits with its refresh
    assert await window(redis, b) == (4, 0, 0)


async def test_a_failure_burst_opens_it_with_successes_waiting(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix, WIDE)
    await calls(b, *([False] * 10))  # buffered: the burst must not be judged without them
    assert await window(redis, b) == (0, 0, 0)
    assert await calls(b, *([True] * 9)) == "closed"
    assert await window(redis, b) == (19, 9, 0)  # each failure is sent at once, in order
    assert await calls(b, True) == "open"  # 10 of 20 failed: the minimum and the rate, together
    assert await b.acquire() == (False, "open")
    assert await window(redis, b) == (0, 0, 0)  # opening clears the window


async def test_a_window_written_without_counts_is_counted_from_the_list(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix)
    await redis.lpush(b.window_key, "10", "10", "10")  # as the previous version wrote it
    assert await calls(b, True) == "open"  # 4 of 4 failed


# --- the local view ----------------------------------------------------------------------------


def count_scripts(b: Breaker, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the breaker's Redis script calls (they still run)."""
    counts = {"acquire": 0, "record": 0}
    for name in counts:
        script = getattr(b, f"_{name}")

        async def counted(*args: Any, _name: str = name, _script: Any = script, **kw: Any) -> Any:
            counts[_name] += 1
            return await _script(*args, **kw)

        monkeypatch.setattr(b, f"_{name}", counted)
    return counts


async def test_while_closed_acquire_answers_locally_between_refreshes(
    redis: aioredis.Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = breaker(redis, prefix)
    counts = count_scripts(b, monkeypatch)
    assert await b.acquire() == (True, "closed")
    assert counts == {"acquire": 1, "record": 0}
    for _ in range(500):
        assert await b.acquire() == (True, "closed")
    assert counts == {"acquire": 1, "record": 0}  # 500 permits, no Redis call
    await calls(b, *([False] * 5 * FLUSH_AT))
    assert counts["record"] == 5  # one script call per FLUSH_AT outcomes
    began = time.monotonic()
    n = 0
    while time.monotonic() - began < 1.0:
        await b.acquire()
        n += 1
        await asyncio.sleep(0.005)
    assert n > 100
    assert counts["acquire"] <= 1 + 1.0 / FAST.refresh_s + 1  # a refresh per refresh_s, no more


async def test_a_kill_switch_reaches_another_worker_within_refresh_s(
    redis: aioredis.Redis, prefix: str
) -> None:
    worker, operator = breaker(redis, prefix), breaker(redis, prefix)
    assert await worker.acquire() == (True, "closed")
    await operator.force("forced_open", by="ops", reason="prompt v7 misroutes refunds")
    switched = time.monotonic()
    while (await worker.acquire())[0]:
        assert time.monotonic() - switched < FAST.refresh_s + 0.1
        await asyncio.sleep(0.01)
    assert await worker.acquire() == (False, "forced_open")
    assert await calls(worker, False, False) == "forced_open"  # nothing counted, nothing waits
    await operator.force("closed", by="ops", reason="rolled back")
    await asyncio.sleep(FAST.refresh_s)
    assert await worker.acquire() == (True, "closed")
    assert await window(redis, worker) == (0, 0, 0)


async def test_the_switch_applies_at_once_on_the_instance_that_set_it(
    redis: aioredis.Redis, prefix: str
) -> None:
    b = breaker(redis, prefix, WIDE)
    assert await b.acquire() == (True, "closed")
    await calls(b, False, False)  # waiting outcomes belong to the window the switch clears
    await b.force("forced_open", by="ops", reason="stop")
    assert await b.acquire() == (False, "forced_open")
    await b.force("closed", by="ops", reason="go")
    assert await b.flush() == "closed"
    assert await window(redis, b) == (0, 0, 0)


async def test_redis_down_is_not_asked_again_within_refresh_s(
    prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    b = breaker(dead, prefix)
    counts = count_scripts(b, monkeypatch)
    assert await b.acquire() == (True, "closed")
    assert await b.acquire() == (True, "closed")
    assert counts["acquire"] == 1  # a dead Redis must not cost every event a connect timeout
    await dead.aclose()


async def test_every_transition_is_reported_as_a_fact(redis: aioredis.Redis, prefix: str) -> None:
    seen: list[BreakerTransition] = []

    class Collect:
        def observe(self, fact: Fact) -> None:
            if isinstance(fact, BreakerTransition):
                seen.append(fact)

    collect = Collect()
    add_observer(collect)
    try:
        b = breaker(redis, prefix)
        await calls(b, True, True, True, True)
        await asyncio.sleep(1.1)
        assert (await b.acquire())[0]
        assert (await b.acquire())[0]
        await calls(b, False, False)
        await b.force("forced_open", by="ops", reason="test")
    finally:
        remove_observer(collect)
    assert [(f.breaker, f.before, f.after, f.by) for f in seen] == [
        ("tickets", "closed", "open", None),
        ("tickets", "open", "half_open", None),
        ("tickets", "half_open", "closed", None),
        ("tickets", "closed", "forced_open", "ops"),
    ]
