"""The provider-wide call limit: a ceiling on concurrent calls, AIMD on 429s, a shared pause."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel

from agents.limiter import CallLimiter
from agents.llm import LLMClient, LLMConfig
from agents.testing.fault_server import FaultServer, fault_marker


async def test_never_more_calls_than_the_limit() -> None:
    limiter = CallLimiter(3)
    running = peak = 0

    async def call() -> None:
        nonlocal running, peak
        async with limiter.slot():
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
        limiter.succeeded()

    await asyncio.gather(*(call() for _ in range(30)))
    assert peak == 3


async def test_a_429_halves_the_limit_pauses_every_caller_and_recovers() -> None:
    limiter = CallLimiter(8)
    await limiter.rate_limited(0.3)
    assert limiter.limit == 4
    began = time.monotonic()
    started: list[float] = []

    async def call() -> None:
        async with limiter.slot():
            started.append(time.monotonic() - began)

    await asyncio.gather(*(call() for _ in range(5)))
    assert min(started) >= 0.28, "a caller started during the pause"
    for _ in range(200):
        limiter.succeeded()
    assert limiter.limit == 8  # additive increase back to the ceiling, never past it


async def test_halving_stops_at_one() -> None:
    limiter = CallLimiter(2)
    for _ in range(5):
        await limiter.rate_limited(0)
    assert limiter.limit == 1
    async with limiter.slot():
        pass


class Answer(BaseModel):
    ok: bool


async def test_the_llm_client_holds_its_calls_to_the_limit() -> None:
    """20 calls at 200 ms through a limit of 4 take at least five rounds (1 s), not one."""
    with FaultServer(latency_ms=200) as server:
        llm = LLMClient(
            LLMConfig(base_url=server.base_url, model="fault", logprobs=False, max_concurrency=4)
        )
        llm.start()
        try:
            began = time.monotonic()
            await asyncio.gather(
                *(llm.structured([{"role": "user", "content": f"q{i}"}], Answer) for i in range(20))
            )
            elapsed = time.monotonic() - began
        finally:
            await llm.close()
    assert elapsed >= 0.95
    assert llm.limiter.active == 0


async def test_one_429_makes_the_other_calls_wait_out_its_retry_after() -> None:
    """The fault server's 429 says retry-after: 1. A call that starts after it must wait too."""
    with FaultServer(latency_ms=0) as server:
        llm = LLMClient(LLMConfig(base_url=server.base_url, model="fault", logprobs=False))
        llm.start()
        try:
            limited = asyncio.create_task(
                llm.structured([{"role": "user", "content": fault_marker("429", "ok")}], Answer)
            )
            await asyncio.sleep(0.3)  # the 429 has been answered; the pause is on
            assert llm.limiter.paused_for > 0.4
            began = time.monotonic()
            await llm.structured([{"role": "user", "content": "an unrelated event"}], Answer)
            waited = time.monotonic() - began
            await limited
        finally:
            await llm.close()
    assert waited >= 0.5
