"""One event's whole story, observed: logs, metrics and one trace across worker → review →
executor, on real Kafka, Redis, sinks and the real ``openai`` client against the fault server.

Four tickets: one the model is unsure of (a person approves it, its actions run), one whose first
call fails and whose second answer is not JSON (a retry and a re-ask), one confident (auto, its
actions run), and one that is not JSON (dead letter). The producer sends the first with a W3C
traceparent. Then:

- every stage's ``/metrics`` agrees with what the topics hold: the worker's events per lane with
  the lanes, the executor's effects per tool and status with the ToolEffect records, the review
  service's decisions and queue with what was decided;
- every stable log event name appears with the event's context (event id, flow, coordinates,
  trace id);
- the first ticket's records carry one trace id from the producer's traceparent through the
  review lane, the reviewed topic and the effects, each stage with its own span; the OTLP
  collector received those spans with their parents, and ``gen_ai`` attributes on the LLM span.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from agents.testing.fault_server import answer_marker, fault_marker
from schemas import codec
from schemas.records import ToolEffect
from tests.integration.conftest import ROOT, Isolated, Sinks, free_port, send_values
from tests.integration.test_executor import read_all
from tests.integration.test_review_effects import review_env, running
from tests.integration.test_review_service import Api, wait_for
from tests.integration.test_secrets import read_all as read_records
from tests.poison.corpus import TRIAGE_ANSWER

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
#: Context every line about one event carries (README, "Observability").
CONTEXT = ("event_id", "flow", "topic", "partition", "offset", "trace_id")
WORKER_EVENTS = (
    "llm.call", "llm.retry", "validation.failed", "event.routed", "event.deadlettered",
    "event.summary",
)  # fmt: skip
EXECUTOR_EVENTS = ("tool.call.start", "tool.call.success", "tool.call.failure", "event.summary")


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver: what an OpenTelemetry collector would get."""

    spans: list[tuple[str, Any]] = field(default_factory=list)

    async def receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                self.spans += [(service, span) for span in scope.spans]
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def find(self, name: str, **attributes: Any) -> list[tuple[str, Any]]:
        return [
            (service, span)
            for service, span in self.spans
            if span.name.startswith(name)
            and all(attribute(span, k) == v for k, v in attributes.items())
        ]


def attribute(span: Any, key: str) -> Any:
    for a in span.attributes:
        if a.key == key:
            kind = a.value.WhichOneof("value")
            value = getattr(a.value, kind)
            if kind == "array_value":
                return [getattr(v, v.WhichOneof("value")) for v in value.values]
            return value
    return None


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    found = Collector()
    app = web.Application()
    app.router.add_post("/v1/traces", found.receive)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield found, port
    finally:
        await runner.cleanup()


async def scrape(
    session: aiohttp.ClientSession, port: int
) -> dict[tuple[str, tuple[Any, ...]], float]:
    """``{(sample name, sorted labels): value}`` of one ``/metrics`` scrape."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, tuple[Any, ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def traceparent(headers: Any) -> tuple[str, str]:
    text = dict(headers)["traceparent"].decode()
    _, trace, span, _ = text.split("-")
    return trace, span


async def until(check: Any, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.5)


async def test_one_event_observed_across_worker_review_and_executor(
    isolated: Isolated,
    fault_server: str,
    sinks: Sinks,
    tmp_path: Path,
    collector: tuple[Collector, int],
) -> None:
    found, otlp_port = collector
    s = isolated.settings
    run = s.topic_suffix  # idempotency keys are global: event ids unique per run
    review_port, worker_port, executor_port = free_port(), free_port(), free_port()
    env = review_env(
        isolated, sinks, fault_server, tmp_path, review_port,
        SLUICE_METRICS_PORT=str(worker_port), SLUICE_EXECUTOR_METRICS_PORT=str(executor_port),
        SLUICE_OTEL="otlp", OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_BSP_SCHEDULE_DELAY="100", SLUICE_LAG_INTERVAL_S="1",
    )  # fmt: skip
    acts = [
        {"action": "route_to_team", "confidence": 0.5},
        {"action": "send_acknowledgement", "confidence": 0.6},
        {"action": "escalate", "confidence": 0.6},
    ]
    unsure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.5})
    sure = answer_marker({**TRIAGE_ANSWER, "actions": acts[:2], "confidence": 0.97})
    bumpy = fault_marker("500", "invalid_json", "ok")
    rev, auto, retried = f"rev{run}", f"auto{run}", f"retried{run}"
    with running(env, tmp_path) as (worker, executor, service):
        producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                s.topics.tickets_received,
                json.dumps(
                    {"event_id": rev, "ticket_id": "T-R", "body": f"Twice. {unsure}"}
                ).encode(),
                key=b"T-R",
                headers=[("traceparent", f"00-{TRACE}-{PARENT}-01".encode())],
            )
        finally:
            await producer.stop()
        await send_values(
            s.bootstrap_servers,
            s.topics.tickets_received,
            [
                json.dumps({"event_id": auto, "ticket_id": "T-A", "body": f"Hi. {sure}"}).encode(),
                json.dumps(
                    {"event_id": retried, "ticket_id": "T-B", "body": f"Hm. {bumpy}"}
                ).encode(),
                b"not json at all",
            ],
        )
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{review_port}")
            await wait_for(api, service, 2)
            item = next(i["id"] for i in await api.pending() if i["event_id"] == rev)
            status, _ = await api.call("POST", f"/api/items/{item}/approve")
            assert status == 200

            async def executor_done() -> Any:
                scraped = await scrape(session, executor_port)
                done = sum(
                    v for (n, labels), v in scraped.items()
                    if n == "sluice_events_total" and ("stage", "executor") in labels
                )  # fmt: skip
                return scraped if done >= 2 else None  # the auto record and the decision

            executor_metrics = await until(executor_done, 90, executor.log_tail())
            worker_metrics = await scrape(session, worker_port)
            review_metrics = await scrape(session, review_port)
            async with session.get(f"http://127.0.0.1:{worker_port}/health") as response:
                health = await response.json()
                assert response.status == 200, health
        await until(
            lambda: asyncio.sleep(0, found.find("execute_tool", **{"sluice.event_id": rev})),
            30, "the executor's spans never reached the collector",
        )  # fmt: skip
        trace_cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "streams.cli", "trace", rev], env=env, cwd=ROOT,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert (worker.alive(), executor.alive(), service.alive()) == (False, False, False)

    # -- metrics agree with the topics -------------------------------------------------------
    assert set(health["checks"]) == {"kafka", "redis", "llm"}
    records = await read_records(s, [s.topics.tickets_auto, s.topics.tickets_review,
                                     s.topics.deadletter])  # fmt: skip
    lanes = Counter(dict(m.headers)["sluice.lane"].decode() for m in records
                    if dict(m.headers).get("sluice.copy") is None)  # fmt: skip
    assert lanes == {"auto": 1, "review": 2, "deadletter": 1}
    for lane, count in lanes.items():
        labels = {"stage": "worker", "flow": "tickets", "lane": lane}
        assert value(worker_metrics, "sluice_events_total", **labels) == count, lane
    assert value(worker_metrics, "sluice_llm_retries_total", model="gpt-4o-mini",
                 reason="server_error") == 1  # fmt: skip
    assert value(worker_metrics, "sluice_llm_reasks_total", model="gpt-4o-mini",
                 outcome="invalid_json") == 1  # fmt: skip
    assert value(worker_metrics, "sluice_deadletters_total", stage="worker", flow="tickets",
                 reason="poison_input") == 1  # fmt: skip
    calls = sum(v for (n, _), v in worker_metrics.items() if n == "sluice_llm_calls_total")
    assert calls == 5  # rev 1, auto 1, retried 3 (500, invalid JSON, ok)
    assert value(worker_metrics, "sluice_llm_tokens_total", model="gpt-4o-mini", kind="prompt") > 0
    assert value(worker_metrics, "sluice_in_flight", stage="worker") == 0
    assert value(worker_metrics, "sluice_breaker_state", breaker="tickets",
                 sluice_breaker_state="closed") == 1  # fmt: skip
    assert any(n == "sluice_consumer_lag" for n, _ in worker_metrics)

    effects = [codec.decode_as(v, ToolEffect) for v in await read_all(s, s.topics.effects, 5, 30)]
    by_status = Counter((e.tool, e.status) for e in effects)
    assert by_status == {
        ("route_to_team", "applied"): 1,  # rev's, approved (auto's is refused at 0.5 < 0.7)
        ("route_to_team", "refused"): 1,
        ("send_acknowledgement", "applied"): 2,
        ("escalate", "refused"): 1,
    }
    for (tool, result), count in by_status.items():
        assert value(executor_metrics, "sluice_effects_total", tool=tool, status=result) == count

    assert value(review_metrics, "sluice_review_decisions_total", flow="tickets",
                 verdict="approve") == 1  # fmt: skip
    assert value(review_metrics, "sluice_review_pending", flow="tickets") == 1

    # -- every event name, with the event's context -------------------------------------------
    for log, names in (
        (tmp_path / "worker.log", WORKER_EVENTS),
        (tmp_path / "executor.log", EXECUTOR_EVENTS),
    ):
        seen = lines(log)
        for name in names:
            with_context = [e for e in seen if e.get("event") == name
                            and all(e.get(k) is not None for k in CONTEXT)]  # fmt: skip
            assert with_context, f"{name} with {CONTEXT} not in {log.name}"
    decided = [e for e in lines(tmp_path / "review.log") if e.get("event") == "review.decided"
               and all(e.get(k) is not None for k in CONTEXT)]  # fmt: skip
    assert [(e["event_id"], e["verdict"], e["reviewer"]) for e in decided] == [
        (rev, "approve", "alice")
    ]
    calls_of_rev = [e for e in lines(tmp_path / "worker.log")
                    if e.get("event") == "llm.call" and e.get("event_id") == rev]  # fmt: skip
    assert [(c["attempt"], c["outcome"], c["trace_id"]) for c in calls_of_rev] == [(1, "ok", TRACE)]
    assert calls_of_rev[0]["prompt_tokens"] > 0
    assert "prompt_sha256" in calls_of_rev[0]
    assert "Twice." not in (tmp_path / "worker.log").read_text()  # prompts hashed by default

    # -- one trace through the topics' headers ------------------------------------------------
    mine = [m for m in records if dict(m.headers)["sluice.event_id"].decode() == rev]
    reviewed = [m for m in await read_records(s, [s.topics.tickets_reviewed])
                if dict(m.headers)["sluice.event_id"].decode() == rev]  # fmt: skip
    effect_records = [m for m in await read_records(s, [s.topics.effects])
                      if dict(m.headers)["sluice.event_id"].decode() == rev]  # fmt: skip
    ((worker_trace, worker_span),) = {traceparent(m.headers) for m in mine}
    ((review_trace, review_span),) = {traceparent(m.headers) for m in reviewed}
    ((executor_trace, executor_span),) = {traceparent(m.headers) for m in effect_records}
    assert worker_trace == review_trace == executor_trace == TRACE
    assert len({PARENT, worker_span, review_span, executor_span}) == 4  # a span per stage

    # -- the spans the collector received ---------------------------------------------------
    def one(name: str, **attributes: Any) -> tuple[str, Any]:
        spans = found.find(name, **attributes)
        assert len(spans) == 1, (name, attributes, [(sv, sp.name) for sv, sp in found.spans])
        return spans[0]

    where, process = one("process", **{"sluice.event_id": rev})
    assert (where, process.trace_id.hex(), process.parent_span_id.hex()) == (
        "sluice-worker", TRACE, PARENT,
    )  # fmt: skip
    assert process.span_id.hex() == worker_span
    chats = [sp for sv, sp in found.spans
             if sv == "sluice-worker" and sp.parent_span_id == process.span_id]  # fmt: skip
    assert [sp.name for sp in chats] == ["chat gpt-4o-mini"]
    chat = chats[0]
    assert attribute(chat, "gen_ai.operation.name") == "chat"
    assert attribute(chat, "gen_ai.request.model") == "gpt-4o-mini"
    assert attribute(chat, "gen_ai.usage.input_tokens") > 0
    assert attribute(chat, "gen_ai.response.finish_reasons") == ["stop"]
    where, review = one("review", **{"sluice.event_id": rev})
    assert (where, review.parent_span_id.hex(), review.span_id.hex()) == (
        "sluice-review", worker_span, review_span,
    )  # fmt: skip
    executed = [sp for sv, sp in found.spans if sv == "sluice-executor"
                and sp.parent_span_id.hex() == review_span]  # fmt: skip
    assert len(executed) == 1
    assert executed[0].span_id.hex() == executor_span
    tools = sorted(attribute(sp, "gen_ai.tool.name") for _, sp in found.spans
                   if sp.parent_span_id == executed[0].span_id)  # fmt: skip
    assert tools == ["escalate", "route_to_team", "send_acknowledgement"]

    # -- and the story, read back from the topics --------------------------------------------
    assert trace_cli.returncode == 0, trace_cli.stderr
    for expected in (rev, TRACE, "review", "approve", "route_to_team", "applied"):
        assert expected in trace_cli.stdout, (expected, trace_cli.stdout)
