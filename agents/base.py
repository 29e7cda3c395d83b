"""What every agent is: one job behind one interface, returning one kind of result.

The stream (``streams``) knows agents only through :class:`Agent` and :class:`AgentResult`: it
decodes an event, calls ``run``, routes on the result's confidence and issues, and writes the
record the flow's builder makes of it. The built-in ticket triage and invoice extraction agents
are ordinary users of this interface; yours are too (README, "Write your own agent").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from pydantic import BaseModel

from schemas.records import Confidence, Usage

OutT = TypeVar("OutT", covariant=True)
InT = TypeVar("InT", bound=BaseModel, contravariant=True)


@dataclass(frozen=True)
class AgentResult(Generic[OutT]):
    """One agent's answer to one event, with what the router and the record need to know."""

    answer: OutT
    """The agent's own output; only the flow's record builder looks inside it."""
    confidence: Confidence
    """``score`` in [0, 1] decides the lane; the components are recorded with the result."""
    usage: Usage
    """Every call this answer cost, failed attempts and re-asks included."""
    model: str
    prompt_version: str
    issues: list[str] = field(default_factory=list)
    """Problems left after every re-ask, and flags a person must handle: any sends to review."""
    requires_human: bool = False
    """The agent's judgement that a person must handle this, whatever the confidence."""


class Agent(Protocol[InT, OutT]):
    """One narrow job: an input event in, an :class:`AgentResult` out.

    ``run`` raises a :class:`schemas.errors.SluiceError` subclass when it cannot answer (bad
    input, provider down, budget spent); the stream turns that into a dead letter with the
    error's reason. It must not catch ``CancelledError``.
    """

    @property
    def name(self) -> str:
        """Stable identifier, recorded with every result (``agent.name``)."""
        ...

    @property
    def version(self) -> str:
        """The agent's code version, recorded with every result (``agent.version``)."""
        ...

    async def run(self, event: InT) -> AgentResult[OutT]:
        """Do the job for one event."""
        ...
