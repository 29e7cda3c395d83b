"""An in-process agent for tests of flows, routing and the stream: no model, no HTTP.

It answers each event with whatever ``answer`` computes, at the confidence you choose, after an
optional delay, or raises the error you choose — so a test can drive every lane and every
failure path of a real worker or pipeline deterministically, and count the calls it received::

    agent = FakeAgent(lambda ticket: {"category": "billing"}, confidence=0.95, delay_s=0.25)
    flow = Flow("tickets", TicketReceived, agent, my_record_builder)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

from pydantic import BaseModel

from agents.base import AgentResult
from schemas.records import Confidence, Usage

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT")


class FakeAgent(Generic[InT, OutT]):
    """An :class:`~agents.base.Agent` whose answers, confidence, latency and failures are given."""

    def __init__(
        self,
        answer: Callable[[InT], OutT],
        *,
        confidence: float | Callable[[InT], float] = 0.9,
        delay_s: float = 0.0,
        fail: Callable[[InT], BaseException | None] | None = None,
        issues: Callable[[InT], list[str]] | None = None,
        name: str = "fake-agent",
        version: str = "0",
    ) -> None:
        self.name = name
        self.version = version
        self._answer = answer
        self._confidence = confidence
        self._delay_s = delay_s
        self._fail = fail
        self._issues = issues
        #: Every event ``run`` was called with, in call order.
        self.calls: list[InT] = []

    async def run(self, event: InT) -> AgentResult[OutT]:
        """Answer ``event`` (after ``delay_s``), or raise what ``fail`` returns for it."""
        self.calls.append(event)
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        error = self._fail(event) if self._fail else None
        if error is not None:
            raise error
        score = self._confidence(event) if callable(self._confidence) else self._confidence
        return AgentResult(
            answer=self._answer(event),
            confidence=Confidence(
                score=score, self_rated=score, logprob=None, validation=1.0, method="fake"
            ),
            usage=Usage(
                attempts=1,
                prompt_tokens=0,
                completion_tokens=0,
                latency_ms=int(self._delay_s * 1000),
            ),
            model="fake",
            prompt_version="fake.v1",
            issues=self._issues(event) if self._issues else [],
        )
