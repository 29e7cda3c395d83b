"""The LLM client layer against a fault-injecting OpenAI-compatible server, via the real client.

Each fault class must end in its own error (or a recovered answer), and the counts are asserted:
calls made, calls booked, tokens booked = tokens the server billed, time spent within the deadline.
The context-window tests size their windows with the same estimate the client uses for a remote
provider (:func:`agents.usage.estimate_tokens`), so "fits" and "does not fit" are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Literal

import httpx2
import openai
import pytest
import structlog
from pydantic import BaseModel
from structlog.testing import capture_logs

import agents.llm
from agents.llm import LLMClient, LLMConfig, Validator, reask_message
from agents.testing.fault_server import (
    SCHEMA_VIOLATION_TEXT,
    Call,
    FaultServer,
    answer_marker,
    fault_marker,
)
from agents.usage import estimate_tokens
from schemas.errors import (
    BudgetExceeded,
    ContentFiltered,
    ContextExceeded,
    ModelBehaviorError,
    ProviderError,
    Refusal,
    RequestRejected,
    Truncated,
)


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


def calls_of(server: FaultServer, tag: str) -> list[Call]:
    return [c for c in server.calls if any(tag in str(m.get("content")) for m in c.messages[:2])]


def billed(server: FaultServer, tag: str) -> tuple[int, int, int]:
    calls = calls_of(server, tag)
    return len(calls), sum(c.prompt_tokens for c in calls), sum(c.completion_tokens for c in calls)


def size(messages: list[dict[str, str]] | list[dict[str, object]], max_tokens: int) -> int:
    """What a request takes of the context window, as the client projects it."""
    contents = [{"content": str(m.get("content") or "")} for m in messages]
    return estimate_tokens(contents) + max_tokens


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


async def test_queueing_for_a_provider_slot_does_not_spend_the_deadline() -> None:
    # Six events share one provider slot; each needs two calls of 0.3 s (an invalid answer, then a
    # re-ask). An event's own calls take 0.6 s, under its 1 s deadline, but it waits up to ~3 s for
    # slots behind the others, first call and re-ask alike. Many events in flight on a provider
    # with few slots is the engine's normal case: they must queue, not be dead-lettered.
    with FaultServer(latency_ms=300) as slow:
        llm = client(slow, deadline_s=1.0, max_concurrency=1)
        try:
            answers = await asyncio.gather(
                *(
                    llm.structured(ask(fault_marker("schema_violation", "ok"), f"q{i}"), Answer)
                    for i in range(6)
                ),
                return_exceptions=True,
            )
        finally:
            await llm.close()
    assert [type(a).__name__ for a in answers] == ["Completion"] * 6, answers
    assert all(a.reasks == 1 for a in answers)  # type: ignore[union-attr]
    assert len(slow.calls) == 12  # two calls each: nothing timed out and was retried


async def test_a_hung_provider_costs_at_most_the_deadline(server: FaultServer) -> None:
    llm = client(server, timeout_s=0.5, deadline_s=1.6, max_attempts=10)
    began = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await llm.structured(ask(fault_marker("hang"), "t-hang"), Answer)
    elapsed = time.monotonic() - began
    await llm.close()
    # The deadline plus scheduling slack; never hang_s (5 s). Tight enough that a last call
    # allowed its whole timeout_s (0.5 s) instead of what is left of the deadline fails it.
    assert elapsed < 1.6 + 0.3
    assert err.value.usage is not None
    outcomes = {a.outcome for a in err.value.usage.per_attempt}
    assert outcomes == {"timeout"}
    assert 2 <= err.value.usage.attempts <= 4
    assert err.value.usage.prompt_tokens == 0  # nothing answered, nothing billed


async def test_a_call_gets_no_more_than_the_deadline_left(server: FaultServer) -> None:
    # timeout_s (4 s) is longer than the whole deadline (0.8 s): the call must be cut at 0.8 s.
    llm = client(server, timeout_s=4.0, deadline_s=0.8, max_attempts=10)
    began = time.monotonic()
    with pytest.raises(ProviderError) as err:
        await llm.structured(ask(fault_marker("hang"), "t-clip"), Answer)
    elapsed = time.monotonic() - began
    await llm.close()
    assert 0.8 <= elapsed < 0.8 + 0.3, elapsed
    assert err.value.usage is not None
    assert [a.outcome for a in err.value.usage.per_attempt] == ["timeout"]
    assert 0.7 <= err.value.usage.per_attempt[0].latency_ms / 1000 < 1.1


async def test_a_backoff_past_the_deadline_is_not_slept(server: FaultServer) -> None:
    # The provider asks for 1 s (retry-after); 0.5 s are left: give up now, do not sleep first.
    llm = client(server, deadline_s=0.5, max_attempts=10)
    began = time.monotonic()
    with pytest.raises(ProviderError, match="would pass the 0.5s deadline") as err:
        await llm.structured(ask(fault_marker("429", "ok"), "t-past"), Answer)
    elapsed = time.monotonic() - began
    await llm.close()
    assert elapsed < 0.5, elapsed
    assert err.value.usage is not None
    assert [a.outcome for a in err.value.usage.per_attempt] == ["rate_limited"]


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
    assert type(err.value) is error
    assert err.value.reason == reason
    assert err.value.retriable is False
    assert err.value.attempts == 1  # asking again the same way would not help
    assert billed(server, f"t-{fault}")[0] == 1
    if fault == "truncated":
        assert err.value.usage is not None
        assert err.value.usage.completion_tokens == 64
        assert [a.outcome for a in err.value.usage.per_attempt] == ["truncated"]


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


# -- rejected requests and the context window ------------------------------------------------------


@pytest.mark.parametrize("status", ["401", "403"])
async def test_rejected_requests_carry_the_call_they_cost(server: FaultServer, status: str) -> None:
    llm = client(server, max_attempts=3)
    tag = f"t-rejected-{status} private ticket text"
    with pytest.raises(RequestRejected) as err:
        await llm.structured(ask(fault_marker(status), tag), Answer)
    await llm.close()
    assert billed(server, tag)[0] == 1  # never retried: no retry fixes a wrong key
    usage = err.value.usage
    assert usage is not None
    assert usage.attempts == 1
    assert [a.outcome for a in usage.per_attempt] == ["bad_request"]
    assert err.value.reason == "config_error"
    assert err.value.retriable is False
    assert str(err.value).startswith(f"provider rejected the request (HTTP {status}): ")
    assert "private ticket text" not in str(err.value)


async def test_the_providers_context_refusal_is_context_exceeded(server: FaultServer) -> None:
    llm = client(server, max_attempts=3)
    tag = "t-ctx-400 private ticket text"
    with pytest.raises(ContextExceeded) as err:
        await llm.structured(ask(fault_marker("context_exceeded"), tag), Answer)
    await llm.close()
    assert billed(server, tag)[0] == 1
    usage = err.value.usage
    assert usage is not None
    assert usage.attempts == 1
    assert [a.outcome for a in usage.per_attempt] == ["context_exceeded"]
    assert err.value.reason == "context_exceeded"
    assert "exceeds the available context size" in str(err.value)
    assert "private ticket text" not in str(err.value)


async def test_a_full_context_mid_answer_is_context_exceeded_not_truncated(
    server: FaultServer,
) -> None:
    llm = client(server)
    with pytest.raises(ContextExceeded) as err:
        await llm.structured(ask(fault_marker("context_full"), "t-ctx-full"), Answer, max_tokens=64)
    await llm.close()
    assert not isinstance(err.value, Truncated)
    assert billed(server, "t-ctx-full")[0] == 1
    usage = err.value.usage
    assert usage is not None
    assert usage.attempts == 1
    assert [a.outcome for a in usage.per_attempt] == ["context_exceeded"]
    assert usage.completion_tokens == 16  # a quarter of max_tokens: the context ran out first
    assert err.value.last_output is not None


@pytest.mark.parametrize("room", [0, 63], ids=["prompt-alone-overflows", "no-room-to-answer"])
async def test_a_prompt_that_cannot_fit_is_never_sent(server: FaultServer, room: int) -> None:
    tag = f"t-ctx-pre-{room}"
    messages = ask(fault_marker("ok"), tag)
    prompt = size(messages, 0)
    llm = client(server, context_tokens=prompt + room)
    with pytest.raises(ContextExceeded) as err:
        await llm.structured(messages, Answer, max_tokens=64)
    await llm.close()
    assert billed(server, tag)[0] == 0
    assert err.value.usage is not None
    assert err.value.usage.attempts == 0
    assert str(err.value) == (
        f"the prompt ({prompt} tokens) plus max_tokens=64 does not fit the context window of "
        f"{prompt + room} tokens"
    )


async def test_a_prompt_that_just_fits_is_sent(server: FaultServer) -> None:
    messages = ask(fault_marker("ok"), "t-ctx-exact")
    llm = client(server, context_tokens=size(messages, 64))
    c = await llm.structured(messages, Answer, max_tokens=64)
    await llm.close()
    assert [a.outcome for a in c.usage.per_attempt] == ["ok"]
    assert billed(server, "t-ctx-exact")[0] == 1


LOW = '{"label": "yes", "confidence": 0.3}'
"""A business-invalid answer (see ``low_confidence``)."""
PADDED = LOW + " " * 900
"""The same answer padded to ~300 tokens: valid JSON, and a re-ask quoting it costs that much."""
PROBLEM = "confidence must be above 0.5"


def low_confidence(answer: Answer) -> list[str]:
    return [PROBLEM] if answer.confidence <= 0.5 else []


def flags_once() -> Validator:
    """A validator that rejects the first answer only: the model "fixes" it on the re-ask."""
    verdicts = [[PROBLEM]]
    return lambda answer: verdicts.pop() if verdicts else []


async def test_a_reask_that_would_overflow_is_sent_compact(server: FaultServer) -> None:
    messages = ask(answer_marker(PADDED), "t-ctx-compact")
    compact = [*messages, {"role": "user", "content": reask_message([PROBLEM], compact=True)}]
    full = [
        *messages,
        {"role": "assistant", "content": PADDED},
        {"role": "user", "content": reask_message([PROBLEM])},
    ]
    context = size(compact, 64)  # the compact re-ask fits exactly; the full one cannot
    assert size(full, 64) > context
    llm = client(server, context_tokens=context, max_validation_attempts=3)
    c = await llm.structured(messages, Answer, max_tokens=64, validate=flags_once())
    await llm.close()
    calls = calls_of(server, "t-ctx-compact")
    assert [call.messages for call in calls] == [messages, compact]
    assert [size(call.messages, call.max_tokens or 0) <= context for call in calls] == [True] * 2
    assert [a.outcome for a in c.usage.per_attempt] == ["business_invalid", "ok"]
    assert (c.reasks, c.issues) == (1, [])


async def test_every_reask_is_sized_before_it_is_sent(server: FaultServer) -> None:
    """Three invalid answers: each re-ask would carry the previous ones, so each goes compact."""
    messages = ask(answer_marker(PADDED), "t-ctx-every")
    compact = [*messages, {"role": "user", "content": reask_message([PROBLEM], compact=True)}]
    context = size(compact, 64)
    llm = client(server, context_tokens=context, max_validation_attempts=3)
    c = await llm.structured(messages, Answer, max_tokens=64, validate=low_confidence)
    await llm.close()
    calls = calls_of(server, "t-ctx-every")
    assert [call.messages for call in calls] == [messages, compact, compact]
    assert [size(call.messages, call.max_tokens or 0) <= context for call in calls] == [True] * 3
    assert [a.outcome for a in c.usage.per_attempt] == ["business_invalid"] * 3
    assert c.issues == [PROBLEM]  # to review, with every call booked
    assert c.usage.attempts == 3


async def test_no_room_for_any_reask_sends_the_answer_in_hand_to_review(
    server: FaultServer,
) -> None:
    messages = ask(answer_marker(LOW), "t-ctx-review")
    context = size(messages, 64)  # the first ask fits exactly; any re-ask adds a message
    llm = client(server, context_tokens=context, max_validation_attempts=3)
    c = await llm.structured(messages, Answer, max_tokens=64, validate=low_confidence)
    await llm.close()
    assert billed(server, "t-ctx-review")[0] == 1
    assert c.issues == [PROBLEM]
    assert c.usage.attempts == 1
    assert [a.outcome for a in c.usage.per_attempt] == ["business_invalid"]


async def test_no_room_for_any_reask_without_an_answer_is_context_exceeded(
    server: FaultServer,
) -> None:
    messages = ask(fault_marker("schema_violation", "ok"), "t-ctx-none")
    llm = client(server, context_tokens=size(messages, 64), max_validation_attempts=3)
    with pytest.raises(ContextExceeded) as err:
        await llm.structured(messages, Answer, max_tokens=64)
    await llm.close()
    calls, prompt, completion = billed(server, "t-ctx-none")
    assert calls == 1
    usage = err.value.usage
    assert usage is not None
    assert usage.attempts == 1
    assert [a.outcome for a in usage.per_attempt] == ["schema_invalid"]
    assert (usage.prompt_tokens, usage.completion_tokens) == (prompt, completion)
    assert err.value.last_output == SCHEMA_VIOLATION_TEXT
    assert str(err.value).startswith("even the compact re-ask (")


async def test_no_budget_for_any_reask_sends_the_answer_in_hand_to_review(
    server: FaultServer,
) -> None:
    messages = ask(answer_marker(LOW), "t-budget-review")
    llm = client(server, token_budget=size(messages, 64) + 20, max_validation_attempts=3)
    c = await llm.structured(messages, Answer, max_tokens=64, validate=low_confidence)
    await llm.close()
    assert billed(server, "t-budget-review")[0] == 1
    assert (c.issues, c.usage.attempts) == ([PROBLEM], 1)


# -- secrets and contents --------------------------------------------------------------------------


def test_the_api_key_is_not_in_the_configs_repr() -> None:
    config = LLMConfig(api_key="sk-very-secret-123", base_url="https://u:pw@llm.example/v1")
    assert "sk-very-secret-123" not in repr(config)
    assert config.api_key == "sk-very-secret-123"
    provider = LLMClient(config).provider
    assert provider == "openai-compatible:https://llm.example/v1"


async def test_logs_and_errors_never_carry_the_messages(
    server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "my card number is 4111"
    with capture_logs() as logs:
        # a fresh proxy binds to capture_logs even if structlog caches loggers on first use
        monkeypatch.setattr(agents.llm, "log", structlog.get_logger("agents.llm"))
        llm = client(server, max_validation_attempts=2)
        c = await llm.structured(
            ask(fault_marker("500", "invalid_json", "ok"), f"t-logs {secret}"), Answer
        )
        errors: list[Exception] = []
        for fault in ("401", "context_exceeded", "context_full", "schema_violation"):
            with pytest.raises((ContextExceeded, RequestRejected, ModelBehaviorError)) as err:
                await llm.structured(ask(fault_marker(fault), f"t-logs-{fault} {secret}"), Answer)
            errors.append(err.value)
        await llm.close()
    assert [a.outcome for a in c.usage.per_attempt] == ["server_error", "invalid_json", "ok"]
    assert {e["event"] for e in logs} >= {
        "llm.provider",
        "llm.retry",
        "llm.call",
        "validation.failed",
    }
    assert secret not in repr(logs)
    assert [secret in str(e) for e in errors] == [False] * 4


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "message": "Too long.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            },
            True,
        ),
        ({"message": "x", "type": "exceed_context_size_error", "code": 400}, True),
        (
            {
                "message": (
                    "This model's maximum context length is 2048 tokens. However, you requested "
                    "2100 tokens."
                ),
                "type": "BadRequestError",
                "code": 400,
            },
            True,
        ),
        (
            {
                "message": "The model `gpt-5-turbo` does not exist",
                "type": "invalid_request_error",
                "code": "model_not_found",
            },
            False,
        ),
        (
            {
                "message": "unknown fault 'x': choose from ['context_exceeded', 'context_full']",
                "type": "invalid_request_error",
                "code": None,
            },
            False,
        ),
    ],
    ids=["openai-code", "llama-cpp-type", "vllm-wording", "model-not-found", "other-400"],
)
def test_which_400s_mean_the_context_is_exceeded(body: dict[str, object], expected: bool) -> None:
    """How other providers say it, without a server: OpenAI's code, vLLM's wording."""
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx2.Response(400, request=request)
    exc = openai.BadRequestError(
        f"Error code: 400 - {body['message']}", response=response, body=body
    )
    assert agents.llm._is_context_refusal(exc) is expected
