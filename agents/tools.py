"""Tools: the side effects an agent's decisions lead to, and the rules that let one run.

An agent only *proposes* actions; a tool is the code that acts on one outside system (post an
invoice to a ledger, route a ticket through a webhook, send a mail). Whether a proposed action may
run is decided here, by pure functions, before any effect:

- the tool must be on the proposing agent's **allowlist** — a tool name that came from model output
  and is not listed never runs, whatever the ticket's text said;
- the tool's :class:`ToolPolicy` must allow it: the per-tool ``enabled`` switch, a confidence gate
  per action (a human's approval stands in for confidence), an amount limit on the amount's size
  (a credit of -250,000 moves as much money as a debit of 250,000), no negative amount from the
  auto lane, and the risk tier (``high``: only ever on a person's decision, never from the auto
  lane);
- the tool's input model must accept the input: action arguments are typed (a team is a ``Team``,
  an identifier that reaches an address, a URL, a path or a SQL statement matches
  :data:`IDENTIFIER`), and whatever a model or a person wrote passes the same validation here.

Running an allowed action exactly once is :mod:`agents.effects`' job, through the idempotency key
a tool derives here with :meth:`Tool.key`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, Field

InT = TypeVar("InT", bound=BaseModel)

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""The alphabet of an identifier that reaches an address, a URL, a path or a SQL statement
(a ticket id in a mail address, a document id in a ledger row): no spaces, quotes, ``@``, ``<>``,
``;``, ``/`` or line breaks, so it cannot add a recipient, a header, a path segment or a clause."""
Identifier = Annotated[str, Field(pattern=IDENTIFIER)]

RiskTier = Literal["low", "medium", "high"]
Source = Literal["auto", "reviewed"]
"""Where a decision comes from: the auto lane (the model alone) or a person's review decision."""

RefusalReason = Literal[
    "not_allowlisted", "unknown_tool", "tool_disabled", "needs_human", "low_confidence",
    "over_amount_limit", "invalid_input",
]  # fmt: skip


@dataclass(frozen=True)
class ToolPolicy:
    """When a tool may run. Configured per tool; operators flip ``enabled`` to stop one tool's
    effects while classification continues."""

    enabled: bool = True
    min_confidence: float = 0.0
    """An auto-lane action below this confidence is refused (a reviewed one is a person's call)."""
    max_amount: Decimal | None = None
    """An action whose :meth:`Tool.amount` exceeds this in size (``abs``) is refused, reviewed or
    not. The built-in money tool gets ``SLUICE_MAX_AMOUNT`` (:func:`streams.compose.toolbox`)."""
    negative_from_auto: bool = False
    """Whether a negative :meth:`Tool.amount` (a credit note's refund) may run from the auto lane;
    by default only a person's decision moves money back."""
    risk: RiskTier = "low"
    """``high``: runs only from a person's decision, never from the auto lane."""


class Tool(Generic[InT]):
    """One side effect on one outside system. Subclass it, set the class attributes, implement
    :meth:`apply` and, wherever the target system can be asked, :meth:`reconcile`.

    ``apply`` receives the idempotency key: pass it on to the target when it accepts one (a unique
    column, an ``Idempotency-Key`` header), which closes the last window where a crash between the
    effect and its record could let it run twice.
    """

    name: ClassVar[str]
    input_model: type[InT]
    key_fields: ClassVar[tuple[str, ...] | None] = None
    """The input fields that identify *which* effect this is (say ``ticket_id`` for "route this
    ticket"); the key hashes the event id, the tool name and these. The rest of the input may not
    differ between two claims of one key (:class:`~schemas.errors.IdempotencyConflict`): a
    redelivered event re-judged by the model into a different team must not route it twice. None:
    the whole input, which catches nothing of that kind."""

    reconciles: bool = False
    """True when :meth:`reconcile` really asks the target. Such a tool is asked before its *first*
    apply too (one lookup): a redelivery after the idempotency keys were lost (a Redis
    ``FLUSHALL``, a restore from an old backup) finds the effect at the target and records
    ``duplicate`` instead of running it again. A tool that cannot tell is not asked."""

    def __init__(self, policy: ToolPolicy | None = None) -> None:
        self.policy = policy or ToolPolicy()

    def key(self, event_id: str, data: InT) -> str:
        """The idempotency key: sha256 over the event id, the tool name and the identity fields."""
        values = data.model_dump(mode="json")
        identity = values if self.key_fields is None else {f: values[f] for f in self.key_fields}
        return digest({"event_id": event_id, "tool": self.name, "input": identity})

    def amount(self, data: InT) -> Decimal | None:
        """The money this action moves, for the policy's ``max_amount``; None: not about money."""
        return None

    async def apply(self, data: InT, key: str) -> dict[str, Any] | Existing:
        """Run the effect and return what the target answered (stored as the key's result), or
        :class:`Existing` when the target already held this key's effect (a unique key refused a
        second row): then nothing new happened, and the outcome is ``duplicate``.

        Raise :class:`~schemas.errors.EffectFailed` when the target definitely refused; any other
        exception means "may have happened" and leads to :meth:`reconcile`.
        """
        raise NotImplementedError

    async def reconcile(self, data: InT, key: str) -> Reconciled:
        """Ask the target whether the effect keyed ``key`` happened. The default cannot tell, so
        a crash mid-effect leaves the action ``unknown`` for a person instead of re-running it."""
        return Reconciled(None)


@dataclass(frozen=True)
class Reconciled:
    """What the target system says about one key: ``happened`` True/False, or None if unknown."""

    happened: bool | None
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class Existing:
    """What :meth:`Tool.apply` returns when the target already had the key's effect: its earlier
    result. Recorded as ``duplicate``, never as a second ``applied``."""

    result: dict[str, Any]


@dataclass(frozen=True)
class Action:
    """One action to run: the tool named, its raw input, and the context the policy judges."""

    tool: str
    input: dict[str, Any]
    agent: str
    confidence: float
    source: Source = "auto"


@dataclass(frozen=True)
class Refused:
    """Why an action was not run."""

    reason: RefusalReason
    detail: str


@dataclass
class Toolbox:
    """The tools a process knows, and each agent's allowlist of tool names."""

    tools: dict[str, Tool[Any]] = field(default_factory=dict)
    allowlists: dict[str, frozenset[str]] = field(default_factory=dict)

    def add(self, tool: Tool[Any], *, agents: list[str]) -> Tool[Any]:
        """Register ``tool`` and allow it for the named agents."""
        self.tools[tool.name] = tool
        for agent in agents:
            self.allowlists[agent] = self.allowlists.get(agent, frozenset()) | {tool.name}
        return tool

    def vet(self, action: Action) -> tuple[Tool[Any], BaseModel] | Refused:
        """The tool and validated input if ``action`` may run now, else why not. Pure."""
        if action.tool not in self.allowlists.get(action.agent, frozenset()):
            return Refused("not_allowlisted", f"{action.tool!r} is not allowed for {action.agent}")
        tool = self.tools.get(action.tool)
        if tool is None:
            return Refused("unknown_tool", f"no tool named {action.tool!r} is registered")
        policy = tool.policy
        if not policy.enabled:
            return Refused("tool_disabled", f"{tool.name} is switched off")
        if policy.risk == "high" and action.source != "reviewed":
            return Refused(
                "needs_human", f"{tool.name} is high risk: it runs on a person's decision"
            )
        if action.source == "auto" and action.confidence < policy.min_confidence:
            return Refused(
                "low_confidence",
                f"confidence {action.confidence:.2f} is below {tool.name}'s "
                f"{policy.min_confidence:.2f}",
            )
        try:
            data = tool.input_model.model_validate(action.input)
        except ValueError as exc:
            return Refused("invalid_input", f"{tool.name} input: {_first_error(exc)}")
        amount = tool.amount(data)
        if amount is None:
            return tool, data
        if policy.max_amount is not None and abs(amount) > policy.max_amount:
            return Refused(
                "over_amount_limit", f"{amount} is over {tool.name}'s limit of {policy.max_amount}"
            )
        if amount < 0 and action.source == "auto" and not policy.negative_from_auto:
            return Refused(
                "needs_human",
                f"{tool.name}: a negative amount ({amount}) runs on a person's decision",
            )
        return tool, data


def canonical(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal inputs give equal text, hence equal hashes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def digest(value: Any) -> str:
    """sha256 (hex) of :func:`canonical` ``value``."""
    return hashlib.sha256(canonical(value).encode()).hexdigest()


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        return f"{where}: {first.get('msg')}"  # never input_value: it may carry customer text
    return type(exc).__name__
