"""``sluice trace``: one event's story read back from topics that real stages wrote.

A real worker (on the fault server), executor and review service, and a real redrive: the traced
ticket arrives with a ``traceparent``, the model refuses it (a dead letter), an operator redrives
it, the model answers invalid JSON and then a good answer (two attempts), the confident routing
runs from the auto lane while the unsure acknowledgement is held for review, a person corrects
the priority, and the executor runs the result as decided. A second ticket goes the same way on
the same topics at the same time; none of its records may appear in the first one's trace.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from aiokafka import AIOKafkaProducer

from agents.testing.fault_server import answer_marker, fault_marker
from schemas import codec
from schemas.codec import Codec
from schemas.records import TicketTriaged
from streams.trace import render_text, trace
from tests.integration.conftest import Isolated, Sinks, free_port
from tests.integration.test_executor import read_all
from tests.integration.test_outage import sluice
from tests.integration.test_review_effects import review_env, running
from tests.integration.test_review_service import Api, wait_for
from tests.poison.corpus import TRIAGE_ANSWER

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


async def produce(bootstrap: str, topic: str, value: bytes, key: bytes, trace_id: str) -> None:
    """One input event with a W3C traceparent, as an instrumented producer sends it."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        traceparent = f"00-{trace_id}-00f067aa0ba902b7-01".encode()
        await producer.send_and_wait(topic, value, key=key, headers=[("traceparent", traceparent)])
    finally:
        await producer.stop()


def first_index(stages: list[str], stage: str, after: int = -1) -> int:
    return next(i for i, s in enumerate(stages) if s == stage and i > after)


async def test_trace_tells_one_events_story_and_nothing_else(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix  # idempotency keys are global: event ids unique per run
    ours, other = f"traced{run}", f"other{run}"
    port = free_port()
    policy = tmp_path / "policy.toml"
    # A re-ask costs confidence (x 0.75, the actions' too): at these thresholds the traced result
    # (0.71) still goes to auto, its routing (0.9 -> 0.68) runs and its acknowledgement (0.38)
    # is held for a person.
    policy.write_text("[flows.tickets]\nthreshold = 0.7\naction_threshold = 0.6\n")
    env = review_env(
        isolated,
        sinks,
        fault_server,
        tmp_path,
        port,
        SLUICE_POLICY_FILE=str(policy),
        SLUICE_BREAKER="off",
    )
    acts = [
        {"action": "route_to_team", "confidence": 0.9},
        {"action": "send_acknowledgement", "confidence": 0.5},
    ]
    sure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.95})
    refused_then_invalid = fault_marker("refusal", "invalid_json", "ok")
    tickets = [
        (ours, "T-TRACED", f"Charged twice. {refused_then_invalid} {sure}", TRACE_ID),
        (other, "T-UNRELATED", f"Parcel late. {sure}", OTHER_TRACE_ID),
    ]
    with running(env, tmp_path) as (worker, executor, service):
        for event_id, ticket_id, body, trace_id in tickets:
            value = json.dumps({"event_id": event_id, "ticket_id": ticket_id, "body": body})
            await produce(
                s.bootstrap_servers,
                s.topics.tickets_received,
                value.encode(),
                ticket_id.encode(),
                trace_id,
            )
        await read_all(s, s.topics.deadletter, 1, timeout_s=60)  # ours: the model refused
        redrive = sluice(env, "dlq", "redrive", "--event-id", ours, "--why", "trace test")
        assert redrive.returncode == 0, redrive.stderr
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            await wait_for(api, service, 2)  # both held acknowledgements
            item = next(i for i in await api.pending() if i["event_id"] == ours)
            status, decided = await api.call(
                "POST",
                f"/api/items/{item['id']}/edit",
                body={"changes": {"priority": "urgent"}, "comment": "VIP customer"},
            )
            assert status == 200, decided
        # other: routing (auto); ours: routing (auto), routing and acknowledgement (as decided)
        await read_all(s, s.topics.effects, 4, timeout_s=60)
        for proc in (worker, executor, service):
            assert proc.alive(), proc.log_tail()

    results = [codec.decode(v) for v in await read_all(s, s.topics.tickets_auto, 2, 10)]
    [result] = [r for r in results if isinstance(r, TicketTriaged) and r.event_id == ours]
    found = await trace(s, Codec(), ours)
    stages = [step.stage for step in found.steps]
    # Time order, each stage after what caused it.
    first_input = first_index(stages, "input")
    letter = first_index(stages, "deadletter", first_input)
    redriven = first_index(stages, "input", letter)
    routed = first_index(stages, "result", redriven)
    decision = first_index(stages, "review-decision", routed)
    assert stages[letter - 1] == stages[routed - 1] == "llm"  # the calls, before what they made
    assert "review-copy" in stages[routed:decision]
    assert stages.count("effect") == 3, stages
    assert stages[-1] == "effect", stages
    assert stages.count("input") == 2, stages
    assert stages.count("deadletter") == 1, stages
    assert first_index(stages, "effect") > routed
    stamps = [step.timestamp_ms or 0 for step in found.steps]
    assert stamps == sorted(stamps)

    steps = found.steps
    assert steps[first_input].headers["traceparent"].split("-")[1] == TRACE_ID
    assert steps[first_input].value["ticket_id"] == "T-TRACED"
    assert steps[redriven].facts["lineage"]["sluice.redrive.attempt"] == "1"
    origin = (
        f"{steps[first_input].topic}/{steps[first_input].partition}/{steps[first_input].offset}"
    )
    assert steps[redriven].facts["lineage"]["sluice.origin"] == origin
    assert steps[letter].facts["reason"] == "model_refused"
    assert steps[letter].facts["stage"] == "worker"
    assert [a["outcome"] for a in steps[letter - 1].facts["per_attempt"]] == ["refused"]
    # The attempts are the result record's own, token for token.
    calls = steps[routed - 1].facts
    assert calls["per_attempt"] == [a.model_dump(mode="json") for a in result.usage.per_attempt]
    assert [a["outcome"] for a in calls["per_attempt"]] == ["invalid_json", "ok"]
    assert calls["model"] == result.agent.model
    assert steps[routed].facts["lane"] == "auto"
    assert steps[routed].facts["confidence_detail"]["score"] == result.confidence_detail.score
    verdict = steps[decision].facts
    assert (verdict["verdict"], verdict["reviewer"], verdict["comment"]) == (
        "correct",
        "alice",
        "VIP customer",
    )
    assert [c["field"] for c in verdict["changes"]] == ["priority"]
    effects = sorted((e.facts["tool"], e.facts["source"]) for e in steps if e.stage == "effect")
    assert effects == [
        ("route_to_team", "auto"),
        ("route_to_team", "reviewed"),
        ("send_acknowledgement", "reviewed"),
    ]
    assert found.trace_ids == [TRACE_ID]  # one trace, across the redrive too

    text = render_text(found)
    dumped = json.dumps(found.as_json(), default=str)
    for unrelated in (other, "T-UNRELATED", OTHER_TRACE_ID):
        assert unrelated not in text
        assert unrelated not in dumped
    assert f"trace {TRACE_ID}" in text
    for a in result.usage.per_attempt:
        assert (
            f"attempt {a.attempt}: {a.outcome:<16} prompt {a.prompt_tokens}  "
            f"completion {a.completion_tokens}  {a.latency_ms} ms"
        ) in text

    # Narrowed: another flow's topics know nothing of it; nothing was written after now.
    assert not (await trace(s, Codec(), ours, flows=["invoices"])).found
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert not (await trace(s, Codec(), ours, since=later)).found

    # The command, as an operator runs it.
    shown = sluice(isolated.env, "trace", ours)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == text  # the same story: every stage is stopped
    machine = sluice(isolated.env, "trace", ours, "--json")
    assert machine.returncode == 0, machine.stderr
    assert json.loads(machine.stdout)["stages"] == stages
    missing = sluice(isolated.env, "trace", f"no-such-event{run}")
    assert missing.returncode == 1
    assert f"no record of event 'no-such-event{run}'" in missing.stderr
    assert missing.stdout == ""
