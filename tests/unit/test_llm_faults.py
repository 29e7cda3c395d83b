"""The LLM client layer against a fault-injecting OpenAI-compatible server, via the real client.

Each fault class must end in its own error (or a recovered answer), and the counts are asserted:
calls made, calls booked, tokens booked = tokens the server billed, time spent within the deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Literal

import pytest
from pydantic import BaseModel

from agents.llm import LLMClient, LLMConfig
from schemas.errors import (
    BudgetExceeded,
    ContentFiltered,
    ModelBehaviorError,
    ProviderError,
    Refusal,
    Truncated,
)
from tests.fault_server import FaultServer, answer_marker, fault_marker


class Answer(BaseModel):
    label: Literal["yes", "no"]
    confidence: float


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer(hang_s=5) as s:
        yield s


def client(server: FaultServer, **config: object) -> LLMClient:
    settings: dict[str, object] = {
        "base_url": server.base_url,
        "api_key": "test",
        "model": "fault",
        "timeout_s": 2.0,
        "deadline_s": 20.0,
        "max_backoff_s": 0.05,
        "logprobs": False,
        **config,
    }
    llm = LLMClient(LLMConfig(**settings))  # type: ignore[arg-type]
    llm.start()
    return llm


def ask(marker: str, tag: str) -> list[dict[str, str]]:
    """A conversation whose first user message (the server's key) is unique to the test."""
    return [
        {"role": "system", "content": "Answer yes or no."},
        {"role": "user", "content": f"{tag} {marker}"},
    ]


def billed(server: FaultServer, tag: str) -> tuple[int, int, int]:
    calls = [c for c in server.calls if any(tag in str(m.get("content")) for m in c.messages[:2])]
    return len(calls), sum(c.prompt_tokens for c in calls), sum(c.completion_tokens for c in calls)


async def test_rate_limits_honour_retry_after_then_recover(server: FaultServer) -> None:
    llm = client(server)
    began = time.monotonic()
    c = await llm.structured(ask(fault_marker("429", "429", "ok"), "t-429"), Answer)
    elapsed = time.monotonic() - began
    await llm.close()
    assert [a.outcome for a in c.usage.per_attempt] == ["rate_limited", "rate_limited", "ok"]
    assert elapsed >= 2.0  # two retry-after: 1 waits, not our 0.05 s backoff
    calls, prompt, completion = billed(server, "t-429")
    assert calls == 3
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (prompt, completion)


async def test_server_errors_exhaust_max_attempts(server: FaultServer) -> None:
    llm = client(server, max_attempts=3)
    with pytest.raises(ProviderError, match="gave up after 3 attempts") as err:
        await llm.structured(ask(fault_marker("500"), "t-500"), Answer)
    await llm.close()
    assert err.value.retriable is True
    assert err.value.usage is not None
    assert [a.outcome for a in err.value.usage.per_attempt] == ["server_error"] * 3
    assert billed(server, "t-500")[0] == 3


async def test_connection_reset_is_retried(server: FaultServer) -> None:
    llm = client(server)
    c = await llm.structured(ask(fault_marker("reset", "ok"), "t-reset"), Answer)
    await llm.close()
    assert [a.outcome for a in c.usage.per_attempt] == ["connection_error", "ok"]


async def test_a_hung_provider_costs_at_most_the_deadline(server: FaultServer) -> None:
    llm = client(server, timeout_s=0.5, deadline_s=1.6, max_attempts=10)
    began = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await llm.structured(ask(fault_marker("hang"), "t-hang"), Answer)
    elapsed = time.monotonic() - began
    await llm.close()
    assert elapsed < 1.6 + 0.5  # the deadline, plus scheduling slack; never hang_s (5 s)
    assert err.value.usage is not None
    outcomes = {a.outcome for a in err.value.usage.per_attempt}
    assert outcomes == {"timeout"}
    assert 2 <= err.value.usage.attempts <= 4
    assert err.value.usage.prompt_tokens == 0  # nothing answered, nothing billed


async def test_invalid_json_is_reasked_with_the_problem_then_gives_up(server: FaultServer) -> None:
    llm = client(server, max_validation_attempts=3)
    with pytest.raises(ModelBehaviorError, match="no valid Answer after 3 answers") as err:
        await llm.structured(ask(fault_marker("invalid_json"), "t-json"), Answer)
    await llm.close()
    usage = err.value.usage
    assert usage is not None
    assert [a.outcome for a in usage.per_attempt] == ["invalid_json"] * 3
    calls, prompt, completion = billed(server, "t-json")
    assert calls == 3
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert err.value.last_output is not None
    assert type(err.value) is ModelBehaviorError
    assert err.value.reason == "model_output_invalid"
    # The re-ask shows the model its own answer and says what was wrong with it.
    last = [c for c in server.calls if any("t-json" in str(m["content"]) for m in c.messages)][-1]
    assert last.messages[-2]["role"] == "assistant"
    assert "not valid JSON" in last.messages[-1]["content"]


async def test_schema_violation_recovers_on_reask(server: FaultServer) -> None:
    llm = client(server)
    c = await llm.structured(ask(fault_marker("schema_violation", "ok"), "t-schema"), Answer)
    await llm.close()
    assert c.reasks == 1
    assert [a.outcome for a in c.usage.per_attempt] == ["schema_invalid", "ok"]


@pytest.mark.parametrize(
    ("fault", "error", "reason"),
    [
        ("refusal", Refusal, "model_refused"),
        ("truncated", Truncated, "output_truncated"),
        ("content_filter", ContentFiltered, "content_filtered"),
    ],
)
async def test_terminal_answers_map_to_their_own_errors(
    server: FaultServer, fault: str, error: type[ModelBehaviorError], reason: str
) -> None:
    llm = client(server)
    with pytest.raises(error) as err:
        await llm.structured(ask(fault_marker(fault), f"t-{fault}"), Answer, max_tokens=64)
    await llm.close()
    assert err.value.reason == reason
    assert err.value.retriable is False
    assert err.value.attempts == 1  # asking again the same way would not help
    assert billed(server, f"t-{fault}")[0] == 1
    if fault == "truncated":
        assert err.value.usage is not None
        assert err.value.usage.completion_tokens == 64


async def test_business_issues_are_reasked_then_returned_for_review(server: FaultServer) -> None:
    llm = client(server, max_validation_attempts=3)

    def no_maybe(answer: Answer) -> list[str]:
        return ["confidence must be above 0.5"] if answer.confidence <= 0.5 else []

    marker = answer_marker({"label": "yes", "confidence": 0.3})
    c = await llm.structured(ask(marker, "t-biz"), Answer, validate=no_maybe)
    await llm.close()
    assert c.issues == ["confidence must be above 0.5"]
    assert c.usage.attempts == 3
    assert [a.outcome for a in c.usage.per_attempt] == ["business_invalid"] * 3


async def test_budget_refuses_the_first_call_when_it_cannot_fit(server: FaultServer) -> None:
    llm = client(server, token_budget=50)
    with pytest.raises(BudgetExceeded) as err:
        await llm.structured(ask(fault_marker("ok"), "t-budget0"), Answer, max_tokens=64)
    await llm.close()
    assert billed(server, "t-budget0")[0] == 0
    assert err.value.reason == "token_budget_exceeded"


async def test_budget_stops_reasks_before_they_overshoot(server: FaultServer) -> None:
    budget = 150
    llm = client(server, token_budget=budget)
    with pytest.raises(BudgetExceeded) as err:
        await llm.structured(ask(fault_marker("invalid_json"), "t-budget1"), Answer, max_tokens=64)
    await llm.close()
    calls, prompt, completion = billed(server, "t-budget1")
    assert calls == 1  # one answer fitted; the re-ask could not
    assert err.value.usage is not None
    assert err.value.usage.prompt_tokens + err.value.usage.completion_tokens <= budget
    assert (err.value.usage.prompt_tokens, err.value.usage.completion_tokens) == (
        prompt,
        completion,
    )
