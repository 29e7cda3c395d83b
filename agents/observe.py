"""The observation seam: the engine, the LLM layer and the executor report *facts*; observers
turn them into log lines, metrics and spans.

Business code never formats a log line about a call, bumps a counter or opens a span: it calls
:func:`notify` with one of the frozen facts below, and every registered :class:`Observer` sees it.
That keeps the names and fields of what is observable in one place (this module), lets a user add
their own observer (a cost tracker, a sampler) without touching the engine, and makes each
observer testable with facts alone.

Three observers ship with Sluice: :class:`LogObserver` (here: one structlog event per fact, with
the stable names listed in the README), ``streams.metrics.MetricsObserver`` (Prometheus) and
``streams.tracing.TraceObserver`` (OpenTelemetry ``gen_ai`` spans). An observer that raises is
logged once and skipped: observation never fails an event.

**Event scope.** Facts about one event (its LLM calls, its stages) are collected in an
:class:`EventScope` set for the duration of the event by the stage that owns it
(:func:`event_scope`), so the per-event summary line can say what the event cost without
threading a ledger through every layer.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any, ClassVar, Literal, Protocol

import structlog

from agents.redact import redact_pii, scrub

log = structlog.get_logger("sluice.observe")

#: How prompt and response text appear in ``llm.call`` lines and spans: ``off`` (never),
#: ``hash`` (sha256 and length: the same prompt is recognisable, its text is not there),
#: ``full`` (the text, secrets scrubbed, and PII redacted when that is on).
ContentMode = Literal["off", "hash", "full"]


class Fact:
    """Something that happened, with the stable name its log line carries."""

    name: ClassVar[str]

    def fields(self) -> dict[str, Any]:
        """The fact as log fields (``None`` values left out)."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))  # type: ignore[arg-type]
        return {k: v for k, v in values if v is not None}


@dataclass(frozen=True)
class LLMCall(Fact):
    """One request to a model, answered or not: what it cost and how it ended."""

    name: ClassVar[str] = "llm.call"
    provider: str
    model: str
    attempt: int
    outcome: str
    """``ok``, ``invalid_json``, ``schema_invalid``, ``business_invalid``, ``truncated``, ...,
    or the transient failure (``timeout``, ``server_error``, ``rate_limited``, ...)."""
    latency_ms: int
    started_at: float
    """Wall-clock start (epoch seconds), so a span can be placed after the fact."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_version: str | None = None
    finish_reason: str | None = None
    cost_usd: Decimal | None = None
    max_tokens: int | None = None
    error: str | None = None
    messages: list[dict[str, str]] | None = field(default=None, repr=False)
    response: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LLMRetry(Fact):
    """A transient failure about to be retried after ``backoff_s``."""

    name: ClassVar[str] = "llm.retry"
    model: str
    attempt: int
    reason: str
    backoff_s: float
    error: str | None = None


@dataclass(frozen=True)
class ValidationFailed(Fact):
    """An answer that failed validation: not JSON, off-schema, or breaking a business rule."""

    name: ClassVar[str] = "validation.failed"
    model: str
    attempt: int
    outcome: str
    problems: list[str]
    reask: bool
    """Whether the model is asked again (False: re-asks spent, or none fits)."""
    blocked: str | None = None
    """Why no re-ask was sent although re-asks were left: ``context`` or ``budget``."""


@dataclass(frozen=True)
class ToolCall(Fact):
    """One action's effect: ``start`` before the claim, then ``success`` or ``failure``."""

    name: ClassVar[str] = "tool.call"
    phase: Literal["start", "success", "failure"]
    tool: str
    event_id: str
    idempotency_key: str | None = None
    status: str | None = None
    """The ToolEffect status: applied, duplicate, failed, unknown, refused."""
    dedup: bool = False
    """True when the key was already done: the effect was not run again."""
    latency_ms: int | None = None
    attempts: int | None = None
    reconciled: bool | None = None
    error: str | None = None

    @property
    def event_name(self) -> str:
        return f"tool.call.{self.phase}"


@dataclass(frozen=True)
class EventRouted(Fact):
    """Where an event ended, why, and the confidence signals behind it."""

    name: ClassVar[str] = "event.routed"
    flow: str
    event_id: str
    lane: str
    reason: str
    confidence: float | None = None
    self_rated: float | None = None
    logprob: float | None = None
    validation: float | None = None
    threshold: float | None = None
    copies: int = 0


@dataclass(frozen=True)
class DeadLettered(Fact):
    """An event (or a record of a later stage) that went to the dead-letter topic."""

    name: ClassVar[str] = "event.deadlettered"
    flow: str
    event_id: str
    reason: str
    error: str
    stage: str = "worker"


@dataclass(frozen=True)
class BreakerTransition(Fact):
    """A circuit breaker changed state (by its window, a probe, or an operator)."""

    name: ClassVar[str] = "breaker.transition"
    breaker: str
    before: str
    after: str
    by: str | None = None


@dataclass(frozen=True)
class ReviewDecided(Fact):
    """A person decided a review item; the decision is on ``<flow>.reviewed``."""

    name: ClassVar[str] = "review.decided"
    flow: str
    event_id: str
    item: str
    verdict: str
    reviewer: str
    changed: list[str]
    seconds_to_decision: float | None = None


@dataclass(frozen=True)
class EventSummary(Fact):
    """One line per event at the end of a stage: where it went and everything it cost."""

    name: ClassVar[str] = "event.summary"
    stage: str
    flow: str
    event_id: str
    lane: str
    reason: str
    duration_ms: int
    """From taking the event to its outcome acknowledged by the broker."""
    end_to_end_ms: int | None = None
    """From the input record's timestamp (the producer's clock) to the outcome written."""
    stages_ms: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal | None = None
    model: str | None = None
    prompt_version: str | None = None
    trace_id: str | None = None
    effects: dict[str, int] | None = None
    """Executor stage: ToolEffect statuses of the event's actions."""


class Observer(Protocol):
    """Anything that wants to see facts. ``observe`` must be cheap and must not block: it runs
    on the event loop, inside the event's own task."""

    def observe(self, fact: Fact) -> None:
        """See one fact."""
        ...


_observers: list[Observer] = []
_failed: set[int] = set()


def add_observer(observer: Observer) -> None:
    """Register ``observer`` for every fact from now on (once: adding it again is a no-op)."""
    if observer not in _observers:
        _observers.append(observer)


def remove_observer(observer: Observer) -> None:
    """Stop sending facts to ``observer``."""
    if observer in _observers:
        _observers.remove(observer)


def observers() -> list[Observer]:
    """The registered observers, in order."""
    return list(_observers)


def notify(fact: Fact) -> None:
    """Give ``fact`` to every observer. Never raises: a failing observer is logged once and
    skipped, because observation must not fail the event it observes."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.see(fact)
    for observer in _observers:
        try:
            observer.observe(fact)
        except Exception:
            if id(observer) not in _failed:
                _failed.add(id(observer))
                log.error("observer.failed", observer=type(observer).__name__, exc_info=True)


@dataclass
class EventScope:
    """What one event did in one stage, collected from the facts reported while it ran."""

    stage: str
    flow: str
    began: float = field(default_factory=time.monotonic)
    stages: dict[str, float] = field(default_factory=dict)
    calls: list[LLMCall] = field(default_factory=list)
    trace_id: str | None = None
    confidence: Any = None
    """The routed result's confidence signals (a ``schemas.records.Confidence``), if any."""
    threshold: float | None = None

    def see(self, fact: Fact) -> None:
        if isinstance(fact, LLMCall):
            self.calls.append(fact)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Add the time spent in the body to ``stage`` (seconds)."""
        began = time.monotonic()
        try:
            yield
        finally:
            self.stages[stage] = self.stages.get(stage, 0.0) + time.monotonic() - began

    def summary(
        self, event_id: str, lane: str, reason: str, *, received_at: float | None = None,
        **extra: Any,
    ) -> EventSummary:  # fmt: skip
        """The event's summary fact, from what was collected."""
        now = time.time()
        costs = [c.cost_usd for c in self.calls if c.cost_usd is not None]
        last = self.calls[-1] if self.calls else None
        return EventSummary(
            stage=self.stage,
            flow=self.flow,
            event_id=event_id,
            lane=lane,
            reason=reason[:300],
            duration_ms=int((time.monotonic() - self.began) * 1000),
            end_to_end_ms=None if received_at is None else max(0, int((now - received_at) * 1000)),
            stages_ms={k: int(v * 1000) for k, v in self.stages.items()},
            llm_calls=len(self.calls),
            prompt_tokens=sum(c.prompt_tokens for c in self.calls),
            completion_tokens=sum(c.completion_tokens for c in self.calls),
            cost_usd=sum(costs, Decimal(0)) if costs and len(costs) == len(self.calls) else None,
            model=last.model if last else None,
            prompt_version=last.prompt_version if last else None,
            trace_id=self.trace_id,
            **extra,
        )


_SCOPE: ContextVar[EventScope | None] = ContextVar("sluice_event_scope", default=None)


@contextlib.contextmanager
def event_scope(stage: str, flow: str, trace_id: str | None = None) -> Iterator[EventScope]:
    """Collect the facts of one event for the body's duration (in this task only)."""
    scope = EventScope(stage=stage, flow=flow, trace_id=trace_id)
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


def current_scope() -> EventScope | None:
    """The running event's scope, if a stage opened one."""
    return _SCOPE.get()


def timed(step: str) -> contextlib.AbstractContextManager[None]:
    """Time the body as ``step`` of the running event (nothing without a scope)."""
    scope = _SCOPE.get()
    return scope.timed(step) if scope is not None else contextlib.nullcontext()


def content(
    messages: list[dict[str, str]] | None, text: str | None, mode: ContentMode, pii: bool
) -> dict[str, Any]:
    """Prompt and response as log fields under ``mode`` (see :data:`ContentMode`)."""
    if mode == "off":
        return {}
    prompt = None
    if messages is not None:
        prompt = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)
    out: dict[str, Any] = {}
    for key, value in (("prompt", prompt), ("response", text)):
        if value is None:
            continue
        if mode == "hash":
            out[f"{key}_sha256"] = hashlib.sha256(value.encode()).hexdigest()
            out[f"{key}_chars"] = len(value)
        else:
            value = scrub(value)
            out[key] = redact_pii(value) if pii else value
    return out


_RANK = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


@dataclass
class LogObserver:
    """Writes each fact as one structlog event named by the fact (README, "Observability").

    Log context bound by the stage (event id, flow, topic, partition, offset, trace id) is merged
    in by structlog. Prompt and response text follow ``content`` and ``pii``.
    """

    content: ContentMode = "hash"
    pii: bool = False
    level: str = "info"
    """The configured log level: a fact below it is not even turned into fields (hashing a
    prompt costs more than the no-op log call it would feed)."""
    _log: Any = field(default_factory=lambda: structlog.get_logger("sluice"))

    def observe(self, fact: Fact) -> None:
        """Log ``fact`` at a level that matches what it says."""
        warns = isinstance(fact, (LLMRetry, ValidationFailed, DeadLettered, BreakerTransition)) or (
            isinstance(fact, ToolCall) and fact.phase == "failure"
        )
        if _RANK[self.level] > _RANK["warning" if warns else "info"]:
            return
        data = fact.fields()
        if isinstance(fact, LLMCall):
            data.pop("messages", None)
            data.pop("response", None)
            data.pop("started_at", None)
            data.update(content(fact.messages, fact.response, self.content, self.pii))
            if fact.cost_usd is not None:
                data["cost_usd"] = str(fact.cost_usd)
            self._log.info(fact.name, **data)
        elif isinstance(fact, ToolCall):
            data.pop("phase")
            level = "warning" if fact.phase == "failure" else "info"
            getattr(self._log, level)(fact.event_name, **data)
        elif isinstance(fact, EventSummary):
            if fact.cost_usd is not None:
                data["cost_usd"] = str(fact.cost_usd)
            self._log.info(fact.name, **data)
        elif isinstance(fact, (LLMRetry, ValidationFailed, DeadLettered, BreakerTransition)):
            self._log.warning(fact.name, **data)
        else:
            self._log.info(fact.name, **data)


#: The default observer: every process logs facts unless it removes this one.
LOGS = LogObserver()
add_observer(LOGS)
