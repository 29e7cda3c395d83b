"""``sluice trace EVENT_ID``: one event's whole story, read back from the topics themselves.

Operators asking "what happened to this event?" should not have to join logs, metrics and three
``sluice consume`` pipes by hand. Every record Sluice writes about an event carries its id in the
``sluice.event_id`` header (results, review copies, dead letters, effects) or as its key (review
decisions), so one pass over the output topics finds them all:

1. each flow's ``auto``, ``review`` and ``reviewed`` topics, the dead-letter topic and the effects
   topic are read from their start (or from ``since``) to their end *at start*, every partition
   assigned, no consumer group (nothing is committed, no worker's group is disturbed);
2. a record is decoded only when its header (or key) names the event: the scan costs one header
   comparison per record, so topics of ~100k records take seconds;
3. the input records are fetched at exactly the ``source`` coordinates the results and dead
   letters name (one seek each), not found by scanning input topics: a redriven event has two.

The story is a list of :class:`Step` in time order (Kafka timestamps): ``input``, ``llm`` (the
attempts of the result or dead letter that follows), ``result``, ``review-copy``,
``review-decision``, ``effect`` and ``deadletter``. :func:`render_text` prints it for people,
:meth:`Trace.as_json` for machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaConnectionError

from schemas.codec import Codec
from schemas.errors import ConfigError
from streams.consume import render
from streams.flow import ROLES, Envelope, registered
from streams.meta import ATTEMPT_HEADER, EVENT_ID_HEADER, FROM_HEADER, ORIGIN_HEADER
from streams.settings import Settings
from streams.topics import partitions
from streams.tracing import parse as parse_traceparent

COPY_HEADER = "sluice.copy"
"""Set on review-lane copies of a result (``held`` actions, ``audit`` samples): see pipeline."""
LINEAGE = (ATTEMPT_HEADER, ORIGIN_HEADER, FROM_HEADER)
#: Headers worth a line in the text form of every step (the JSON form has them all).
SHOWN_HEADERS = ("traceparent", "tracestate", COPY_HEADER, *LINEAGE)
#: W3C trace context: version-traceid-parentid-flags, lowercase hex.
#: Where two steps share a timestamp, the order the pipeline wrote them in.
RANK = {
    "input": 0,
    "llm": 1,
    "result": 2,
    "deadletter": 2,
    "review-copy": 3,
    "review-decision": 4,
    "effect": 5,
}
VALUE_CHARS = 2048
"""Text form: a value longer than this (pretty JSON) is cut unless ``--full``."""
FETCH_TIMEOUT_S = 30.0
#: Fields every result record shares (the pipeline's envelope): the rest is the agent's answer.
ENVELOPE = frozenset(Envelope.__annotations__)

Coord = tuple[str, int, int]


@dataclass(frozen=True)
class Step:
    """One record of the event's story (or, for ``llm``, the calls one record reports)."""

    stage: str
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: str | None
    headers: dict[str, str]
    type: str | None
    """The record type (``TicketTriaged``, ``json`` for a JSON value, None when undecodable)."""
    value: Any
    """The decoded value as JSON-ready data; the raw bytes as base64 text when it did not decode
    (then ``error`` says why)."""
    facts: dict[str, Any] = field(default_factory=dict)
    """What this stage says about the event, picked out of the value (see ``_facts``)."""
    error: str | None = None

    @property
    def coordinates(self) -> str:
        """``topic/partition/offset``: how dead letters, origins and review items name records."""
        return f"{self.topic}/{self.partition}/{self.offset}"

    @property
    def when(self) -> str:
        """The Kafka timestamp as ISO 8601 UTC with milliseconds ("?" when the record has none)."""
        if self.timestamp_ms is None or self.timestamp_ms < 0:
            return "?"
        at = datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def sort_key(self) -> tuple[int, int, str, int, int]:
        """Time first; at the same millisecond, the order the stages write in (calls before the
        record they made), so the timeline reads as cause and effect."""
        return (
            self.timestamp_ms or 0,
            RANK.get(self.stage, 9),
            self.topic,
            self.partition,
            self.offset,
        )

    def as_json(self) -> dict[str, Any]:
        """This step for ``--json``: coordinates, all headers, facts and the whole value."""
        out: dict[str, Any] = {
            "stage": self.stage,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.when,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key,
            "headers": self.headers,
            "type": self.type,
            "facts": self.facts,
            "value": self.value,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class Trace:
    """Everything the topics say about one event, and where was looked."""

    event_id: str
    steps: list[Step] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    """The topics scanned (inputs are fetched at their coordinates, not scanned)."""
    missing_topics: list[str] = field(default_factory=list)
    """Topics of the chosen flows that do not exist on the cluster (skipped)."""
    scanned: int = 0
    """Records read to find the steps: what the search cost."""
    missing_inputs: list[str] = field(default_factory=list)
    """Input coordinates a result or dead letter names that are gone (retention, compaction)."""
    since: datetime | None = None

    @property
    def found(self) -> bool:
        """Whether any topic knows the event: the CLI's exit code (0 found, 1 not)."""
        return bool(self.steps)

    @property
    def trace_ids(self) -> list[str]:
        """The W3C trace ids in the steps' ``traceparent`` headers, first seen first: one
        normally; more when a producer or a redrive started a new trace."""
        seen: list[str] = []
        for step in self.steps:
            tid = trace_id(step.headers.get("traceparent"))
            if tid is not None and tid not in seen:
                seen.append(tid)
        return seen

    def as_json(self) -> dict[str, Any]:
        """The machine-readable form (``sluice trace --json``): values whole, never cut."""
        return {
            "event_id": self.event_id,
            "found": self.found,
            "trace_ids": self.trace_ids,
            "stages": [s.stage for s in self.steps],
            "steps": [s.as_json() for s in self.steps],
            "topics_scanned": self.topics,
            "missing_topics": self.missing_topics,
            "missing_inputs": self.missing_inputs,
            "records_scanned": self.scanned,
            "since": self.since.isoformat() if self.since else None,
        }


def trace_id(traceparent: str | None) -> str | None:
    """The trace id of a W3C ``traceparent`` header; None when absent, malformed or all
    zeros (the spec's invalid id), so a broken header never poses as a trace."""
    found = parse_traceparent(traceparent)
    return found[0] if found else None


async def trace(
    settings: Settings,
    codec: Codec,
    event_id: str,
    *,
    flows: Sequence[str] | None = None,
    since: datetime | None = None,
) -> Trace:
    """Every record about ``event_id`` on the topics of ``flows`` (default: all registered),
    written at or after ``since`` (default: everything retained), plus its input records.

    Reads the topics as they are at call time: records written meanwhile wait for the next run.
    Kafka that does not answer is a :class:`ConfigError` (the CLI's exit 2), not "not found".
    """
    topics = settings.topics
    names = list(flows) if flows else None
    roles: dict[str, str] = {
        topics.of(spec.name, role): role for spec in registered() for role in ROLES
    }
    lanes: dict[str, str] = {}
    for spec in registered():
        if names is None or spec.name in names:
            for role in ("auto", "review", "reviewed"):
                lanes.setdefault(topics.of(spec.name, role), role)
    lanes.setdefault(topics.deadletter, "deadletter")
    lanes.setdefault(topics.effects, "effects")
    found = Trace(event_id, since=since)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max(settings.max_message_bytes, 1024 * 1024),
    )
    try:
        await asyncio.wait_for(consumer.start(), 30)
    except (TimeoutError, KafkaConnectionError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise ConfigError(
            f"Kafka at {settings.bootstrap_servers} does not answer; start it "
            "(make up) or set KAFKA_BOOTSTRAP_SERVERS"
        ) from exc
    await asyncio.sleep(0)  # aiokafka#647: stop() right after start() can raise CancelledError
    try:
        tps, found.missing_topics = await _present(consumer, settings, list(lanes))
        found.topics = [t for t in lanes if t not in found.missing_topics]
        messages = await _scan(consumer, tps, found, event_id.encode(), lanes, since)
        for message in messages:
            found.steps += _steps(message, codec, lanes[message.topic], event_id, names, roles)
        have = {(s.topic, s.partition, s.offset) for s in found.steps}
        wanted = sorted({c for s in found.steps if (c := _source(s)) is not None} - have)
        there = set((await _present(consumer, settings, sorted({c[0] for c in wanted})))[0])
        for coord in wanted:
            tp = TopicPartition(coord[0], coord[1])
            message = await _fetch(consumer, tp, coord[2]) if tp in there else None
            if message is None:
                found.missing_inputs.append("/".join(map(str, coord)))
            else:
                found.steps.append(_step("input", render(message, codec)))
    finally:
        await consumer.stop()
    found.steps.sort(key=Step.sort_key)
    return found


async def _present(
    consumer: AIOKafkaConsumer, settings: Settings, topics: list[str]
) -> tuple[list[TopicPartition], list[str]]:
    """Every partition of those ``topics`` that exist, and the names of those that do not."""
    if not topics:
        return [], []
    known = await consumer.topics()
    present = [t for t in topics if t in known]
    missing = [t for t in topics if t not in known]
    return (await partitions(settings, present) if present else []), missing


async def _scan(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    found: Trace,
    wanted: bytes,
    lanes: dict[str, str],
    since: datetime | None,
) -> list[Any]:
    """The raw messages of ``found.topics`` that name the event, from ``since`` (or the start)
    to each partition's end at call time. Nothing is decoded here: the header (or, on a
    ``reviewed`` topic, the key) decides."""
    if not tps:
        return []
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    if since is not None:
        at = await consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in tps})
        starts = {tp: ends[tp] if at[tp] is None else max(starts[tp], at[tp].offset) for tp in tps}
    left = {tp for tp in tps if starts[tp] < ends[tp]}
    for tp in left:
        consumer.seek(tp, starts[tp])  # an explicit seek: a pending offset reset cannot win
    matched: list[Any] = []
    keyed = {t for t, role in lanes.items() if role == "reviewed"}
    while left:
        batches = await consumer.getmany(*left, timeout_ms=1000)
        for tp, batch in batches.items():
            for m in batch:
                if not starts[tp] <= m.offset < ends[tp]:
                    continue
                found.scanned += 1
                if _names(m, wanted, m.topic in keyed):
                    matched.append(m)
        left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
    return matched


def _names(message: Any, wanted: bytes, keyed: bool) -> bool:
    """Whether ``message`` is about the event: its last ``sluice.event_id`` header, or (review
    decisions carry no headers) its key."""
    header = None
    for k, v in message.headers or ():
        if k == EVENT_ID_HEADER:
            header = v
    if header is not None:
        return bool(header == wanted)
    return keyed and message.key == wanted


def _steps(
    message: Any,
    codec: Codec,
    role: str,
    event_id: str,
    flows: list[str] | None,
    roles: dict[str, str],
) -> list[Step]:
    """The step(s) one matched message makes: a result or dead letter also gives an ``llm``
    step with its calls. Nothing when the decoded record says it is about another event (a key
    or header that collided) or another flow than asked for."""
    line = render(message, codec)
    value = line.get("value")
    record = value if isinstance(value, dict) and line.get("type") != "json" else {}
    if record.get("event_id", event_id) != event_id:
        return []
    if flows is not None and record.get("flow") not in (None, *flows):
        return []
    if role == "deadletter":
        stage = "deadletter"
    elif role == "effects":
        stage = "effect"
    elif role == "reviewed":
        stage = "review-decision"
    elif COPY_HEADER in line["headers"]:
        stage = "review-copy"
    else:
        stage = "result"
    main = _step(stage, line, roles)
    usage = record.get("usage")
    if stage not in ("result", "deadletter") or not isinstance(usage, dict):
        return [main]
    agent = record.get("agent") or {}
    llm = {
        "from": main.coordinates,
        "attempts": usage.get("attempts"),
        "per_attempt": usage.get("per_attempt") or [],
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "latency_ms": usage.get("latency_ms"),
        "cost_usd": usage.get("cost_usd"),
        "token_budget": usage.get("token_budget"),
        "model": agent.get("model"),
        "prompt_version": agent.get("prompt_version"),
        "agent": f"{agent['name']} {agent['version']}" if agent.get("name") else None,
    }
    calls = Step(
        "llm",
        main.topic,
        main.partition,
        main.offset,
        main.timestamp_ms,
        main.key,
        {},
        None,
        None,
        llm,
    )
    return [calls, main]


def _step(stage: str, line: dict[str, Any], roles: dict[str, str] | None = None) -> Step:
    value = line.get("value")
    record = value if isinstance(value, dict) else {}
    headers: dict[str, str] = line["headers"]
    return Step(
        stage=stage,
        topic=line["topic"],
        partition=line["partition"],
        offset=line["offset"],
        timestamp_ms=line["timestamp"],
        key=line["key"],
        headers=headers,
        type=line.get("type"),
        value=value if "value" in line else line.get("raw_base64"),
        facts=_facts(stage, record if line.get("type") != "json" else {}, headers, roles or {}),
        error=line.get("error"),
    )


#: The fields of a review decision, an effect and a dead letter that tell their stage's part.
FACT_KEYS: dict[str, tuple[str, ...]] = {
    "review-decision": (
        "verdict", "reviewer", "corrections", "changes", "comment", "seconds_to_decision",
        "decided_at", "model_confidence", "decision_id", "item", "flow",
    ),
    "effect": (
        "tool", "status", "idempotency_key", "attempts", "latency_ms", "reconciled", "error",
        "reason", "source", "flow", "applied_at",
    ),
    "deadletter": (
        "flow", "reason", "error_class", "error_message", "attempts", "retriable", "source",
        "failed_at", "original_size", "original_truncated",
    ),
}  # fmt: skip


def _facts(
    stage: str, r: dict[str, Any], headers: dict[str, str], roles: dict[str, str]
) -> dict[str, Any]:
    """The fields of record ``r`` that tell this stage's part of the story; ``roles`` (topic →
    role) says which stage wrote a dead letter when the record itself does not."""
    lineage = {h: headers[h] for h in LINEAGE if h in headers}
    if stage == "input":
        return {"lineage": lineage} if lineage else {}
    if stage in ("result", "review-copy"):
        route = r.get("route") or {}
        facts = {
            "lane": route.get("lane"),
            "reason": route.get("reason"),
            "threshold": route.get("threshold"),
            "confidence": r.get("confidence"),
            "confidence_detail": r.get("confidence_detail"),
            "answer": {k: v for k, v in r.items() if k not in ENVELOPE},
            "processed_at": r.get("processed_at"),
        }
        if stage == "review-copy":
            facts["copy"] = headers.get(COPY_HEADER)
        if lineage:
            facts["lineage"] = lineage
        return facts
    if stage in ("review-decision", "effect"):
        return {k: r.get(k) for k in FACT_KEYS[stage]}
    if stage == "deadletter":
        keys = FACT_KEYS[stage]
        facts = {k: r.get(k) for k in keys}
        source = (r.get("source") or {}).get("topic")
        inferred = {"received": "worker", "auto": "executor", "reviewed": "executor"}
        facts["stage"] = (
            r.get("stage")
            or headers.get("sluice.stage")
            or inferred.get(roles.get(str(source), ""))
        )
        facts["lineage"] = lineage
        return facts
    return {}


def _source(step: Step) -> Coord | None:
    """The input coordinates a result or dead letter was made from."""
    if step.stage not in ("result", "deadletter"):
        return None
    src = step.value.get("source") if isinstance(step.value, dict) else None
    if not isinstance(src, dict):
        return None
    try:
        return (str(src["topic"]), int(src["partition"]), int(src["offset"]))
    except (KeyError, TypeError, ValueError):
        return None


async def _fetch(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> Any | None:
    """The record at exactly ``offset`` of ``tp``; None when retention or compaction removed it."""
    consumer.assign([tp])
    start = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    if not start <= offset < end:
        return None
    consumer.seek(tp, offset)  # explicit: a pending offset reset cannot move it
    try:
        async with asyncio.timeout(FETCH_TIMEOUT_S):
            while True:
                for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                    if m.offset >= offset:
                        return m if m.offset == offset else None  # compacted away
                if await consumer.position(tp) >= end:
                    return None
    except TimeoutError:
        return None


# --- text ---------------------------------------------------------------------------------------


def render_text(found: Trace, *, full: bool = False, width: int = VALUE_CHARS) -> str:
    """The timeline for people: a summary line, then one section per step in time order.

    Values are cut at ``width`` characters unless ``full``: an input of a megabyte must not bury
    the story it is part of. The JSON form (:meth:`Trace.as_json`) never cuts.
    """
    ids = found.trace_ids
    counts: dict[str, int] = {}
    for s in found.steps:
        counts[s.stage] = counts.get(s.stage, 0) + 1
    out = [
        f"event {found.event_id}",
        f"  trace {', '.join(ids) if ids else '(no traceparent header seen)'}",
        "  "
        + ", ".join(f"{n} {stage}" for stage, n in counts.items())
        + f"  ({found.scanned} records scanned on {len(found.topics)} topics"
        + (f" since {found.since.isoformat()}" if found.since else "")
        + ")",
    ]
    if found.missing_topics:
        out.append(f"  topics missing on the cluster: {', '.join(found.missing_topics)}")
    if found.missing_inputs:
        out.append(f"  inputs no longer in Kafka: {', '.join(found.missing_inputs)}")
    for n, step in enumerate(found.steps, 1):
        out.append("")
        where = f"from {step.coordinates}" if step.stage == "llm" else step.coordinates
        out.append(f"[{n:>2}] {step.stage.upper():<16}{where}  {step.when}")
        out += ["    " + line for line in _section(step, full, width)]
    return "\n".join(out) + "\n"


def _section(step: Step, full: bool, width: int) -> list[str]:
    f = step.facts
    lines: list[str] = []
    if step.stage == "llm":
        for a in f.get("per_attempt") or []:
            lines.append(
                f"attempt {a.get('attempt')}: {a.get('outcome'):<16} "
                f"prompt {a.get('prompt_tokens')}  completion {a.get('completion_tokens')}  "
                f"{a.get('latency_ms')} ms"
            )
        cost = f.get("cost_usd")
        lines.append(
            f"total: {f.get('attempts')} attempt(s), prompt {f.get('prompt_tokens')}, completion "
            f"{f.get('completion_tokens')}, {f.get('latency_ms')} ms, cost "
            + (f"${cost}" if cost is not None else "unknown")
        )
        if f.get("model") or f.get("prompt_version"):
            lines.append(
                f"model: {f.get('model')}  prompt: {f.get('prompt_version')}  "
                f"agent: {f.get('agent')}"
            )
        return lines
    lines += _headers(step)
    if step.error:
        lines.append(f"undecodable: {step.error}")
    if step.stage == "input":
        lines.append(f"key: {step.key}")
        kind = step.type or "undecodable, base64"
        lines += _value(step.value, full, width, label=f"value ({kind}):")
        return lines
    if step.stage in ("result", "review-copy"):
        if step.stage == "review-copy":
            lines.append(
                f"copy: {f.get('copy')} (the event ended in {f.get('lane')}; "
                "a person is asked to look)"
            )
        else:
            lines.append(f"lane: {f.get('lane')}  ({step.type})")
        lines.append(f"reason: {f.get('reason')}")
        lines.append(f"threshold: {f.get('threshold')}  confidence: {f.get('confidence')}")
        detail = f.get("confidence_detail")
        if isinstance(detail, dict):
            lines.append("confidence detail: " + ", ".join(f"{k} {v}" for k, v in detail.items()))
        lines += _value(f.get("answer"), full, width, label="answer:")
        return lines
    if step.stage == "review-decision":
        lines.append(
            f"verdict: {f.get('verdict')}  by {f.get('reviewer')}  at {f.get('decided_at')}  "
            f"({f.get('seconds_to_decision')} s to decide)"
        )
        if f.get("comment"):
            lines.append(f"comment: {f['comment']}")
        if f.get("corrections"):
            lines.append(f"corrections: {json.dumps(f['corrections'], ensure_ascii=False)}")
        for c in f.get("changes") or []:
            lines.append(f"changed {c.get('field')}: {c.get('before')} -> {c.get('after')}")
        item = f.get("item")
        if isinstance(item, dict):
            lines.append(
                f"decided item: {item.get('topic')}/{item.get('partition')}/{item.get('offset')}"
                f"  model confidence {f.get('model_confidence')}"
            )
        return lines
    if step.stage == "effect":
        lines.append(f"tool: {f.get('tool')}  status: {f.get('status')}  from: {f.get('source')}")
        lines.append(f"idempotency key: {f.get('idempotency_key')}")
        lines.append(
            f"attempts: {f.get('attempts')}  latency: {f.get('latency_ms')} ms  "
            f"reconciled: {f.get('reconciled')}"
        )
        if f.get("reason") or f.get("error"):
            lines.append(f"reason: {f.get('reason')}  error: {f.get('error')}")
        return lines
    if step.stage == "deadletter":
        stage = f"  stage: {f['stage']}" if f.get("stage") else ""
        lines.append(
            f"reason: {f.get('reason')}  flow: {f.get('flow')}{stage}  attempts: "
            f"{f.get('attempts')}  retriable: {f.get('retriable')}"
        )
        message = str(f.get("error_message") or "")
        lines.append(f"error: {f.get('error_class')}: {_cut(message, 500)}")
        src = f.get("source") or {}
        lines.append(
            f"source: {src.get('topic')}/{src.get('partition')}/{src.get('offset')}"
            f"  original {f.get('original_size')} bytes"
            + ("  (truncated)" if f.get("original_truncated") else "")
        )
        return lines
    lines += _value(step.value, full, width, label="value:")
    return lines


def _headers(step: Step) -> list[str]:
    shown = (
        step.headers
        if step.stage == "input"
        else {k: v for k, v in step.headers.items() if k in SHOWN_HEADERS}
    )
    lines = []
    for k, v in shown.items():
        note = ""
        if k == "traceparent":
            note = f"  (trace {trace_id(v)})" if trace_id(v) else "  (malformed)"
        lines.append(f"{k}: {_cut(v, 200)}{note}")
    return lines


def _value(value: Any, full: bool, width: int, *, label: str) -> list[str]:
    text = (
        value
        if isinstance(value, str)
        else json.dumps(value, indent=2, ensure_ascii=False, default=str)
    )
    if not full and len(text) > width:
        text = f"{text[:width]}\n... cut: {len(text) - width} more characters (--full prints all)"
    return [label, *("  " + line for line in text.splitlines())]


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n] + "..."
