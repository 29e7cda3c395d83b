"""Routing policy: per-flow thresholds and hard rules, from a TOML file validated at start.

The policy can only add caution. A flow's router (by default: confidence against the threshold,
``requires_human`` and validation issues, :mod:`streams.router`) proposes a lane; the policy then
sends the result to review when a per-field confidence is below its threshold or a hard rule
matches (an invoice above an amount, a critical ticket, an enterprise customer). It never moves a
result from review to auto. Every reason that applied is kept, so a reviewer sees all of them.

A file (``SLUICE_POLICY_FILE``) looks like this::

    [default]                 # every flow without a section of its own
    threshold = 0.8

    [flows.invoices]
    threshold = 0.85
    fields = { total = 0.9, vendor_name = 0.7 }   # record.field_confidence[name] >= value

    [[flows.invoices.rules]]
    name = "large invoice"
    when = "record.total"
    op = ">"
    value = 10000

    [[flows.tickets.rules]]
    name = "enterprise customer"
    when = "event.customer_plan"
    op = "in"
    value = ["enterprise"]

    [flows.tickets]
    breaker_fallback = "review"   # breaker open: a person triages instead of a dead letter

``when`` names a field of the result record (``record.``) or of the decoded input event
(``event.``); dotted paths reach into nested models. Unknown keys, unknown flows, fields the
record or event does not have and thresholds outside [0, 1] are refused when the worker starts,
with the file, the flow and the rule named.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from schemas.errors import ConfigError, validation_problems
from streams.router import Decision

if TYPE_CHECKING:
    from streams.flow import Flow
    from streams.settings import Settings

Op = Literal["==", "!=", ">", ">=", "<", "<=", "in", "not_in"]


class Rule(BaseModel):
    """A hard rule: when it matches, the result goes to review whatever its confidence."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=80)
    when: str = Field(pattern=r"^(record|event)(\.[A-Za-z_][A-Za-z0-9_]*)+$")
    """``record.<field>`` or ``event.<field>``, dotted into nested models."""
    op: Op
    value: Any

    @model_validator(mode="after")
    def _value_fits_op(self) -> Rule:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"rule {self.name!r}: {self.op} needs a list value")
        if self.op in (">", ">=", "<", "<=") and _number(self.value) is None:
            raise ValueError(f"rule {self.name!r}: {self.op} needs a number, not {self.value!r}")
        return self

    def matches(self, record: BaseModel, event: BaseModel) -> bool:
        """Whether the rule holds for this result. A missing or null field never matches."""
        found = _lookup(record if self.when.startswith("record.") else event, self.when)
        if found is None:
            return False
        if self.op in ("in", "not_in"):
            inside = any(_equal(found, v) for v in self.value)
            return inside if self.op == "in" else not inside
        if self.op == "==":
            return _equal(found, self.value)
        if self.op == "!=":
            return not _equal(found, self.value)
        a, b = _number(found), _number(self.value)
        if a is None or b is None:
            return False
        return {">": a > b, ">=": a >= b, "<": a < b, "<=": a <= b}[self.op]

    def describe(self) -> str:
        """The reason recorded when the rule sends a result to review."""
        return f"rule {self.name!r}: {self.when} {self.op} {self.value!r}"


class FlowPolicy(BaseModel):
    """How one flow's results are routed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(0.8, ge=0.0, le=1.0)
    """The overall confidence a result needs for the auto lane."""
    action_threshold: float | None = Field(None, ge=0.0, le=1.0)
    """Per-action split: an auto result's actions below this confidence are held for a person
    (a review copy of the result, ``route.lane`` still ``auto``) while the rest run. None: no
    split."""
    audit_rate: float = Field(0.0, ge=0.0, le=1.0)
    """The share of auto results also queued for review as audit samples (chosen by event id, so
    a redelivered event is sampled the same way), to measure the auto lane's precision."""
    breaker_fallback: Literal["deadletter", "review"] = "deadletter"
    """While a circuit breaker is open: dead-letter the flow's events (``breaker_open``, redriven
    later) or send them to review for a person to decide (needs the flow's ``unanswered``)."""
    fields: dict[str, float] = Field(default_factory=dict)
    """Per-field minimum confidence, read from the record's ``field_confidence``; a field with no
    confidence there counts as 0."""
    rules: tuple[Rule, ...] = ()
    four_eyes_amount: Decimal | None = Field(None, ge=0, allow_inf_nan=False)
    """A reviewer's approval or edit of a result moving more money than this (the flow's
    ``FlowSpec.amount``, by size) needs a second, different reviewer to confirm it.
    None: ``SLUICE_REVIEW_AMOUNT``, the amount above which results go to review at all."""

    @model_validator(mode="after")
    def _fields_in_range(self) -> FlowPolicy:
        for name, value in self.fields.items():
            if not 0.0 <= value <= 1.0:  # NaN fails too
                raise ValueError(f"fields.{name} = {value}: a threshold is in [0, 1]")
        return self


class Policy(BaseModel):
    """Every flow's routing policy: ``flows.<name>``, or ``default`` for the rest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: FlowPolicy = FlowPolicy()
    flows: dict[str, FlowPolicy] = Field(default_factory=dict)

    def of(self, flow: str) -> FlowPolicy:
        """The policy of ``flow``."""
        return self.flows.get(flow, self.default)


def load_policy(path: Path, *, threshold: float = 0.8) -> Policy:
    """Read and validate a policy file. ``threshold`` is the default's threshold when the file's
    ``[default]`` section does not set one (``SLUICE_AUTO_THRESHOLD``)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"policy file {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"policy file {path}: not valid TOML: {exc}") from exc
    raw.setdefault("default", {}).setdefault("threshold", threshold)
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
        raise ConfigError(f"policy file {path}: {problems}") from exc


def routing_policy(settings: Settings, flows: Sequence[Flow[Any, Any]]) -> Policy:
    """The deployment's policy: ``SLUICE_POLICY_FILE`` checked against ``flows`` (the ones this
    process runs) and every registered flow name; without a file, ``SLUICE_AUTO_THRESHOLD`` for
    all. Raises :class:`~schemas.errors.ConfigError` on any problem, before a record is read."""
    if settings.policy_file is None:
        return Policy(default=FlowPolicy(threshold=settings.auto_threshold))
    from streams.flow import registered

    policy = load_policy(settings.policy_file, threshold=settings.auto_threshold)
    specs = {spec.name: spec for spec in registered()}
    known: dict[str, tuple[type[BaseModel] | None, type[BaseModel] | None]] = {
        name: (spec.record_model, None) for name, spec in specs.items()
    }
    for flow in flows:
        spec = specs.get(flow.name)
        known[flow.name] = (spec.record_model if spec else None, flow.event)
        if policy.of(flow.name).breaker_fallback == "review" and flow.unanswered is None:
            raise ConfigError(
                f'policy: flow {flow.name} has breaker_fallback = "review" but the flow has no '
                "unanswered record builder (Flow.unanswered)"
            )
    check_policy(policy, known)
    return policy


def check_policy(
    policy: Policy, flows: Mapping[str, tuple[type[BaseModel] | None, type[BaseModel] | None]]
) -> None:
    """Refuse a policy that names a flow not registered, or a field its record or event lacks.

    ``flows`` maps each flow name to its (record model, event model); None where not known.
    """
    for name, fp in policy.flows.items():
        if name not in flows:
            known = ", ".join(sorted(flows)) or "none"
            raise ConfigError(f"policy: flow {name!r} is not registered (known: {known})")
        record, event = flows[name]
        for rule in fp.rules:
            model = record if rule.when.startswith("record.") else event
            if model is not None and not _has_path(model, rule.when.split(".")[1:]):
                raise ConfigError(
                    f"policy: flows.{name} rule {rule.name!r}: "
                    f"{model.__name__} has no field {rule.when.split('.', 1)[1]!r}"
                )
        if fp.fields and record is not None and "field_confidence" not in record.model_fields:
            raise ConfigError(
                f"policy: flows.{name}.fields: {record.__name__} has no field_confidence"
            )


def apply_policy(
    proposed: Decision, policy: FlowPolicy, record: BaseModel, event: BaseModel
) -> Decision:
    """The final lane: ``proposed`` (the flow router's), plus every reason the policy adds.

    Pure: the same inputs give the same decision, so replays can re-route old results under a
    new policy without calling a model.
    """
    extra: list[str] = []
    confidences = getattr(record, "field_confidence", None) or {}
    for name, minimum in policy.fields.items():
        got = confidences.get(name)
        if got is None or not math.isfinite(got) or got < minimum:
            extra.append(f"field {name} confidence {_fmt(got)} < {minimum:.3f}")
    extra += [rule.describe() for rule in policy.rules if rule.matches(record, event)]
    return add_caution(proposed, extra)


def add_caution(proposed: Decision, extra: Sequence[str]) -> Decision:
    """``proposed``, sent to review with ``extra`` reasons if there are any; on an auto decision
    they replace its reason (the confidence cleared the bar; these are why a person still looks),
    on a review decision they are added to it."""
    if not extra:
        return proposed
    reasons = list(proposed.reasons or (proposed.reason,))
    reasons = list(extra) if proposed.lane == "auto" else reasons + list(extra)
    return Decision("review", "; ".join(reasons)[:1000], tuple(reasons))


def amount_cautions(amount: Decimal | None, review_amount: Decimal) -> list[str]:
    """Why a result that moves ``amount`` needs a person, whatever the policy file says: more
    than ``review_amount`` by size (``SLUICE_REVIEW_AMOUNT``), or money going back (negative: a
    credit note is never posted from the auto lane). None: the result moves no money."""
    if amount is None:
        return []
    if not amount.is_finite():
        return [f"amount {amount} is not a number"]
    reasons = []
    if abs(amount) > review_amount:
        reasons.append(f"amount {amount} is over the review amount {review_amount}")
    if amount < 0:
        reasons.append(f"amount {amount} is negative: money back runs on a person's decision")
    return reasons


def _fmt(value: float | None) -> str:
    return "missing" if value is None else f"{value:.3f}"


def _lookup(model: BaseModel, path: str) -> Any:
    found: Any = model
    for part in path.split(".")[1:]:
        found = found.get(part) if isinstance(found, dict) else getattr(found, part, None)
        if found is None:
            return None
    return found


def _has_path(model: type[BaseModel], parts: Sequence[str]) -> bool:
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    inner = field.annotation
    return isinstance(inner, type) and issubclass(inner, BaseModel) and _has_path(inner, parts[1:])


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def _equal(a: Any, b: Any) -> bool:
    x, y = _number(a), _number(b)
    if x is not None and y is not None:
        return x == y
    return bool(getattr(a, "value", a) == b)  # an enum compares by its value


def audit_sampled(event_id: str, rate: float) -> bool:
    """Whether ``event_id`` is in the audit sample at ``rate``: a hash, not a random draw, so
    replays and redeliveries agree."""
    if rate <= 0.0:
        return False
    draw = int.from_bytes(hashlib.sha256(event_id.encode()).digest()[:8], "big") / 2**64
    return draw < rate


def held_actions(record: BaseModel, threshold: float | None) -> list[int]:
    """Indexes of the record's ``actions`` whose confidence is below ``threshold`` (NaN too)."""
    if threshold is None:
        return []
    actions = getattr(record, "actions", None) or []
    return [i for i, a in enumerate(actions) if not getattr(a, "confidence", 0.0) >= threshold]
