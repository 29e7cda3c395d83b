"""Replay: re-run a range of a topic through a candidate model or prompt, as a dry run.

A model or prompt change is only safe once it has been tried on real traffic. ``sluice replay``
reads a topic range — an input topic, a lane, ``<flow>.reviewed`` or the dead-letter topic —
finds each record's original input event (a lane record, a decision and a dead letter all carry
its coordinates), and runs it through the same :class:`~streams.pipeline.Pipeline` the worker
runs, with the candidate's model, endpoint and prompt version. Each outcome becomes one JSON row
(``evals/FORMATS.md``) in a file or an eval topic, for ``sluice eval``.

What keeps it a dry run, next to live workers on the same cluster:

- it writes only its own file or eval topic: no lane, no dead letter, no effect; a live topic is
  refused as the output, and the executor never sees a replayed result;
- it reads without a consumer group (partitions assigned by hand, nothing committed), so the live
  group's offsets and assignments are untouched;
- no circuit breaker is consulted or counted: a candidate's failures must not trip live traffic.

It resumes: the position of each partition (the end of its finished prefix, as the worker's
commits) is saved next to the output after the rows before it are written, so an interrupted
replay continues where it stopped. Rows are at-least-once: a row finished behind an unfinished one
may be written again on resume; ``sluice eval`` keeps the last row per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import SecretStr

from schemas.codec import Codec
from schemas.errors import ConfigError
from schemas.records import DeadLetter, ReviewDecision, Source, Usage
from streams import compose
from streams.flow import ROLES, FlowSpec
from streams.meta import Meta
from streams.pipeline import Pipeline
from streams.policy import routing_policy
from streams.replaystore import Sink, State
from streams.settings import Settings
from streams.topics import partitions, read_at
from streams.window import AckWindow

log = structlog.get_logger(__name__)

ROW_FORMAT = "sluice.replay/1"


@dataclass(frozen=True)
class Candidate:
    """What to replay with; None keeps the deployment's own setting."""

    model: str | None = None
    base_url: str | None = None
    prompt_version: str | None = None
    """For every replayed flow, or ``flow=version`` pairs in :attr:`prompt_versions`."""
    prompt_versions: Mapping[str, str] = field(default_factory=dict)
    api_key_env: str | None = None
    """The environment variable holding the candidate provider's API key (never the key)."""

    def settings(self, base: Settings, flows: Iterable[str]) -> Settings:
        """``base`` with the candidate's model, endpoint, key and prompt versions."""
        update: dict[str, Any] = {}
        if self.model:
            update["model"] = self.model
        if self.base_url:
            update["openai_base_url"] = self.base_url
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"the candidate's API key variable {self.api_key_env} is unset")
            update["openai_api_key"] = SecretStr(key)
        versions = dict(base.prompt_versions)
        if self.prompt_version:
            versions.update(dict.fromkeys(flows, self.prompt_version))
        versions.update(self.prompt_versions)
        update["prompt_versions"] = versions
        return base.model_copy(update=update)

    def describe(self) -> dict[str, Any]:
        """For the state file: what a resumed replay must match."""
        return {
            "model": self.model,
            "base_url": self.base_url,
            "prompt_version": self.prompt_version,
            "prompt_versions": dict(sorted(self.prompt_versions.items())),
        }


@dataclass(frozen=True)
class Range:
    """Which records of the topic: offsets ``[start, end)`` or record times ``[since, until)``,
    per partition; the end is fixed when the replay starts, so it ends while producers go on."""

    partitions: tuple[int, ...] = ()
    """Empty: every partition."""
    start_offset: int | None = None
    end_offset: int | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int | None = None
    """Stop after this many records (the position is saved: ``--resume`` goes on from there)."""


@dataclass(frozen=True)
class Kind:
    """What the replayed topic holds, and so how a record leads back to its input event."""

    role: str  # received | auto | review | reviewed | deadletter
    flow: str | None  # None: the dead-letter topic (each letter names its flow)


def kind_of(settings: Settings, topic: str, specs: Iterable[FlowSpec]) -> Kind:
    """The role of ``topic`` among the deployment's topics; anything else is refused."""
    if topic == settings.topics.deadletter:
        return Kind("deadletter", None)
    for spec in specs:
        for role in ROLES:
            if settings.topics.of(spec.name, role) == topic:
                return Kind(role, spec.name)
    raise ConfigError(
        f"{topic!r} is not an input, lane, reviewed or dead-letter topic of the flows "
        f"{', '.join(s.name for s in specs)} (check --flow, SLUICE_TOPIC_SUFFIX, overrides)"
    )


# --- the replay ------------------------------------------------------------------------------


@dataclass
class Report:
    """What one replay did."""

    rows: int = 0
    lanes: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    """Records that led to no input event, by why (``source_gone``, ``copy``, ``other_flow``,
    ``unreadable``)."""
    failed: int = 0
    """Records whose replay failed (Kafka or the output); they stay to do, for ``--resume``."""
    seconds: float = 0.0
    interrupted: bool = False
    """Stopped by Ctrl-C or SIGTERM (the position is saved)."""
    finished: bool = False
    """Every partition reached the end of its span (False after ``--limit`` or an interrupt)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "lanes": dict(sorted(self.lanes.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "failed": self.failed,
            "seconds": round(self.seconds, 1),
            "interrupted": self.interrupted,
            "finished": self.finished,
        }


def _usage(usage: Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "attempts": usage.attempts,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "latency_ms": usage.latency_ms,
        "cost_usd": float(usage.cost_usd) if usage.cost_usd is not None else None,
    }


class Replayer:
    """One replay of one topic range; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        specs: list[FlowSpec],
        topic: str,
        candidate: Candidate,
        sink: Sink,
        state_path: Path,
        *,
        span: Range = Range(),
        resume: bool = False,
        concurrency: int = 16,
        progress: bool = True,
        save_every_s: float = 2.0,
    ) -> None:
        self.kind = kind_of(settings, topic, specs)
        if self.kind.flow is not None:
            specs = [s for s in specs if s.name == self.kind.flow]
        self.settings = settings
        self.specs = specs
        self.topic = topic
        self.candidate = candidate
        self.sink = sink
        self.state_path = state_path
        self.span = span
        self.resume = resume
        self.concurrency = max(1, concurrency)
        self.progress = progress
        self.save_every_s = save_every_s
        self.codec = Codec()  # decode any wire format; encode single-object, never registered
        self.report = Report()

    # ----- set-up

    async def _state(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> State:
        described = self.candidate.describe()
        if self.resume:
            if not self.state_path.exists():
                raise ConfigError(f"--resume: no replay state at {self.state_path}")
            state = State.load(self.state_path)
            if state.topic != self.topic or state.candidate != described:
                raise ConfigError(
                    f"--resume: {self.state_path} is a replay of {state.topic} with "
                    f"{state.candidate}, not of {self.topic} with {described}"
                )
            return state
        if self.state_path.exists():
            raise ConfigError(
                f"{self.state_path} exists: --resume it, or remove it (and the output) to "
                "start over"
            )
        s = self.span
        first = await consumer.beginning_offsets(tps)
        last = await consumer.end_offsets(tps)
        starts, ends = dict(first), dict(last)
        if s.since is not None:
            found = await consumer.offsets_for_times(
                {tp: int(s.since.timestamp() * 1000) for tp in tps}
            )
            starts = {tp: found[tp].offset if found[tp] else last[tp] for tp in tps}
        if s.until is not None:
            found = await consumer.offsets_for_times(
                {tp: int(s.until.timestamp() * 1000) for tp in tps}
            )
            ends = {tp: found[tp].offset if found[tp] else last[tp] for tp in tps}
        spans: dict[int, tuple[int, int]] = {}
        for tp in tps:
            start = max(first[tp], starts[tp], s.start_offset or 0)
            end = min(last[tp], ends[tp], s.end_offset if s.end_offset is not None else last[tp])
            spans[tp.partition] = (start, max(start, end))
        return State(self.topic, described, spans, {p: a for p, (a, _) in spans.items()})

    def _pipelines(self) -> tuple[dict[str, Pipeline], Any]:
        names = [s.name for s in self.specs]
        settings = self.candidate.settings(self.settings, names)
        flows, llm = compose.flows(settings, self.specs)
        policy = routing_policy(settings, flows)
        return {
            f.name: Pipeline(f, settings, self.codec, policy.of(f.name), breakers=()) for f in flows
        }, llm

    # ----- the loop

    async def run(self) -> Report:
        """Replay the range; the position is saved on the way and at the end, even when
        interrupted (Ctrl-C), so ``resume=True`` goes on from there."""
        began = time.monotonic()
        partitions = await self._partitions()
        consumer = self._consumer()
        fetcher = self._consumer()
        await consumer.start()
        await fetcher.start()
        await asyncio.sleep(0)  # aiokafka#647: stop() before a first turn raises CancelledError
        pipelines: dict[str, Pipeline] = {}
        llm = None
        try:
            state = await self._state(consumer, partitions)
            # The candidate is built before the position is written: a typo in it (an unknown
            # prompt version) must not leave a state file that refuses the corrected re-run.
            pipelines, llm = self._pipelines()
            if not self.resume:
                state.save(self.state_path)
            self._on_signals()  # after the local model's server, which sets its own
            await self.sink.start()
            try:
                await self._loop(consumer, fetcher, pipelines, state)
            except asyncio.CancelledError:
                if not self.report.interrupted:
                    raise
            finally:
                await self.sink.flush()
                state.save(self.state_path)
                await self.sink.close()
            self.report.finished = state.remaining == 0
        finally:
            self._on_signals(remove=True)
            await consumer.stop()
            await fetcher.stop()
            if llm is not None:
                await llm.close()
            self.report.seconds = time.monotonic() - began
        return self.report

    def _on_signals(self, *, remove: bool = False) -> None:
        """Ctrl-C or SIGTERM stops the replay the way the end of its range does: rows flushed,
        position saved. (llama.cpp's server, started in-process for the local model, installs a
        SIGINT handler of its own that would otherwise swallow Ctrl-C.)"""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        for sig in (signal.SIGINT, signal.SIGTERM):
            if remove:
                loop.remove_signal_handler(sig)
            elif task is not None:
                loop.add_signal_handler(sig, self._interrupt, task)

    def _interrupt(self, task: asyncio.Task[Any]) -> None:
        self.report.interrupted = True
        task.cancel()

    async def _partitions(self) -> list[TopicPartition]:
        tps = await partitions(self.settings, [self.topic])
        if self.span.partitions:
            unknown = set(self.span.partitions) - {tp.partition for tp in tps}
            if unknown:
                raise ConfigError(f"{self.topic} has no partition {sorted(unknown)}")
            tps = [tp for tp in tps if tp.partition in self.span.partitions]
        return tps

    def _consumer(self) -> AIOKafkaConsumer:
        # No group: nothing is committed and no live group is joined or rebalanced.
        return AIOKafkaConsumer(
            bootstrap_servers=self.settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            fetch_max_bytes=max(52_428_800, self.settings.max_message_bytes),
            max_partition_fetch_bytes=self.settings.max_message_bytes,
        )

    async def _loop(
        self,
        consumer: AIOKafkaConsumer,
        fetcher: AIOKafkaConsumer,
        pipelines: dict[str, Pipeline],
        state: State,
    ) -> None:
        todo = {
            TopicPartition(self.topic, p): (state.next[p], end)
            for p, (_, end) in state.spans.items()
            if state.next[p] < end
        }
        if not todo:
            return
        consumer.assign(list(todo))
        for tp, (at, _) in todo.items():
            consumer.seek(tp, at)
        window: AckWindow[int, int] = AckWindow()
        gate = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        fetch_lock = asyncio.Lock()
        budget = self.span.limit
        bar = _Progress(self.progress, state.remaining, str(self.sink))

        async def one(message: Any, ticket: Any) -> None:
            try:
                row = await self._one(message, fetcher, fetch_lock, pipelines)
                if row is not None:
                    await self.sink.write(row)
                    self.report.rows += 1
                    state.rows += 1
                    self.report.lanes[row["lane"]] = self.report.lanes.get(row["lane"], 0) + 1
            except Exception as exc:  # Kafka or the sink failed: not done, so a resume retries
                self.report.failed += 1
                log.error("replay.failed", topic=message.topic, partition=message.partition,
                          offset=message.offset, error=f"{type(exc).__name__}: {exc}")  # fmt: skip
                return
            finally:
                gate.release()
                bar.advance()
            for offset in window.finish(ticket):
                state.next[message.partition] = offset + 1

        async def saver() -> None:
            # The positions first, then the flush: every row they cover was written before the
            # snapshot, so the flush makes it durable before the file can say it is done.
            while True:
                await asyncio.sleep(self.save_every_s)
                upto = dict(state.next)
                await self.sink.flush()
                state.save(self.state_path, upto)

        reached: set[TopicPartition] = set()
        saving = asyncio.create_task(saver())
        try:
            open_parts = set(todo)
            while open_parts and (budget is None or budget > 0):
                batches = await consumer.getmany(*open_parts, timeout_ms=500)
                for tp, messages in batches.items():
                    end = todo[tp][1]
                    for m in messages:
                        if m.offset >= end or (budget is not None and budget <= 0):
                            break
                        await gate.acquire()
                        ticket = window.add(tp.partition, m.offset)
                        task = asyncio.create_task(one(m, ticket))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
                        if budget is not None:
                            budget -= 1
                if budget is not None and budget <= 0:
                    break  # fetched records past the limit are not done: positions stay
                for tp in list(open_parts):
                    if await consumer.position(tp) >= todo[tp][1]:
                        open_parts.discard(tp)
                        reached.add(tp)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            saving.cancel()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(saving, *tasks, return_exceptions=True)
            bar.close()
        # A partition read to its end with nothing left in flight is done up to the end, offsets
        # that held no record (transaction markers, compacted records) included.
        for tp in reached:
            if window.in_flight(tp.partition) == 0:
                state.next[tp.partition] = max(state.next[tp.partition], todo[tp][1])

    async def _one(
        self,
        message: Any,
        fetcher: AIOKafkaConsumer,
        lock: asyncio.Lock,
        pipelines: dict[str, Pipeline],
    ) -> dict[str, Any] | None:
        """The replay row of one record of the replayed topic; None when it leads to no input
        event of a replayed flow (counted in :attr:`Report.skipped`)."""
        async with lock:  # one fetch consumer, one seek at a time
            found = await self._input(message, fetcher)
        if isinstance(found, str):
            self.report.skipped[found] = self.report.skipped.get(found, 0) + 1
            return None
        flow, meta = found
        pipeline = pipelines.get(flow)
        if pipeline is None:
            self.report.skipped["other_flow"] = self.report.skipped.get("other_flow", 0) + 1
            return None
        started = time.monotonic()
        outcome = await pipeline.handle(meta)
        elapsed_ms = int((time.monotonic() - started) * 1000)
        return self._row(pipeline, meta, outcome, elapsed_ms, message)

    async def _input(self, message: Any, fetcher: AIOKafkaConsumer) -> tuple[str, Meta] | str:
        """The flow and the original input event a record of the replayed topic stands for."""
        role, flow = self.kind.role, self.kind.flow
        if role == "received":
            assert flow is not None
            return flow, _meta(message)
        headers = dict(message.headers or ())
        if headers.get("sluice.copy"):
            return "copy"  # an audit or held copy: the event's own result is on the auto lane
        try:
            record = self.codec.decode(message.value or b"")
        except Exception:
            return "unreadable"
        if isinstance(record, DeadLetter):
            if record.original_value is not None and not record.original_truncated:
                s = record.source
                return record.flow, Meta(
                    s.topic, s.partition, s.offset, record.original_timestamp,
                    record.original_key, record.original_value,
                )  # fmt: skip
            source: Source | None = record.source
            flow = record.flow
        elif isinstance(record, ReviewDecision):
            source = await self._decided_source(record, fetcher)
        else:
            source = getattr(record, "source", None)
        if source is None or flow is None:
            return "source_gone"
        original = await read_at(fetcher, source.topic, source.partition, source.offset)
        return (flow, _meta(original)) if original is not None else "source_gone"

    async def _decided_source(
        self, decision: ReviewDecision, fetcher: AIOKafkaConsumer
    ) -> Source | None:
        if decision.record is not None:
            return getattr(self.codec.decode(decision.record), "source", None)
        if decision.item is None:
            return None
        item = decision.item  # a rejection: the review record it decided names the input
        found = await read_at(fetcher, item.topic, item.partition, item.offset)
        if found is None:
            return None
        return getattr(self.codec.decode(found.value or b""), "source", None)

    def _row(
        self, pipeline: Pipeline, meta: Meta, outcome: Any, elapsed_ms: int, message: Any
    ) -> dict[str, Any]:
        record = self.codec.decode(outcome.value)
        agent = pipeline.agent
        candidate = {
            "model": pipeline_model(pipeline),
            "prompt_version": getattr(agent, "prompt_version", None),
            "base_url": self.candidate.base_url or self.settings.openai_base_url,
        }
        row: dict[str, Any] = {
            "format": ROW_FORMAT,
            "event_id": outcome.event_id,
            "flow": pipeline.flow,
            "source": {
                "topic": meta.topic,
                "partition": meta.partition,
                "offset": meta.offset,
                "timestamp_ms": int(meta.timestamp.timestamp() * 1000) if meta.timestamp else None,
            },
            "replayed_from": {
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
            "candidate": candidate,
            "lane": outcome.lane,
            "reason": outcome.reason,
            "record": None,
            "deadletter": None,
            "confidence": None,
            "confidence_detail": None,
            "usage": _usage(outcome.usage),
            "elapsed_ms": elapsed_ms,
            "replayed_at": datetime.now(UTC).isoformat(),
        }
        if isinstance(record, DeadLetter):
            row["deadletter"] = {"reason": record.reason, "message": record.error_message}
            return row
        dumped = record.model_dump(mode="json")
        row["record"] = dumped
        row["confidence"] = dumped.get("confidence")
        row["confidence_detail"] = dumped.get("confidence_detail")
        agent_info = dumped.get("agent") or {}
        candidate["model"] = agent_info.get("model") or candidate["model"]
        candidate["prompt_version"] = (
            agent_info.get("prompt_version") or candidate["prompt_version"]
        )
        return row


def pipeline_model(pipeline: Pipeline) -> str | None:
    """The model the pipeline's agent calls, when it says (the built-in agents do)."""
    llm = getattr(pipeline.agent, "llm", None)
    return getattr(llm, "model", None)


def _meta(message: Any) -> Meta:
    stamp = message.timestamp
    return Meta(
        message.topic,
        message.partition,
        message.offset,
        datetime.fromtimestamp(stamp / 1000, UTC) if stamp and stamp > 0 else None,
        message.key,
        message.value,
        tuple(message.headers or ()),
    )


class _Progress:
    """A rich progress bar on a terminal; nothing otherwise (logs and CI stay clean)."""

    def __init__(self, enabled: bool, total: int, target: str) -> None:
        self._bar: Any = None
        if not (enabled and sys.stderr.isatty()):
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("replay → {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(target, total=total)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
