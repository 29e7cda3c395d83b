"""Prometheus metrics: every fact counted, and the gauges an operator watches.

The counters are fed by :class:`MetricsObserver` from the same facts the log lines come from
(:mod:`agents.observe`), so a dashboard and the logs never disagree about what happened. Gauges
that describe *state* (in-flight events, breaker state, review queue) are read at scrape time
from the objects that hold it (:func:`track_in_flight`, :func:`track_breakers`,
:func:`track_review`), never copied on every event.

Names follow Prometheus conventions: ``sluice_`` prefix, ``_total`` counters, base units
(seconds, tokens, US dollars). Label values are bounded: flows, lanes, models, reasons and tools
are few; event ids never become labels. Served at ``/metrics`` by :mod:`streams.serve`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

from agents.observe import (
    BreakerTransition,
    DeadLettered,
    EventSummary,
    Fact,
    LLMCall,
    LLMRetry,
    ReviewDecided,
    ToolCall,
    ValidationFailed,
)

# A ``_created`` series per counter doubles what is scraped and says little here.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Seconds: from a fast hosted call (~100 ms) to a slow local one on two cores (minutes).
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

EVENTS = Counter(
    "sluice_events", "Events by the lane they ended in, per stage and flow.",
    ["stage", "flow", "lane"],
)  # fmt: skip
EVENT_SECONDS = Histogram(
    "sluice_event_duration_seconds",
    "Taking an event to its outcome acknowledged by the broker, per stage and flow.",
    ["stage", "flow"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
END_TO_END_SECONDS = Histogram(
    "sluice_event_end_to_end_seconds",
    "From the input record's timestamp (producer clock) to the outcome written.",
    ["stage", "flow", "lane"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
STAGE_SECONDS = Histogram(
    "sluice_stage_duration_seconds",
    "Time an event spent in one step (parse, agent, route, emit, effects).",
    ["stage", "flow", "step"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
LLM_CALLS = Counter(
    "sluice_llm_calls", "LLM requests by model and outcome (failed ones included).",
    ["model", "outcome"],
)  # fmt: skip
LLM_SECONDS = Histogram(
    "sluice_llm_call_duration_seconds", "One LLM request, answered or not.",
    ["model", "outcome"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
LLM_TOKENS = Counter(
    "sluice_llm_tokens", "Tokens the provider reported, by model and kind (prompt, completion).",
    ["model", "kind"],
)  # fmt: skip
LLM_COST = Counter(
    "sluice_llm_cost_usd", "What the calls cost at the configured prices (models with a price).",
    ["model"],
)  # fmt: skip
LLM_RETRIES = Counter(
    "sluice_llm_retries", "Transient failures retried, by model and reason.", ["model", "reason"]
)
LLM_REASKS = Counter(
    "sluice_llm_reasks", "Invalid answers re-asked, by model and what was wrong.",
    ["model", "outcome"],
)  # fmt: skip
VALIDATION_FAILURES = Counter(
    "sluice_validation_failures", "Answers that failed validation, re-asked or not.",
    ["model", "outcome"],
)  # fmt: skip
DEADLETTERS = Counter(
    "sluice_deadletters", "Dead letters by stage, flow and reason.", ["stage", "flow", "reason"]
)
EFFECTS = Counter(
    "sluice_effects", "Tool effects by tool and ToolEffect status.", ["tool", "status"]
)
EFFECT_SECONDS = Histogram(
    "sluice_effect_duration_seconds", "One action: claim, effect, completion.",
    ["tool", "status"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
BREAKER_TRANSITIONS = Counter(
    "sluice_breaker_transitions", "Circuit-breaker transitions made by this process.",
    ["breaker", "before", "after"],
)  # fmt: skip
REVIEW_DECISIONS = Counter(
    "sluice_review_decisions", "Review decisions by flow and verdict.", ["flow", "verdict"]
)
REVIEW_SECONDS = Histogram(
    "sluice_review_decision_seconds", "From the result's arrival on the review lane to a decision.",
    ["flow"], buckets=(10, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600),
)  # fmt: skip


_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: ``labels`` takes a lock and builds a key on
    every call, and a worker counts ten or more samples per event."""
    key = (id(metric), labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


class MetricsObserver:
    """Counts every fact in the metrics above."""

    def observe(self, fact: Fact) -> None:
        """Count ``fact``."""
        if isinstance(fact, LLMCall):
            _child(LLM_CALLS, fact.model, fact.outcome).inc()
            _child(LLM_SECONDS, fact.model, fact.outcome).observe(fact.latency_ms / 1000)
            if fact.prompt_tokens:
                _child(LLM_TOKENS, fact.model, "prompt").inc(fact.prompt_tokens)
            if fact.completion_tokens:
                _child(LLM_TOKENS, fact.model, "completion").inc(fact.completion_tokens)
            if fact.cost_usd:
                _child(LLM_COST, fact.model).inc(float(fact.cost_usd))
        elif isinstance(fact, EventSummary):
            _child(EVENTS, fact.stage, fact.flow, fact.lane).inc()
            _child(EVENT_SECONDS, fact.stage, fact.flow).observe(fact.duration_ms / 1000)
            if fact.end_to_end_ms is not None:
                _child(END_TO_END_SECONDS, fact.stage, fact.flow, fact.lane).observe(
                    fact.end_to_end_ms / 1000
                )
            for step, ms in fact.stages_ms.items():
                _child(STAGE_SECONDS, fact.stage, fact.flow, step).observe(ms / 1000)
        elif isinstance(fact, LLMRetry):
            _child(LLM_RETRIES, fact.model, fact.reason).inc()
        elif isinstance(fact, ValidationFailed):
            _child(VALIDATION_FAILURES, fact.model, fact.outcome).inc()
            if fact.reask:
                _child(LLM_REASKS, fact.model, fact.outcome).inc()
        elif isinstance(fact, DeadLettered):
            _child(DEADLETTERS, fact.stage, fact.flow, fact.reason).inc()
        elif isinstance(fact, ToolCall) and fact.phase != "start":
            status = fact.status or "error"
            _child(EFFECTS, fact.tool, status).inc()
            if fact.latency_ms is not None:
                _child(EFFECT_SECONDS, fact.tool, status).observe(fact.latency_ms / 1000)
        elif isinstance(fact, BreakerTransition):
            _child(BREAKER_TRANSITIONS, fact.breaker, fact.before, fact.after).inc()
        elif isinstance(fact, ReviewDecided):
            _child(REVIEW_DECISIONS, fact.flow, fact.verdict).inc()
            if fact.seconds_to_decision is not None:
                _child(REVIEW_SECONDS, fact.flow).observe(fact.seconds_to_decision)


_in_flight: dict[str, Callable[[], int]] = {}
_breakers: dict[str, Any] = {}
_review: list[Callable[[], dict[str, tuple[int, float | None]]]] = []


def track_in_flight(stage: str, in_flight: Callable[[], int]) -> None:
    """``sluice_in_flight{stage}``: events taken and not yet acknowledged, read at scrape."""
    _in_flight[stage] = in_flight


def track_breakers(breakers: Iterable[Any]) -> None:
    """``sluice_breaker_state{breaker,sluice_breaker_state}``: this process's view of each
    breaker (a state set: the current state is 1), read at scrape without a Redis call."""
    _breakers.update({b.name: b for b in breakers})


def track_review(queue: Callable[[], dict[str, tuple[int, float | None]]]) -> None:
    """``sluice_review_pending{flow}`` and ``sluice_review_oldest_age_seconds{flow}``: the
    review queue per flow (``queue()`` returns ``{flow: (pending, oldest age or None)}``)."""
    _review[:] = [queue]


class _StateCollector(Collector):
    """The gauges read at scrape time from the objects that hold the state."""

    def collect(self) -> Iterator[Any]:
        from streams.breaker import STATES

        in_flight = GaugeMetricFamily(
            "sluice_in_flight", "Events taken and not yet acknowledged.", labels=["stage"]
        )
        for stage, read in sorted(_in_flight.items()):
            in_flight.add_metric([stage], read())
        yield in_flight
        breakers = StateSetMetricFamily(
            "sluice_breaker_state", "Circuit-breaker state as this process sees it.",
            labels=["breaker"],
        )  # fmt: skip
        for name, breaker in sorted(_breakers.items()):
            view = breaker.view
            breakers.add_metric([name], {s: s == view for s in STATES})
        yield breakers
        if _review:
            pending = GaugeMetricFamily(
                "sluice_review_pending", "Review items waiting for a decision.", labels=["flow"]
            )
            oldest = GaugeMetricFamily(
                "sluice_review_oldest_age_seconds", "Age of the oldest undecided review item.",
                labels=["flow"],
            )  # fmt: skip
            for flow, (count, age) in sorted(_review[0]().items()):
                pending.add_metric([flow], count)
                oldest.add_metric([flow], age or 0.0)
            yield pending
            yield oldest


REGISTRY.register(_StateCollector())
OBSERVER = MetricsObserver()
