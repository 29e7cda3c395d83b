"""The one linear core per event: decode → agent → validate → encode → route.

``handle`` never raises (except cancellation): at the stream edge every error becomes data, an
:class:`Outcome` routed to the dead-letter lane with its reason. That is what lets the worker ack
each message only once it is accounted for, and keep running after poison input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog
from pydantic import BaseModel
from redis.exceptions import RedisError

from agents.confidence import self_rated_only
from agents.llm import RETRY_GATE
from agents.observe import DeadLettered, current_scope, notify, timed
from schemas.codec import Codec
from schemas.errors import BreakerOpen, SluiceError
from schemas.events import parse_event, peek_event_id
from schemas.jsonlimits import Limits
from schemas.records import AgentInfo, Confidence, Route, Source, Usage
from streams import deadletter
from streams.breaker import Breaker
from streams.flow import Envelope, Flow
from streams.meta import Meta
from streams.outcome import Outcome
from streams.policy import (
    FlowPolicy,
    add_caution,
    amount_cautions,
    apply_policy,
    audit_sampled,
    held_actions,
)
from streams.router import Decision
from streams.settings import Settings

log = structlog.get_logger(__name__)


class Pipeline:
    """One flow's per-event core: parse, run the agent, route, build the record — or
    dead-letter. The same for every flow; what differs lives in the :class:`Flow`."""

    def __init__(
        self,
        flow: Flow[Any, Any],
        settings: Settings,
        codec: Codec | None = None,
        policy: FlowPolicy | None = None,
        breakers: Sequence[Breaker] = (),
    ) -> None:
        self.flow = flow.name
        self.spec = flow
        self.agent = flow.agent
        self.codec = codec or Codec()
        self.policy = policy or FlowPolicy(threshold=settings.auto_threshold)
        self.threshold = self.policy.threshold
        self.breakers = tuple(breakers)
        """The flow's breaker and its LLM endpoint's: a call needs a permit from each."""
        self.trip = settings.breaker == "on"
        self.topics = settings.topics
        self.max_message_bytes = settings.max_message_bytes
        self.limits = Limits(max_bytes=settings.max_message_bytes)
        self.review_amount = settings.review_amount
        self.amount = _amount_of(flow.name)

    def lane_topic(self, lane: str) -> str:
        """The topic of this flow's ``auto`` or ``review`` lane."""
        return self.topics.of(self.flow, "auto" if lane == "auto" else "review")

    async def result(self, meta: Meta, event_id: str) -> tuple[BaseModel, Decision]:
        """The result record of one event and its routing decision; raises on any failure."""
        with timed("parse"):
            event = parse_event(meta.value, self.spec.event, self.limits)
        try:
            with timed("agent"):
                result = await self.run_agent(event)
        except BreakerOpen as exc:
            if self.policy.breaker_fallback != "review" or self.spec.unanswered is None:
                raise
            return self.unanswered(meta, event_id, event, exc)
        with timed("route"):
            return self._routed(meta, event_id, event, result)

    def _routed(
        self, meta: Meta, event_id: str, event: BaseModel, result: Any
    ) -> tuple[BaseModel, Decision]:
        proposed = self.spec.router(result, self.threshold)
        scope = current_scope()
        if scope is not None:
            scope.confidence, scope.threshold = result.confidence, self.threshold
        agent = AgentInfo(
            name=self.agent.name,
            version=self.agent.version,
            model=result.model,
            prompt_version=result.prompt_version,
        )
        envelope = self.envelope(meta, event_id, proposed, agent, result.usage, result.confidence)
        record = self.spec.record(event, result, envelope)
        # The policy judges the built record (amounts, fields) and the event (customer plan),
        # and can only send a result to review, never out of it.
        decision = apply_policy(proposed, self.policy, record, event)
        decision = add_caution(decision, self.cautions(result, record, decision))
        if decision != proposed and "route" in type(record).model_fields:
            route = Route(lane=decision.lane, reason=decision.reason, threshold=self.threshold)
            record = record.model_copy(update={"route": route})
        return record, decision

    def cautions(self, result: Any, record: BaseModel, decision: Decision) -> list[str]:
        """The platform's own reasons for review, which no router or policy file can drop: money
        above ``SLUICE_REVIEW_AMOUNT`` or going back (the flow's ``FlowSpec.amount``), and an
        auto decision that rests on the model's self-rating alone."""
        reasons = amount_cautions(self.amount(record), self.review_amount)
        confidence = result.confidence
        if decision.lane == "auto" and self_rated_only(confidence):
            reasons.append(
                f"confidence {confidence.score:.3f} is the model's self-rating alone (no logprobs, "
                "no calibration): a person decides"
            )
        return reasons

    def envelope(
        self, meta: Meta, event_id: str, decision: Decision, agent: AgentInfo, usage: Usage,
        confidence: Confidence,
    ) -> Envelope:  # fmt: skip
        """The fields every result record of this flow shares."""
        return Envelope(
            event_id=event_id,
            confidence=confidence.score,
            agent=agent,
            route=Route(lane=decision.lane, reason=decision.reason, threshold=self.threshold),
            usage=usage,
            source=Source(topic=meta.topic, partition=meta.partition, offset=meta.offset),
            received_at=meta.timestamp or datetime.now(UTC),
            processed_at=datetime.now(UTC),
            confidence_detail=confidence,
        )

    def unanswered(
        self, meta: Meta, event_id: str, event: BaseModel, error: BreakerOpen
    ) -> tuple[BaseModel, Decision]:
        """The human fallback while the breaker is open: the flow's ``unanswered`` record (no
        model answer, confidence 0) for the review lane, so a person decides instead."""
        assert self.spec.unanswered is not None
        decision = Decision("review", f"{error}: the model was not called, a person decides")
        agent = AgentInfo(name=self.agent.name, version=self.agent.version, model="none",
                          prompt_version="none")  # fmt: skip
        usage = Usage(attempts=0, prompt_tokens=0, completion_tokens=0, latency_ms=0)
        confidence = Confidence(
            score=0.0, self_rated=0.0, logprob=None, validation=0.0, method="breaker_open"
        )
        envelope = self.envelope(meta, event_id, decision, agent, usage, confidence)
        return self.spec.unanswered(event, envelope), decision

    async def run_agent(self, event: BaseModel) -> Any:
        """The agent's answer, through the circuit breakers of the flow and of its LLM endpoint:
        while either is open the model is not called (:class:`BreakerOpen`), a retry stops once
        one opens (:data:`~agents.llm.RETRY_GATE`), and each run's outcome is counted by both.
        Poison input never gets here, so it never counts."""
        for breaker in self.breakers:
            permitted, state = await breaker.acquire()
            if not permitted:
                raise BreakerOpen(f"the circuit breaker {breaker.name} is {state}")
        began = time.monotonic()
        gate = RETRY_GATE.set(self._retry_gate if self.breakers else None)
        try:
            result = await self.agent.run(event)
        except BreakerOpen as exc:  # the gate stopped its retries: what it called failed
            if exc.usage is not None and exc.usage.attempts:
                await self._record(failed=True, began=began)
            raise
        except SluiceError as exc:
            await self._record(failed=exc.breaker_counts, began=began)
            raise
        finally:
            RETRY_GATE.reset(gate)
        await self._record(failed=False, began=began)
        return result

    async def _retry_gate(self, usage: Usage) -> None:
        """Raise :class:`BreakerOpen` unless every breaker is closed (or disabled): a breaker
        opened since this event was admitted, or it is half-open, where only the permitted trial
        calls go out and a retry is not one of them. Redis down: carry on, as the breaker does."""
        for breaker in self.breakers:
            try:
                state = await breaker.state()
            except RedisError:
                continue
            if state not in ("closed", "disabled"):
                raise BreakerOpen(
                    f"the circuit breaker {breaker.name} is {state}: this event's call is not "
                    "retried",
                    usage=usage,
                )

    async def _record(self, *, failed: bool, began: float) -> None:
        if self.trip:
            seconds = time.monotonic() - began
            for breaker in self.breakers:
                await breaker.record(failed=failed, seconds=seconds)

    def review_copy(
        self, record: BaseModel, decision: Decision, event_id: str
    ) -> tuple[BaseModel, tuple[str, BaseModel] | None]:
        """For an auto result: the record for the auto lane, and a review copy if the policy
        holds some of its actions (``held``: the auto record keeps only the confident ones) or
        samples it for audit (``audit``). The copy's ``route.lane`` stays ``auto``."""
        if decision.lane != "auto" or "route" not in type(record).model_fields:
            return record, None
        policy = self.policy
        held = held_actions(record, policy.action_threshold)
        audit = audit_sampled(event_id, policy.audit_rate)
        if not held and not audit:
            return record, None
        reasons = []
        actions = list(getattr(record, "actions", None) or [])
        if held:
            listed = ", ".join(
                f"actions[{i}] {actions[i].action} {actions[i].confidence:.2f}" for i in held
            )
            reasons.append(f"actions held for a person (< {policy.action_threshold:.2f}): {listed}")
        if audit:
            reasons.append(f"audit sample ({policy.audit_rate:g} of auto)")
        reason = "; ".join(reasons) + f"; routed auto: {decision.reason}"
        route = Route(lane="auto", reason=reason[:1000], threshold=self.threshold)
        copy = record.model_copy(update={"route": route})
        if held:
            kept = [a for i, a in enumerate(actions) if i not in held]
            record = record.model_copy(update={"actions": kept})
        return record, ("held" if held else "audit", copy)

    async def handle(self, meta: Meta) -> Outcome:
        """The one outcome of ``meta``. Never raises, except ``CancelledError``.

        Every step from raw bytes on is inside the guard, the event-id peek included: an
        exception that escaped here would be acknowledged by faust and the event lost. A
        ``RecursionError``, ``MemoryError`` or a bug of ours becomes a dead letter like any
        other failure (``internal_error`` for exceptions that are not ours).
        """
        event_id = meta.derived_event_id()
        usage: Usage | None = None
        try:
            event_id = peek_event_id(meta.value, self.limits) or event_id
            structlog.contextvars.bind_contextvars(event_id=event_id)
            record, decision = await self.result(meta, event_id)
            usage = getattr(record, "usage", None)
            record, copy = self.review_copy(record, decision, event_id)
            outcome = Outcome.build(
                decision.lane,
                self.lane_topic(decision.lane),
                meta,
                self.codec.encode(record),
                event_id,
                decision.reason,
                usage=usage,
            )
            if copy is None:
                return outcome
            kind, held = copy
            review = Outcome.build(
                "auto",  # where the event ended: the copy only asks a person to look
                self.lane_topic("review"),
                meta,
                self.codec.encode(held),
                event_id,
                held.route.reason,  # type: ignore[attr-defined]
                extra_headers=[("sluice.copy", kind.encode())],
            )
            return replace(outcome, copies=(review,))
        except Exception as exc:  # errors become data; CancelledError is BaseException and passes
            return self.dead_letter(exc, meta, event_id, usage)

    def dead_letter(
        self, error: BaseException, meta: Meta, event_id: str, usage: Usage | None = None
    ) -> Outcome:
        """The dead-letter outcome of ``error``; if even that cannot be built, the minimal one."""
        try:
            dl = deadletter.dead_letter(
                error,
                meta,
                event_id=event_id,
                flow=self.flow,
                max_message_bytes=self.max_message_bytes,
                usage=usage,
            )
            value = self.codec.encode(dl)
        except Exception as bug:
            log.critical("deadletter.build_failed", event_id=event_id, exc_info=True)
            dl = deadletter.minimal(
                meta,
                event_id=event_id,
                flow=self.flow,
                reason="internal_error",
                message=f"building the dead letter failed: {type(bug).__name__}",
                error_class=f"{type(error).__module__}.{type(error).__qualname__}",
                usage=usage,
            )
            value = self.codec.encode(dl)
        notify(DeadLettered(self.flow, dl.event_id, dl.reason, dl.error_message))
        return Outcome.build(
            "deadletter",
            self.topics.deadletter,
            meta,
            value,
            dl.event_id,
            f"{dl.reason}: {dl.error_message}",
            extra_headers=deadletter.headers(dl),
            usage=dl.usage,
        )


def _amount_of(flow: str) -> Callable[[BaseModel], Decimal | None]:
    """The money a result record of ``flow`` moves, from its registered spec's ``amount``; a
    record that is not the spec's record type (or a flow without ``amount``) moves none."""
    from streams.flow import registered

    spec = next((s for s in registered() if s.name == flow), None)
    amount = spec.amount if spec is not None else None
    model = spec.record_model if spec is not None else None

    def of(record: BaseModel) -> Decimal | None:
        if amount is None or (model is not None and not isinstance(record, model)):
            return None
        return amount(record)

    return of
