"""Per-tool switches in a real executor, counted at the sinks, and the breaker's human fallback.

``sluice tool off --tool route_to_team`` holds that tool's effects while classification and the
other tool (acknowledgements) go on; ``on`` releases them, each exactly once. With the policy's
``breaker_fallback = "review"``, an open breaker sends tickets to review as records a person
completes, without a model call.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from agents.llm import LLMClient
from agents.testing.fault_server import FaultServer
from schemas.codec import Codec
from schemas.errors import ConfigError
from schemas.records import DeadLetter, TicketTriaged
from streams.breaker import Breaker, BreakerConfig
from streams.builtin import invoices_flow, tickets_flow
from streams.compose import llm_config
from streams.flow import Runtime
from streams.meta import Meta
from streams.pipeline import Pipeline
from streams.policy import FlowPolicy, routing_policy
from tests.integration.conftest import Isolated, Sinks, fake_model_env, start_worker, stop
from tests.integration.test_executor import read_all
from tests.integration.test_outage import alive, paced, sluice, tickets, until


async def test_a_switched_off_tool_is_held_and_runs_once_when_on(
    isolated: Isolated, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    with FaultServer() as server:
        env = fake_model_env({**isolated.env, **sinks.env}, server.base_url)
        off = sluice(env, "tool", "off", "--tool", "route_to_team", "--reason", "CRM down")
        assert off.returncode == 0, off.stderr
        assert json.loads(off.stdout)["off"]["route_to_team"]["reason"] == "CRM down"
        worker = start_worker(env, tmp_path / "worker.log")
        executor = start_worker(env, tmp_path / "executor.log", command="executor")
        try:
            await paced(s.bootstrap_servers, s.topics.tickets_received,
                        tickets(s.topic_suffix, 0, 3), per_s=50)  # fmt: skip
            await until(lambda: sinks.mails() == 3, 90, "acknowledgements did not run")
            await asyncio.sleep(2)
            assert sinks.webhook_requests() == 0  # held, while the other tool ran
            assert '"tool.held"' in executor.log.read_text()

            on = sluice(env, "tool", "on", "--tool", "route_to_team", "--reason", "CRM back")
            assert on.returncode == 0, on.stderr
            assert json.loads(on.stdout)["off"] == {}
            await until(lambda: sinks.webhook_requests() == 3, 30, "held routes did not run")
            await asyncio.sleep(2)
            assert (sinks.webhook_requests(), sinks.mails()) == (3, 3)
            alive(worker, executor)
        finally:
            stop(executor)
            stop(worker)
    audit = [json.loads(v) for v in await read_all(s, s.topics.audit, 2, timeout_s=10)]
    assert [(a["action"], a["reason"]) for a in audit] == [
        ("tool.off", "CRM down"), ("tool.on", "CRM back")
    ]  # fmt: skip


async def test_an_open_breaker_sends_tickets_to_review_when_the_policy_says_so(
    isolated: Isolated,
) -> None:
    s = isolated.settings
    with FaultServer() as server:
        settings = s.model_copy(update={"openai_base_url": server.base_url})
        llm = LLMClient(llm_config(settings))
        llm.start()
        redis = aioredis.Redis.from_url(s.redis_url)
        breaker = Breaker(redis, "tickets", BreakerConfig(), prefix=f"sluice:{s.app_id}")
        await breaker.force("forced_open", by="test", reason="drill")
        flow = tickets_flow(Runtime(settings, llm))
        value = tickets(s.topic_suffix, 0, 1)[0]
        meta = Meta(s.topics.tickets_received, 0, 7, None, b"k", value)
        try:
            fallback = Pipeline(flow, settings, policy=FlowPolicy(breaker_fallback="review"),
                                breakers=[breaker])  # fmt: skip
            outcome = await fallback.handle(meta)
            assert (outcome.lane, outcome.topic) == ("review", s.topics.tickets_review)
            record = Codec().decode(outcome.value)
            assert isinstance(record, TicketTriaged)
            assert record.confidence == 0.0
            assert (record.agent.model, record.usage.attempts) == ("none", 0)
            assert record.requires_human
            assert record.route.lane == "review"
            assert "breaker" in record.route.reason
            assert record.actions == []

            parked = await Pipeline(flow, settings, breakers=[breaker]).handle(meta)
            letter = Codec().decode(parked.value)
            assert isinstance(letter, DeadLetter)
            assert letter.reason == "breaker_open"
            assert server.calls == []  # neither called the model
        finally:
            await llm.close()
            await redis.aclose()


def test_review_fallback_needs_a_flow_that_can_build_an_unanswered_record(
    isolated: Isolated, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[flows.invoices]\nbreaker_fallback = "review"\n')
    settings = isolated.settings.model_copy(update={"policy_file": policy})
    llm = LLMClient(llm_config(settings))
    flows = [invoices_flow(Runtime(settings, llm))]
    with pytest.raises(ConfigError, match="unanswered"):
        routing_policy(settings, flows)


async def test_a_breaker_opening_stops_the_retries_of_an_admitted_event(
    isolated: Isolated,
) -> None:
    s = isolated.settings
    with FaultServer(fail_rate=1.0, fail_with=("500",)) as server:
        settings = s.model_copy(update={"openai_base_url": server.base_url, "llm_max_attempts": 5})
        llm = LLMClient(llm_config(settings))
        llm.start()
        redis = aioredis.Redis.from_url(s.redis_url)
        breaker = Breaker(redis, "tickets", BreakerConfig(), prefix=f"sluice:{s.app_id}")
        meta = Meta(s.topics.tickets_received, 0, 8, None, b"k", tickets(s.topic_suffix, 1, 1)[0])
        pipeline = Pipeline(tickets_flow(Runtime(settings, llm)), settings, breakers=[breaker])
        try:
            handled = asyncio.create_task(pipeline.handle(meta))
            await until(lambda: len(server.calls) >= 1, 10, "the first call never came")
            await breaker.force("forced_open", by="test", reason="drill")
            outcome = await asyncio.wait_for(handled, 30)
            letter = Codec().decode(outcome.value)
            assert isinstance(letter, DeadLetter)
            assert letter.reason == "breaker_open"
            assert "not retried" in letter.error_message
            calls = len(server.calls)
            assert calls < 5  # stopped before using every attempt
            assert letter.attempts == calls  # the calls made are on the dead letter
        finally:
            await llm.close()
            await redis.aclose()
