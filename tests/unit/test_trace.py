"""``sluice trace`` without a broker: which records name the event, what stage each one is, the
trace ids, and the text timeline (time order, attempts, values cut unless ``--full``)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from schemas.codec import Codec
from schemas.records import DeadLetter, ToolEffect, Usage
from streams.trace import Step, Trace, _names, _steps, render_text, trace_id
from tests.records import NOW, SAMPLES

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ROLES = {"tickets.received": "received", "tickets.auto": "auto", "tickets.reviewed": "reviewed"}


def message(topic: str, value: bytes, headers: list[tuple[str, bytes]], key: bytes = b"k") -> Any:
    return SimpleNamespace(
        topic=topic, partition=3, offset=7, timestamp=1_764_000_000_000, key=key, value=value,
        headers=headers,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (TP, "4bf92f3577b34da6a3ce929d0e0e4736"),
        (f" {TP} ", "4bf92f3577b34da6a3ce929d0e0e4736"),
        (None, None),
        ("", None),
        (TP.upper(), None),  # W3C: lowercase hex only
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),  # the invalid all-zero id
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # invalid version
        ("00-4bf92f35-00f067aa0ba902b7-01", None),
    ],
)
def test_trace_id_reads_only_valid_w3c_traceparents(
    header: str | None, expected: str | None
) -> None:
    assert trace_id(header) == expected


def test_a_record_names_the_event_by_its_header_or_on_reviewed_topics_by_its_key() -> None:
    ours = [("sluice.event_id", b"other"), ("sluice.event_id", b"ev-1")]  # the last one counts
    assert _names(message("t", b"", ours), b"ev-1", keyed=False)
    assert not _names(message("t", b"", [("sluice.event_id", b"ev-2")], key=b"ev-1"), b"ev-1",
                      keyed=True)  # fmt: skip
    assert _names(message("t", b"", [], key=b"ev-1"), b"ev-1", keyed=True)
    assert not _names(message("t", b"", [], key=b"ev-1"), b"ev-1", keyed=False)


def test_each_record_becomes_its_stage_and_results_bring_their_llm_calls() -> None:
    codec = Codec()
    result = SAMPLES[0]  # a TicketTriaged, event e-1
    usage = Usage(attempts=2, prompt_tokens=300, completion_tokens=50, latency_ms=90, per_attempt=[
        {"attempt": 1, "outcome": "invalid_json", "prompt_tokens": 120, "completion_tokens": 10,
         "latency_ms": 40},
        {"attempt": 2, "outcome": "ok", "prompt_tokens": 180, "completion_tokens": 40,
         "latency_ms": 50},
    ])  # fmt: skip
    value = codec.encode(result.model_copy(update={"usage": usage}))
    header = [("sluice.event_id", b"e-1"), ("traceparent", TP.encode())]

    calls, routed = _steps(
        message("tickets.auto", value, header), codec, "auto", "e-1", None, ROLES
    )
    assert (calls.stage, routed.stage) == ("llm", "result")
    assert [a["outcome"] for a in calls.facts["per_attempt"]] == ["invalid_json", "ok"]
    assert calls.facts["prompt_tokens"] == 300
    assert routed.facts["lane"] == "auto"
    assert routed.facts["threshold"] == 0.8

    copy = message("tickets.review", value, [*header, ("sluice.copy", b"held")])
    [held] = _steps(copy, codec, "review", "e-1", None, ROLES)
    assert (held.stage, held.facts["copy"]) == ("review-copy", "held")

    # A header that names the event on a record about another one: not part of the story.
    assert _steps(message("tickets.auto", value, header), codec, "auto", "e-9", None, ROLES) == []

    effect = ToolEffect(event_id="e-1", tool="route_to_team", idempotency_key="abc",
                        status="applied", input_json="{}", result_json=None, error=None,
                        attempts=1, applied_at=NOW, flow="tickets", latency_ms=12)  # fmt: skip
    raw = message("effects.applied", codec.encode(effect), header)
    [done] = _steps(raw, codec, "effects", "e-1", None, ROLES)
    assert (done.stage, done.facts["tool"], done.facts["latency_ms"]) == (
        "effect",
        "route_to_team",
        12,
    )
    assert _steps(raw, codec, "effects", "e-1", ["invoices"], ROLES) == []  # --flow invoices


def test_a_dead_letter_says_which_stage_wrote_it() -> None:
    codec = Codec()
    letter = next(r for r in SAMPLES if isinstance(r, DeadLetter))
    for source, stage in (("tickets.received", "worker"), ("tickets.reviewed", "executor")):
        record = letter.model_copy(update={
            "source": letter.source.model_copy(update={"topic": source})
        })  # fmt: skip
        raw = message("deadletter", codec.encode(record), [("sluice.event_id", b"e-3")])
        steps = _steps(raw, codec, "deadletter", record.event_id, None, ROLES)
        assert steps[-1].stage == "deadletter"
        assert steps[-1].facts["stage"] == stage
        assert steps[-1].facts["reason"] == record.reason


def step(stage: str, at: int, value: Any = None, **facts: Any) -> Step:
    headers = {"traceparent": TP} if stage == "input" else {}
    return Step(stage, f"t.{stage}", 0, at, at, None, headers, "json", value, facts)


def test_the_timeline_is_in_order_shows_attempts_and_cuts_long_values() -> None:
    big = {"body": "x" * 5000}
    attempt = {"attempt": 1, "outcome": "ok", "prompt_tokens": 11, "completion_tokens": 22,
               "latency_ms": 33}  # fmt: skip
    found = Trace(
        "ev-1",
        steps=[
            step("input", 1_000, big),
            step("llm", 2_000, per_attempt=[attempt], attempts=1, prompt_tokens=11,
                 completion_tokens=22, latency_ms=33, cost_usd=None, model="m",
                 prompt_version="p.v1"),
            step("effect", 3_000, tool="route_to_team", status="applied", source="auto"),
        ],
        topics=["a", "b"],
        scanned=42,
        missing_inputs=["t.received/0/9"],
    )  # fmt: skip
    text = render_text(found)
    assert "trace 4bf92f3577b34da6a3ce929d0e0e4736" in text
    assert "42 records scanned on 2 topics" in text
    assert "inputs no longer in Kafka: t.received/0/9" in text
    heads = [line.split("]")[1].split()[0] for line in text.splitlines() if line.startswith("[")]
    assert heads == ["INPUT", "LLM", "EFFECT"]
    assert "attempt 1: ok               prompt 11  completion 22  33 ms" in text
    assert "model: m  prompt: p.v1" in text
    assert "tool: route_to_team  status: applied  from: auto" in text
    assert "1970-01-01T00:00:01.000Z" in text
    assert "--full prints all" in text
    assert "x" * 5000 not in text
    assert "x" * 5000 in render_text(found, full=True)
    out = found.as_json()
    assert out["stages"] == ["input", "llm", "effect"]
    assert out["steps"][0]["value"] == big  # the machine-readable form is never cut
    assert out["trace_ids"] == ["4bf92f3577b34da6a3ce929d0e0e4736"]


def test_steps_sort_by_time_then_by_the_order_the_pipeline_writes_them() -> None:
    stages = ["effect", "review-decision", "review-copy", "result", "llm", "input"]
    same_ms = sorted((step(s, 5) for s in stages), key=Step.sort_key)
    assert [s.stage for s in same_ms] == stages[::-1]
    later_first = sorted([step("input", 9), step("effect", 4)], key=Step.sort_key)
    assert [s.stage for s in later_first] == ["effect", "input"]  # the clock wins


def test_nothing_found_is_not_found() -> None:
    assert not Trace("ev-1").found
    assert Trace("ev-1").as_json()["found"] is False
