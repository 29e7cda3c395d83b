"""What a reviewer can do to an item: claim, release, approve, edit, reject.

Two reviewers cannot decide one item: deciding needs the item's claim, a Redis key held by one
reviewer for ``SLUICE_REVIEW_CLAIM_S`` (deciding an unclaimed item claims it first). A decision is
written once: a short "deciding" marker in Redis (SET NX) keeps a second request — a double click,
another replica — out while the first writes, and the reviewed topic, read back into the state,
says it is decided from then on. If the write fails the marker is removed and nothing was
decided; if the process dies mid-write, the marker expires and the topic says whether the write
landed.

A person cannot post what the model could not: an approval and an edit both run the flow's
business rules (``FlowSpec.rules``: an invoice's lines sum to its subtotal, its currency is ISO
4217, a number is assigned where the document printed none ...) on the record as decided, and a
problem refuses the decision (:class:`~schemas.errors.InvalidEdit`, 422). A decision that moves more
money than the flow's four-eyes amount (``FlowSpec.amount`` against the policy file's
``four_eyes_amount``, by default ``SLUICE_REVIEW_AMOUNT``) is held as pending next to the claim,
and written only when a second, different reviewer confirms it, naming both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
import structlog
from pydantic import BaseModel, ValidationError

from agents.observe import ReviewDecided, notify
from schemas.codec import Codec
from schemas.errors import InvalidEdit, ItemNotFound, ReviewConflict, validation_problems
from schemas.records import FieldChange, ReviewDecision, ReviewVerdict
from streams import tracing
from streams.decisions import DecisionKeys
from streams.flow import Envelope, FlowSpec
from streams.review.state import Item, ReviewState

log = structlog.get_logger(__name__)

#: Fields a reviewer may not change: the envelope (what happened, not what it means) and the
#: agent's own evidence. Everything else in a result record is the agent's answer.
LOCKED = frozenset(Envelope.__annotations__) | {"field_confidence", "validation_issues"}

Send = Callable[[str, bytes, bytes, list[tuple[str, bytes]]], Awaitable[None]]
"""Writes (topic, key, value, headers) and waits for the broker's ack."""
"""(topic, key, value) → once the broker has acknowledged the write."""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def editable(record: BaseModel) -> list[str]:
    """The fields of ``record`` a reviewer may edit: not the locked ones, and no ``*_id`` (an id
    says which ticket or document this is, not what the model made of it)."""
    return [
        name
        for name in type(record).model_fields
        if name not in LOCKED and not name.endswith("_id")
    ]


@dataclass(frozen=True)
class Pending:
    """A decision held until a second reviewer confirms it (four-eyes)."""

    reviewer: str
    verdict: ReviewVerdict
    changes: dict[str, Any]
    """The edit as the first reviewer sent it (empty for an approval); applied again at
    confirmation."""
    comment: str | None
    amount: str
    """The money at stake, and the flow's four-eyes amount it is above."""
    limit: str
    at: str


class ReviewDesk:
    """The review operations over ``state``, with claims in ``redis`` and decisions sent with
    ``send`` to each flow's reviewed topic (``reviewed_topic(flow)``)."""

    def __init__(
        self,
        state: ReviewState,
        redis: aioredis.Redis,
        send: Send,
        reviewed_topic: Callable[[str], str],
        *,
        prefix: str,
        claim_s: float = 900.0,
        codec: Codec | None = None,
        signer: DecisionKeys | None = None,
        specs: Mapping[str, FlowSpec] | None = None,
        four_eyes: Callable[[str], Decimal | None] | None = None,
    ) -> None:
        self.state = state
        self.redis = redis
        self.send = send
        self.reviewed_topic = reviewed_topic
        self.prefix = prefix
        self.claim_s = claim_s
        self.codec = codec or Codec()
        self.signer = signer
        """Signs every decision (``sluice review serve`` always has one); None writes them
        unsigned, which the executor refuses: for tests of the desk alone."""
        self.specs = dict(specs or {})
        """Each flow's spec: its business rules and the money a record moves."""
        self.four_eyes = four_eyes or (lambda flow: None)
        """The amount above which a flow's decision needs a second reviewer; None: never."""
        self._release = redis.register_script(_RELEASE)

    def item(self, key: str) -> Item:
        found = self.state.get(key)
        if found is None:
            raise ItemNotFound(f"no review item {key!r}")
        return found

    async def claimed_by(self, key: str) -> str | None:
        """Who holds the item's claim now, if anyone."""
        held = await self.redis.get(self._claim_key(key))
        return held.decode() if isinstance(held, bytes) else held

    async def claims(self, keys: list[str]) -> dict[str, str | None]:
        """Who holds each item's claim, in one round trip."""
        if not keys:
            return {}
        held = await self.redis.mget([self._claim_key(k) for k in keys])
        return {
            k: h.decode() if isinstance(h, bytes) else h for k, h in zip(keys, held, strict=True)
        }

    async def claim(self, key: str, reviewer: str) -> float:
        """Claim the item for ``reviewer`` (again: renews it); returns seconds the claim lasts."""
        item = self.item(key)
        if item.decision is not None:
            raise ReviewConflict(f"{key} is decided already ({item.decision.verdict})")
        ms = int(self.claim_s * 1000)
        if not await self.redis.set(self._claim_key(key), reviewer, nx=True, px=ms):
            holder = await self.claimed_by(key)
            if holder != reviewer:
                raise ReviewConflict(f"{key} is claimed by {holder}")
            await self.redis.pexpire(self._claim_key(key), ms)
            await self.redis.pexpire(self._pending_key(key), ms)  # a held decision lives as long
        log.info("review.claimed", item=key, reviewer=reviewer)
        return self.claim_s

    async def release(self, key: str, reviewer: str) -> None:
        """Give the claim back (only its holder can)."""
        self.item(key)
        if not await self._release(keys=[self._claim_key(key)], args=[reviewer]):
            raise ReviewConflict(f"{key} is not claimed by {reviewer}")
        await self.redis.delete(self._pending_key(key))  # a held decision goes with its claim
        log.info("review.released", item=key, reviewer=reviewer)

    async def approve(
        self, key: str, reviewer: str, comment: str | None = None
    ) -> ReviewDecision | Pending:
        """The result is right as it is: its actions may run. Refused while the record breaks a
        business rule or carries a flag only an edit can resolve (no invoice number)."""
        item = self.item(key)
        self.check_rules(item, item.record)
        return await self._approve_or_hold(item, reviewer, "approve", item.record, [], {}, comment)

    async def edit(
        self, key: str, reviewer: str, changes: dict[str, Any], comment: str | None = None
    ) -> ReviewDecision | Pending:
        """The result with ``changes`` applied is right. The edited record must pass the record's
        own schema and the flow's business rules, so an edit cannot produce an invalid record."""
        item = self.item(key)
        edited, diff = self.edited(item, changes)
        self.check_rules(item, edited)
        return await self._approve_or_hold(
            item, reviewer, "correct", edited, diff, changes, comment
        )

    async def confirm(self, key: str, reviewer: str) -> ReviewDecision:
        """A second reviewer confirms the decision another reviewer holds (four-eyes): it is
        written with both names. The held record is checked again, as at the first decision."""
        item = self.item(key)
        held = await self.pending(key)
        if held is None:
            raise ReviewConflict(f"{key} has no decision waiting for a second reviewer")
        if held.reviewer == reviewer:
            raise ReviewConflict(
                f"{key}: the second reviewer must be someone other than {reviewer}"
            )
        if await self.claimed_by(key) != held.reviewer:
            await self.redis.delete(self._pending_key(key))
            raise ReviewConflict(f"{key}: {held.reviewer}'s claim lapsed; decide it again")
        record: BaseModel = item.record
        diff: list[FieldChange] = []
        if held.verdict == "correct":
            record, diff = self.edited(item, held.changes)
        self.check_rules(item, record)
        return await self._decide(
            item, held.reviewer, held.verdict, record, diff, held.comment, second_reviewer=reviewer
        )

    async def pending(self, key: str) -> Pending | None:
        """The decision held for a second reviewer on ``key``, if any."""
        raw = await self.redis.get(self._pending_key(key))
        return None if raw is None else Pending(**json.loads(raw))

    async def pendings(self, keys: list[str]) -> dict[str, Pending | None]:
        """:meth:`pending` of each key, in one round trip."""
        if not keys:
            return {}
        found = await self.redis.mget([self._pending_key(k) for k in keys])
        return {
            k: None if raw is None else Pending(**json.loads(raw))
            for k, raw in zip(keys, found, strict=True)
        }

    def edited(self, item: Item, changes: dict[str, Any]) -> tuple[BaseModel, list[FieldChange]]:
        """The item's record with ``changes`` applied, validated by the record's schema, and the
        fields that changed. Raises :class:`InvalidEdit` for a locked or unknown field, a value
        the schema refuses, or an edit that changes nothing."""
        allowed = editable(item.record)
        unknown = sorted(set(changes) - set(allowed))
        if unknown:
            raise InvalidEdit(f"cannot edit {', '.join(unknown)}; editable: {', '.join(allowed)}")
        before = item.record.model_dump(mode="json")
        try:
            edited = type(item.record).model_validate({**item.record.model_dump(), **changes})
        except ValidationError as exc:
            raise InvalidEdit(validation_problems(exc)) from exc
        after = edited.model_dump(mode="json")
        diff = [
            FieldChange(field=f, before=json.dumps(before[f]), after=json.dumps(after[f]))
            for f in allowed
            if before.get(f) != after.get(f)
        ]
        if not diff:
            raise InvalidEdit("the edit changes nothing: approve instead")
        return edited, diff

    def check_rules(self, item: Item, record: BaseModel) -> None:
        """Raise :class:`InvalidEdit` with every business rule ``record`` breaks (the flow's
        ``FlowSpec.rules``)."""
        spec = self.specs.get(item.flow)
        problems = spec.rules(record) if spec is not None and spec.rules is not None else []
        if problems:
            raise InvalidEdit("; ".join(problems))

    def at_stake(self, item: Item, record: BaseModel) -> Decimal | None:
        """The money a decision on ``item`` moves: the larger of the record's amount before and
        after (either sign), None when the flow's records move none."""
        spec = self.specs.get(item.flow)
        if spec is None or spec.amount is None:
            return None
        amounts = [a for a in (spec.amount(item.record), spec.amount(record)) if a is not None]
        return max((abs(a) for a in amounts), default=None)

    async def _approve_or_hold(
        self,
        item: Item,
        reviewer: str,
        verdict: ReviewVerdict,
        record: BaseModel,
        diff: list[FieldChange],
        changes: dict[str, Any],
        comment: str | None,
    ) -> ReviewDecision | Pending:
        held = await self.pending(item.id)
        if held is not None and held.reviewer != reviewer:
            raise ReviewConflict(
                f"{item.id} waits for a second reviewer to confirm {held.reviewer}'s "
                f"{held.verdict}: confirm it, or ask {held.reviewer} to release it"
            )
        amount, limit = self.at_stake(item, record), self.four_eyes(item.flow)
        if amount is None or limit is None or amount <= limit:
            return await self._decide(item, reviewer, verdict, record, diff, comment)
        await self.claim(item.id, reviewer)  # holds it, or raises: claimed by another, decided
        pending = Pending(
            reviewer=reviewer,
            verdict=verdict,
            changes=changes,
            comment=comment,
            amount=str(amount),
            limit=str(limit),
            at=datetime.now(UTC).isoformat(),
        )
        ms = int(self.claim_s * 1000)
        await self.redis.set(self._pending_key(item.id), json.dumps(asdict(pending)), px=ms)
        log.info(
            "review.held", item=item.id, reviewer=reviewer, verdict=verdict, amount=str(amount)
        )
        return pending

    async def reject(self, key: str, reviewer: str, reason: str) -> ReviewDecision:
        """The result is wrong and must not act; ``reason`` is required."""
        if not reason.strip():
            raise InvalidEdit("a rejection needs a reason")
        item = self.item(key)
        return await self._decide(item, reviewer, "reject", None, [], reason.strip())

    async def _decide(
        self,
        item: Item,
        reviewer: str,
        verdict: ReviewVerdict,
        record: BaseModel | None,
        diff: list[FieldChange],
        comment: str | None,
        second_reviewer: str | None = None,
    ) -> ReviewDecision:
        await self.claim(item.id, reviewer)  # holds it, or raises: claimed by another, decided
        deciding = f"{self.prefix}:deciding:{item.id}"
        decision_id = uuid.uuid4().hex
        if not await self.redis.set(deciding, decision_id, nx=True, px=120_000):
            raise ReviewConflict(f"{item.id} is being decided")
        try:
            if item.decision is not None:  # decided while we waited for Redis
                raise ReviewConflict(f"{item.id} is decided already ({item.decision.verdict})")
            now = datetime.now(UTC)
            decision = ReviewDecision(
                event_id=item.event_id,
                flow=item.flow,
                reviewer=reviewer,
                verdict=verdict,
                corrections={c.field: c.after for c in diff},
                comment=comment,
                model_confidence=item.confidence,
                decided_at=now,
                decision_id=decision_id,
                item=item.where,
                changes=diff,
                seconds_to_decision=item.age_s(now),
                record=None if record is None else self.codec.encode(record),
                second_reviewer=second_reviewer,
                item_sha256=item.sha256,
            )
            if self.signer is not None:
                decision = self.signer.sign(decision)
            attributes = {"sluice.flow": item.flow, "sluice.event_id": item.event_id,
                          "sluice.review.verdict": verdict}  # fmt: skip
            with tracing.stage_span(
                f"review {item.flow}", item.traceparent, item.event_id, attributes
            ) as traceparent:
                headers = [("sluice.event_id", item.event_id.encode())]
                if traceparent is not None:
                    headers.append((tracing.TRACEPARENT, traceparent.encode()))
                await self.send(
                    self.reviewed_topic(item.flow), item.event_id.encode(),
                    self.codec.encode(decision), headers,
                )  # fmt: skip
        except BaseException:
            await self.redis.delete(deciding)
            raise
        self.state.add_decision(decision)  # the feed reads it back too; the first one stands
        await self.redis.delete(self._claim_key(item.id), self._pending_key(item.id))
        found = tracing.parse(traceparent)
        with structlog.contextvars.bound_contextvars(
            topic=item.where.topic, partition=item.where.partition, offset=item.where.offset,
            trace_id=found[0] if found else None,
        ):  # fmt: skip
            notify(
                ReviewDecided(
                    flow=item.flow,
                    event_id=item.event_id,
                    item=item.id,
                    verdict=verdict,
                    reviewer=reviewer,
                    changed=[c.field for c in diff],
                    seconds_to_decision=round(decision.seconds_to_decision, 3),
                )
            )
        return decision

    def _claim_key(self, key: str) -> str:
        return f"{self.prefix}:claim:{key}"

    def _pending_key(self, key: str) -> str:
        return f"{self.prefix}:pending:{key}"
