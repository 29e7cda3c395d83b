"""Flows: the public unit of Sluice. A flow is input topic → decoder → agent → record → lanes.

A :class:`Flow` says what one job needs: the pydantic model its input events are decoded into,
the :class:`~agents.base.Agent` that does the job, and the builder that turns the agent's result
into the Avro record written to a lane. Everything else is shared and done once for every flow:
guarded decoding with limits, routing by confidence, the record's envelope (event id, agent,
route, usage, source, timestamps), dead letters, many events in flight, acks.

A :class:`FlowSpec` names a flow and how to build it, so a worker can choose which flows to run
(``sluice worker --flow tickets``) and topic names are known without building any agent. Topics
derive from the name (``<flow>.received|auto|review|reviewed``), each overridable in the spec or
by ``SLUICE_TOPIC_OVERRIDES``. :func:`register_flow` adds a spec (and its record type, to the
Avro catalogue); that is the one registration a new agent needs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, TypedDict, TypeVar

from pydantic import BaseModel

from agents.base import Agent, AgentResult
from agents.tools import Action
from agents.tools import Source as DecisionSource
from schemas import catalogue
from schemas.errors import ConfigError
from schemas.records import AgentInfo, Confidence, Route, Source, Usage
from streams.router import Decision, route

if TYPE_CHECKING:
    from agents.llm import LLMClient
    from streams.settings import Settings

EventT = TypeVar("EventT", bound=BaseModel)
OutT = TypeVar("OutT")

Role = Literal["received", "auto", "review", "reviewed"]
ROLES: tuple[Role, ...] = ("received", "auto", "review", "reviewed")


class Envelope(TypedDict):
    """The fields every result record shares, built once by the pipeline for every flow.

    A record builder passes them on: ``MyRecord(**envelope, my_field=...)``.
    """

    event_id: str
    confidence: float
    agent: AgentInfo
    route: Route
    usage: Usage
    source: Source
    received_at: datetime
    processed_at: datetime
    confidence_detail: Confidence


RecordBuilder = Callable[[EventT, AgentResult[OutT], Envelope], BaseModel]
"""(decoded event, agent result, shared envelope) → the Avro record for the lane."""
Router = Callable[[AgentResult[Any], float], Decision]
"""(agent result, auto threshold) → lane and reason."""
UnansweredBuilder = Callable[[EventT, Envelope], BaseModel]
"""(decoded event, envelope with confidence 0) → the record a person completes in review."""


def route_by_confidence(result: AgentResult[Any], threshold: float) -> Decision:
    """The default router: auto only at or above the threshold with no issues and no
    ``requires_human``; anything doubtful goes to a person."""
    return route(
        result.confidence.score,
        threshold,
        requires_human=result.requires_human,
        issues=result.issues,
    )


@dataclass(frozen=True)
class Flow(Generic[EventT, OutT]):
    """One job on the stream: decode ``event`` → run ``agent`` → build ``record`` → route."""

    name: str
    event: type[EventT]
    """The pydantic model input values are decoded into (JSON, with Sluice's limits)."""
    agent: Agent[EventT, OutT]
    record: RecordBuilder[EventT, OutT]
    router: Router = route_by_confidence
    unanswered: UnansweredBuilder[EventT] | None = None
    """The record for the review lane when the model could not be asked (a circuit breaker is
    open and the flow's policy says ``breaker_fallback = "review"``): the event's own fields and
    neutral placeholders a reviewer corrects. None: such events are dead-lettered."""
    endpoint: str | None = None
    """The LLM endpoint the agent calls (base URL), for the per-endpoint breaker; None: the one
    the settings configure."""


@dataclass(frozen=True)
class Runtime:
    """What flow factories may use: the settings and the shared clients built from them."""

    settings: Settings
    llm: LLMClient


@dataclass(frozen=True)
class FlowSpec:
    """A named flow and how to build it; registered with :func:`register_flow`."""

    name: str
    build: Callable[[Runtime], Flow[Any, Any]]
    record_model: type[BaseModel] | None = None
    """The Avro record type the flow writes; registered in :mod:`schemas.catalogue`."""
    record_avsc: Path | None = None
    """Its ``.avsc`` (needed when the record type is not already in the catalogue)."""
    topics: Mapping[str, str] = field(default_factory=dict)
    """Topic name per role where it is not ``<name>.<role>``."""
    actions: Callable[[Any, DecisionSource], list[Action]] | None = None
    """The actions one of the flow's result records asks for (``sluice executor`` runs them
    through the allowlist, the policy and the idempotency store); None: a flow with no effects."""
    amount: Callable[[Any], Decimal | None] | None = None
    """The money one result record moves (an invoice's total), or None when it moves none. The
    platform routes a result above ``SLUICE_REVIEW_AMOUNT`` to review, and a reviewer's decision
    above the flow's four-eyes amount needs a second reviewer."""
    rules: Callable[[Any], list[str]] | None = None
    """The flow's business rules over a result record (lines sum to the subtotal, ISO 4217, ...):
    the problems found, empty when it passes. Run on every reviewer edit and approval, so a person
    cannot post what the model could not."""

    def topic(self, role: Role) -> str:
        """This flow's base topic name for ``role`` (before suffix and env overrides)."""
        return self.topics.get(role, f"{self.name}.{role}")


_REGISTRY: dict[str, FlowSpec] = {}
#: Record types register_flow put in the catalogue, by flow: unregister_flow takes them out.
_ADDED_RECORDS: dict[str, type[BaseModel]] = {}


def register_flow(spec: FlowSpec) -> FlowSpec:
    """Make ``spec`` known to workers and topic creation, and its record type to the codec.

    Registering the same name again replaces the spec (a reloaded module).
    """
    if not spec.name or not spec.name.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"flow name {spec.name!r}: use letters, digits, '-' and '_'")
    if spec.record_model is not None and spec.record_model not in catalogue.models():
        if spec.record_avsc is None:
            raise ConfigError(f"flow {spec.name}: record_avsc is needed for a new record type")
        catalogue.register(spec.record_model, spec.record_avsc)
        _ADDED_RECORDS[spec.name] = spec.record_model
    _REGISTRY[spec.name] = spec
    return spec


def unregister_flow(name: str) -> None:
    """Forget a flow, and the record type its registration added to the catalogue (tests)."""
    _REGISTRY.pop(name, None)
    model = _ADDED_RECORDS.pop(name, None)
    if model is not None:
        catalogue.unregister(model)


def registered() -> list[FlowSpec]:
    """Every registered flow, the built-in ones first."""
    import streams.builtin  # noqa: F401  (registers the built-in flows)

    return list(_REGISTRY.values())


def select(names: list[str] | None) -> list[FlowSpec]:
    """The specs a worker should run: every registered one, or those named.

    A name may also be ``package.module:attribute`` naming a :class:`FlowSpec`, which is
    imported and registered: how a user's flow runs with the stock ``sluice worker``.
    """
    known = {s.name: s for s in registered()}
    if not names:
        return list(known.values())
    chosen = []
    for name in names:
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                spec = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise ConfigError(f"--flow {name}: {exc}") from exc
            if not isinstance(spec, FlowSpec):
                raise ConfigError(f"--flow {name}: not a FlowSpec")
            chosen.append(register_flow(spec))
        elif name in known:
            chosen.append(known[name])
        else:
            raise ConfigError(f"unknown flow {name!r}; registered: {', '.join(sorted(known))}")
    return chosen
