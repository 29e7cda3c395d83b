"""The executor stage: result records in, effects out, each effect exactly once.

``sluice executor`` consumes the auto lane and the reviewed topic of every flow whose
:class:`~streams.flow.FlowSpec` names ``actions``, on the same engine as the worker (many records
in flight, finished-prefix acks), in its own consumer group. From the reviewed topic it takes the
``ReviewDecision`` records that approve or correct a result, and runs the result *as decided* (the
corrected record, never the model's original); a rejection runs nothing. A decision runs only
once :mod:`streams.decisions` has verified it (signed by the review service, by a reviewer in the
reviewers file, about the review-lane record it names); any other record on the reviewed topic,
and a decision on the auto lane, is dead-lettered (``decision_unverified``) and runs nothing.
What the auto lane holds is never taken for a person's decision. For each record:

1. ``spec.actions(record, source)`` lists what the record asks for (a tool name and its input),
   with ``source`` ``"auto"`` or ``"reviewed"`` — the tool policy lets high-risk tools run only
   from a person's decision, and applies its confidence gates only to the auto lane;
2. :meth:`~agents.tools.Toolbox.vet` refuses what the agent's allowlist or the tool's policy does
   not allow — a tool name that came from model output and is not on the list never runs;
3. an action of a tool an operator switched off (``sluice tool off``, :mod:`streams.switches`)
   waits, unacknowledged, until the tool is on again;
4. :func:`~agents.effects.run_effect` runs the rest through the Redis idempotency claim;
5. one ``ToolEffect`` record per action goes to ``effects.applied`` (key: the event id), and only
   then is the input acked.

A redelivered record (a crash before the ack, a rebalance) runs the same actions again and finds
their keys done: ``duplicate``, with the stored result, and no second effect at the sink. So the
*effects* are exactly once; the ToolEffect records are at least once, and a crash between an effect
and its record leaves ``duplicate`` as the first record of that key.

A record the executor cannot read or derive actions from is dead-lettered like poison input; Redis
down is retried, then the process exits before the ack (the record is redelivered).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import faust
import structlog
from aiokafka.errors import KafkaError

from agents.effects import EffectOutcome, run_effect
from agents.idempotency import IdempotencyStore
from agents.observe import DeadLettered, ToolCall, notify
from agents.redact import scrub, scrub_value
from agents.tools import Action, Refused, Toolbox, canonical, digest
from agents.tools import Source as DecisionSource
from schemas.codec import Codec
from schemas.errors import IdempotencyConflict, StoreUnavailable, UnverifiedDecision
from schemas.records import ReviewDecision, ToolEffect
from streams import deadletter, metrics, tracing
from streams.app import faust_app, meta_of, new_engine, observing, sender
from streams.decisions import DecisionCheck, DecisionKeys, LaneRecords, load_keys
from streams.emit import Emitter, Strikes, die
from streams.flow import FlowSpec
from streams.meta import Meta
from streams.outcome import Outcome
from streams.review.auth import ReviewerBook
from streams.settings import Settings
from streams.switches import ToolSwitches

log = structlog.get_logger(__name__)

STORE_RETRIES = 5
"""Attempts to reach Redis for one action (backoff 0.5, 1, 2, 4 s) before the process exits."""


class Executor:
    """Turns one flow's result records into vetted, exactly-once effects and ToolEffect records."""

    def __init__(
        self, spec: FlowSpec, settings: Settings, codec: Codec, toolbox: Toolbox,
        store: IdempotencyStore, switches: ToolSwitches | None = None,
        keys: DecisionKeys | None = None, lanes: LaneRecords | None = None,
    ) -> None:  # fmt: skip
        if spec.actions is None:
            raise ValueError(f"flow {spec.name} has no actions")
        self.spec = spec
        self.flow = spec.name
        self.settings = settings
        self.codec = codec
        self.toolbox = toolbox
        self.store = store
        self.switches = switches
        self.reviewed_topic = settings.topics.of(spec.name, "reviewed")
        self.decisions = (
            None
            if keys is None
            else DecisionCheck(
                self.flow, settings.topics.of(spec.name, "review"), keys,
                None if settings.reviewers_file is None else ReviewerBook(settings.reviewers_file),
                codec,
            )
        )  # fmt: skip
        """Verifies decisions; None (no keys): every decision is refused."""
        self.lanes = lanes

    async def effects(self, meta: Meta) -> list[ToolEffect] | Exception:
        """The ToolEffect of every action ``meta``'s record asks for (effects already run), or
        the exception that makes the record poison for this stage."""
        assert self.spec.actions is not None
        try:
            record: Any = self.codec.decode(meta.value or b"")
            source: DecisionSource = "auto"
            if meta.topic == self.reviewed_topic:
                decision = record
                record = await self._decided(decision)
                if record is None:
                    log.info("executor.rejected", event_id=decision.event_id, flow=self.flow)
                    return []
                source = "reviewed"
            elif isinstance(record, ReviewDecision):
                raise UnverifiedDecision(f"a decision on {meta.topic}, not on the reviewed topic")
            actions = self.spec.actions(record, source)
        except (KafkaError, TimeoutError):
            raise  # the lane record could not be read: exit before the ack, redelivered
        except Exception as exc:  # unreadable, unverified, or not readable by this flow's actions
            return exc
        if self.switches is not None:  # a held tool waits last: the record's other tools run
            off = await self.switches.off()
            actions = sorted(actions, key=lambda a: a.tool in off)
        return [await self._one(record.event_id, action) for action in actions]

    async def _decided(self, decision: Any) -> Any:
        """The record a verified decision on the reviewed topic runs (None: a rejection)."""
        if not isinstance(decision, ReviewDecision):
            raise UnverifiedDecision(f"a {type(decision).__name__} on the reviewed topic")
        if self.decisions is None or self.lanes is None:
            raise UnverifiedDecision("this executor has no decision keys: it runs no decision")
        self.decisions.check(decision)  # signature, reviewers, flow: before any read
        if decision.item is None:  # check() refuses it first
            raise UnverifiedDecision("the decision names no review-lane record")
        value = await self.lanes.value_at(decision.item)
        return self.decisions.decided(decision, value)

    async def _one(self, event_id: str, action: Action) -> ToolEffect:
        began = datetime.now(UTC)
        verdict = self.toolbox.vet(action)
        if isinstance(verdict, Refused):
            key = digest({"event_id": event_id, "tool": action.tool, "input": action.input})
            notify(ToolCall("failure", action.tool[:200], event_id, key, status="refused",
                            error=f"{verdict.reason}: {verdict.detail}"[:300]))  # fmt: skip
            return self._record(action, event_id, key, "refused", canonical(action.input), 0,
                                began, reason=verdict.reason, error=verdict.detail)  # fmt: skip
        tool, data = verdict
        if self.switches is not None:
            await self.switches.wait_until_on(tool.name, event_id)
        for attempt in range(1, STORE_RETRIES + 1):
            try:
                out = await run_effect(self.store, tool, data, event_id)
                break
            except IdempotencyConflict as exc:
                key = tool.key(event_id, data)
                return self._record(action, event_id, key, "failed", canonical(action.input), 0,
                                    began, reason=exc.reason, error=str(exc))  # fmt: skip
            except StoreUnavailable:
                if attempt == STORE_RETRIES:
                    raise
                log.warning("tool.store_unavailable", tool=tool.name, attempt=attempt)
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        return self._from(action, event_id, out, began)

    def _from(
        self, action: Action, event_id: str, out: EffectOutcome, began: datetime
    ) -> ToolEffect:
        reason = "effect_failed" if out.status == "failed" else None
        return self._record(
            action, event_id, out.key, out.status, out.input_json, out.attempts, began,
            result=out.result, error=out.error, reason=reason, reconciled=out.reconciled,
            latency_ms=out.latency_ms,
        )  # fmt: skip

    def _record(
        self, action: Action, event_id: str, key: str, status: Any, input_json: str,
        attempts: int, began: datetime, *, result: dict[str, Any] | None = None,
        error: str | None = None, reason: str | None = None, reconciled: bool = False,
        latency_ms: int | None = None,
    ) -> ToolEffect:  # fmt: skip
        return ToolEffect(
            event_id=event_id,
            tool=action.tool[:200],
            idempotency_key=key,
            status=status,
            input_json=input_json,
            result_json=None if result is None else canonical(scrub_value(result)),
            error=None if error is None else scrub(error),
            attempts=attempts,
            applied_at=datetime.now(UTC),
            flow=self.flow,
            agent=action.agent,
            source=action.source,
            reason=reason,
            reconciled=reconciled,
            latency_ms=latency_ms
            if latency_ms is not None
            else int((datetime.now(UTC) - began).total_seconds() * 1000),
        )


def create_executor_app(
    settings: Settings, specs: list[FlowSpec], codec: Codec, toolbox: Toolbox,
    store: IdempotencyStore, switches: ToolSwitches | None = None,
) -> faust.App:  # fmt: skip
    """The faust app of ``sluice executor``: two faust agents per flow with actions, reading that
    flow's auto lane and its reviewed topic in the consumer group ``<app_id>-executor``."""
    app = faust_app(settings, f"{settings.app_id}-executor")
    engine = new_engine(settings)
    keys, lanes = load_keys(settings), LaneRecords(settings)
    if settings.reviewers_file is None:
        log.warning("executor.no_reviewers_file", effect="every reviewed decision is refused")
    metrics.track_in_flight("executor", lambda: engine.in_flight)
    send = sender(app)
    emitter = Emitter(
        send=send,
        strikes=Strikes(settings.redis_url, f"{settings.app_id}-executor"),
        codec=codec,
        deadletter_topic=settings.topics.deadletter,
        timeout_s=settings.producer_timeout_s + 5,
        max_strikes=settings.max_strikes,
    )

    async def process(executor: Executor, meta: Meta) -> None:
        with (
            structlog.contextvars.bound_contextvars(
                stage="executor", flow=executor.flow, topic=meta.topic, partition=meta.partition,
                offset=meta.offset,
            ),
            observing("executor", executor.flow, meta) as (scope, meta),
        ):  # fmt: skip
            with scope.timed("effects"):
                effects = await executor.effects(meta)
            if isinstance(effects, Exception):
                event_id = meta.derived_event_id()
                dl = deadletter.dead_letter(
                    effects, meta, event_id=event_id, flow=executor.flow,
                    max_message_bytes=settings.max_message_bytes,
                )  # fmt: skip
                notify(DeadLettered(executor.flow, event_id, dl.reason, dl.error_message,
                                    stage="executor"))  # fmt: skip
                outcome = Outcome.build(
                    "deadletter", settings.topics.deadletter, meta, codec.encode(dl), event_id,
                    dl.reason, extra_headers=deadletter.headers(dl),
                )  # fmt: skip
                written = await emitter.emit(outcome, meta, executor.flow)
                tracing.mark_error("deadletter", written.reason)
                notify(scope.summary(written.event_id, written.lane, written.reason))
                return
            traceparent = tracing.traceparent_of(meta.headers)
            with scope.timed("emit"):
                for effect in effects:  # each record acked by the broker before the input is
                    headers = [("sluice.event_id", effect.event_id.encode()),
                               ("sluice.status", effect.status.encode())]  # fmt: skip
                    if traceparent is not None:
                        headers.append((tracing.TRACEPARENT, traceparent.encode()))
                    try:
                        async with asyncio.timeout(settings.producer_timeout_s + 5):
                            await app.producer.send_and_wait(
                                settings.topics.effects, effect.event_id.encode(),
                                codec.encode(effect), None, None, headers,
                            )  # fmt: skip
                    except Exception:
                        log.critical("executor.effect_unwritten", exc_info=True)
                        die()  # exit before the ack: the redelivery finds the effects done
            statuses: dict[str, int] = {}
            for effect in effects:
                statuses[effect.status] = statuses.get(effect.status, 0) + 1
            event_id = effects[0].event_id if effects else meta.derived_event_id()
            lane = "effects" if effects else "none"
            reason = ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())) or "no actions"
            notify(scope.summary(event_id, lane, reason, effects=statuses))

    async def run(executor: Executor, stream: Any) -> None:
        await engine.run(
            stream.noack().events(),
            lambda event: process(executor, meta_of(event)),
            stream.ack,
            partition_of=lambda event: event.message.tp,
            key_of=lambda event: event.key,
        )

    @app.on_before_shutdown.connect
    async def close_lanes(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        await lanes.close()

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, /, *args: Any, signal: Any, **_: Any) -> None:
        engine.revoke(args[0] if args else ())

    for spec in specs:
        if spec.actions is None:
            continue
        executor = Executor(spec, settings, codec, toolbox, store, switches, keys, lanes)
        for role, name in (
            ("auto", f"{spec.name}-executor"),
            ("reviewed", f"{spec.name}-reviewed"),
        ):

            async def agent(stream: Any, executor: Executor = executor) -> None:
                await run(executor, stream)

            app.agent(app.topic(settings.topics.of(spec.name, role)), name=name)(agent)
    return app
