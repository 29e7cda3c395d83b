"""The observation seam: facts become stable log events, metrics and trace context.

Log lines are captured with structlog's ``capture_logs`` from a fresh :class:`LogObserver`; the
components that *report* facts are tested where they run against real services (the breaker on
Redis below, the worker, executor and review service in ``test_observability``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from agents import observe
from agents.observe import (
    BreakerTransition,
    DeadLettered,
    EventRouted,
    Fact,
    LLMCall,
    LLMRetry,
    LogObserver,
    ReviewDecided,
    ToolCall,
    ValidationFailed,
    event_scope,
    notify,
)
from agents.redact import register_secret, reset_secrets
from streams import tracing
from streams.metrics import MetricsObserver

MESSAGES = [
    {"role": "system", "content": "Triage the ticket."},
    {
        "role": "user",
        "content": "Mail me at jane.doe@example.com, key sk-proj-abcdefghijklmnop1234",
    },
]


def call(**changes: Any) -> LLMCall:
    values: dict[str, Any] = dict(
        provider="local", model="m", attempt=1, outcome="ok", latency_ms=12, started_at=1.0,
        prompt_tokens=100, completion_tokens=20, prompt_version="p.v1", finish_reason="stop",
        cost_usd=Decimal("0.000150"), max_tokens=64, messages=MESSAGES, response='{"a": 1}',
    )  # fmt: skip
    values.update(changes)
    return LLMCall(**values)


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as logs:
        yield logs


@pytest.fixture(autouse=True)
def no_secrets() -> Iterator[None]:
    reset_secrets()
    yield
    reset_secrets()


FACTS: list[tuple[Fact, str, str]] = [
    (call(), "llm.call", "info"),
    (LLMRetry("m", 1, "server_error", 0.25, "HTTP 500"), "llm.retry", "warning"),
    (ValidationFailed("m", 2, "invalid_json", ["not JSON"], True), "validation.failed", "warning"),
    (EventRouted("tickets", "e1", "review", "confidence 0.3 < 0.8", 0.3), "event.routed", "info"),
    (DeadLettered("tickets", "e1", "poison_input", "not JSON"), "event.deadlettered", "warning"),
    (ToolCall("start", "route_to_team", "e1", "k1"), "tool.call.start", "info"),
    (ToolCall("success", "route_to_team", "e1", "k1", "applied"), "tool.call.success", "info"),
    (ToolCall("failure", "escalate", "e1", "k2", "refused"), "tool.call.failure", "warning"),
    (BreakerTransition("tickets", "closed", "open"), "breaker.transition", "warning"),
    (ReviewDecided("tickets", "e1", "i1", "approve", "alice", []), "review.decided", "info"),
]


@pytest.mark.parametrize(("fact", "name", "level"), FACTS, ids=[n for _, n, _ in FACTS])
def test_each_fact_is_one_log_event_with_its_stable_name(
    fact: Fact, name: str, level: str, logged: list[dict[str, Any]]
) -> None:
    LogObserver().observe(fact)
    assert [(e["event"], e["log_level"]) for e in logged] == [(name, level)]
    fields = {k: v for k, v in fact.fields().items() if k not in ("messages", "response")}
    fields.pop("phase", None)
    fields.pop("started_at", None)
    if "cost_usd" in fields:
        fields["cost_usd"] = str(fields["cost_usd"])
    assert fields.items() <= logged[0].items()


def test_the_summary_line_adds_up_the_calls_of_its_event(logged: list[dict[str, Any]]) -> None:
    with event_scope("worker", "tickets", "t" * 32) as scope:
        notify(call(attempt=1, outcome="server_error", prompt_tokens=0, completion_tokens=0,
                    cost_usd=Decimal(0)))  # fmt: skip
        notify(call(attempt=2))
        with scope.timed("agent"):
            pass
        summary = scope.summary("e1", "auto", "confident", received_at=0.0)
    assert observe.current_scope() is None  # the scope ends with the block
    LogObserver().observe(summary)
    line = [e for e in logged if e["event"] == "event.summary"][0]
    assert (line["llm_calls"], line["prompt_tokens"], line["completion_tokens"]) == (2, 100, 20)
    assert line["cost_usd"] == "0.000150"
    assert (line["trace_id"], line["lane"], set(line["stages_ms"])) == ("t" * 32, "auto", {"agent"})
    assert line["end_to_end_ms"] > 0


def test_a_call_without_a_price_makes_the_events_cost_unknown() -> None:
    with event_scope("worker", "tickets") as scope:
        notify(call())
        notify(call(attempt=2, cost_usd=None))
        assert scope.summary("e1", "auto", "x").cost_usd is None


@pytest.mark.parametrize(
    ("mode", "pii", "present", "absent"),
    [
        ("off", False, [], ["prompt", "response", "prompt_sha256"]),
        ("hash", False, ["prompt_sha256", "prompt_chars", "response_sha256"], ["prompt"]),
        ("full", False, ["prompt", "response"], ["prompt_sha256"]),
        ("full", True, ["prompt", "response"], ["prompt_sha256"]),
    ],
)
def test_prompt_text_is_off_hashed_or_full_and_never_carries_a_key(
    mode: observe.ContentMode, pii: bool, present: list[str], absent: list[str],
    logged: list[dict[str, Any]],
) -> None:  # fmt: skip
    LogObserver(content=mode, pii=pii).observe(call())
    (line,) = logged
    assert all(k in line for k in present)
    assert not any(k in line for k in absent)
    text = repr(line)
    assert "sk-proj-abcdefghijklmnop1234" not in text  # a key in a prompt is scrubbed, always
    assert ("jane.doe@example.com" in text) == (mode == "full" and not pii)
    if mode == "hash":
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in MESSAGES)
        assert line["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    if pii:
        assert "[EMAIL]" in line["prompt"]


def test_a_configured_secret_in_a_prompt_is_scrubbed(logged: list[dict[str, Any]]) -> None:
    register_secret("hunter2-correct-horse")
    messages = [{"role": "user", "content": "my password is hunter2-correct-horse"}]
    LogObserver(content="full").observe(call(messages=messages))
    assert "hunter2-correct-horse" not in repr(logged)
    assert "password is" in repr(logged)


def test_a_failing_observer_is_skipped_and_logged_once(logged: list[dict[str, Any]]) -> None:
    class Broken:
        def observe(self, fact: Fact) -> None:
            raise RuntimeError("bug in a user's observer")

    seen: list[Fact] = []

    class Collect:
        def observe(self, fact: Fact) -> None:
            seen.append(fact)

    broken, collect = Broken(), Collect()
    observe.add_observer(broken)
    observe.add_observer(collect)
    try:
        notify(LLMRetry("m", 1, "timeout", 0.1))
        notify(LLMRetry("m", 2, "timeout", 0.2))
    finally:
        observe.remove_observer(broken)
        observe.remove_observer(collect)
    assert [f.attempt for f in seen] == [1, 2]  # type: ignore[attr-defined]
    assert [e["event"] for e in logged].count("observer.failed") == 1


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts(model: str) -> tuple[float, ...]:
    return (
        sample("sluice_llm_calls_total", model=model, outcome="ok"),
        sample("sluice_llm_tokens_total", model=model, kind="prompt"),
        sample("sluice_llm_retries_total", model=model, reason="timeout"),
        sample("sluice_llm_reasks_total", model=model, outcome="schema_invalid"),
        sample("sluice_validation_failures_total", model=model, outcome="schema_invalid"),
        sample("sluice_effects_total", tool="metrics-tool", status="duplicate"),
        sample("sluice_events_total", stage="worker", flow="metrics-flow", lane="review"),
    )


def test_metrics_count_every_fact() -> None:
    m = MetricsObserver()
    model = "metrics-test-model"
    before = counts(model)
    m.observe(call(model=model))
    m.observe(call(model=model, attempt=2))
    m.observe(LLMRetry(model, 1, "timeout", 0.1))
    m.observe(ValidationFailed(model, 1, "schema_invalid", ["x"], reask=True))
    m.observe(ValidationFailed(model, 2, "schema_invalid", ["x"], reask=False))
    m.observe(ToolCall("start", "metrics-tool", "e1", "k"))  # a start is not an effect
    m.observe(ToolCall("success", "metrics-tool", "e1", "k", "duplicate", dedup=True))
    with event_scope("worker", "metrics-flow") as scope:
        m.observe(scope.summary("e1", "review", "x"))
    after = counts(model)
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 200, 1, 1, 2, 1, 1]


TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (TP, ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01")),
        (TP.upper(), None),  # W3C: lowercase hex only
        ("00-" + "0" * 32 + "-b7ad6b7169203331-01", None),  # all-zero trace id is invalid
        ("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", None),
        ("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None),  # invalid version
        ("garbage", None),
        (None, None),
    ],
)
def test_traceparent_parsing(text: str | None, parsed: tuple[str, str, str] | None) -> None:
    assert tracing.parse(text) == parsed


def test_with_tracing_off_the_carried_traceparent_passes_through() -> None:
    with tracing.stage_span("process t", TP, "e1", {}) as out:
        assert out == TP


def test_an_event_without_one_gets_a_traceparent_from_its_id() -> None:
    with tracing.stage_span("process t", None, "e1", {}) as first:
        pass
    with tracing.stage_span("process t", "not a traceparent", "e1", {}) as again:
        pass
    with tracing.stage_span("process t", None, "e2", {}) as other:
        pass
    assert first == again == tracing.minted("e1")  # the same on every redelivery
    assert tracing.parse(first) is not None
    assert first != other
    assert first is not None
    assert first.endswith("-00")


def test_with_traceparent_replaces_only_the_traceparent() -> None:
    headers = (("traceparent", b"old"), ("tracestate", b"k=v"), ("x", b"1"))
    assert tracing.with_traceparent(headers, TP) == (
        ("tracestate", b"k=v"), ("x", b"1"), ("traceparent", TP.encode()),
    )  # fmt: skip
    assert tracing.traceparent_of(tracing.with_traceparent(headers, TP)) == TP
    assert tracing.traceparent_of((("traceparent", b"\xff"),)) is None
