"""TicketTriageAgent: one job — a support ticket in, a validated triage out.

It does not route, write or act: it proposes actions, each with its own confidence, and the stream
decides. Its confidence is measured where the provider gives logprobs (see
:mod:`agents.confidence`); every component is returned so evals can judge them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from pydantic import BaseModel, Field

from agents.base import AgentResult
from agents.calibration import Calibration, check_calibration
from agents.confidence import clamp, combine, label_probability
from agents.llm import Completion, LLMClient
from agents.prompt import load_prompt
from schemas.events import TicketReceived
from schemas.records import (
    ActionKind,
    Confidence,
    ProposedAction,
    Sentiment,
    Team,
    TicketCategory,
    TicketPriority,
)

PROMPT_VERSION = "ticket_triage.v3"
AGENT_NAME = "ticket-triage"
AGENT_VERSION = "0.3.0"
MAX_TOKENS = 360


class ActionAnswer(BaseModel):
    action: ActionKind
    confidence: float


class TriageAnswer(BaseModel):
    """What the model must return. Lengths are bounded so a rambling model can't bloat records."""

    category: TicketCategory
    priority: TicketPriority
    sentiment: Sentiment
    team: Team
    requires_human: bool
    summary: str = Field(max_length=160)
    reasoning: str = Field(max_length=200)
    actions: list[ActionAnswer] = Field(max_length=4)
    confidence: float


#: Which team owns which category (the same table as the prompt).
TEAM_OF: dict[str, Team] = {
    "billing": "billing",
    "technical": "tech_support",
    "account": "account_security",
    "shipping": "logistics",
    "other": "customer_success",
}


def business_problems(answer: TriageAnswer) -> list[str]:
    """Rules beyond the schema; each problem is sent back to the model in a re-ask.

    An answer whose parts contradict each other (a billing ticket for the logistics team) is
    unreliable as a whole, so it is re-asked, and goes to review if the contradiction stays.
    """
    problems = []
    if answer.team != TEAM_OF[answer.category]:
        problems.append(
            f"team {answer.team!r} does not match category {answer.category!r}: "
            f"category {answer.category!r} belongs to team {TEAM_OF[answer.category]!r}"
        )
    if not answer.summary.strip():
        problems.append("summary is empty: write one sentence saying what the customer needs")
    if answer.priority == "urgent" and not answer.requires_human:
        problems.append("priority is urgent, so requires_human must be true")
    return problems


#: What the model reads in place of an empty body: a blank where the message should be looks like a
#: broken input, and the prompt (v3) says to judge such a ticket by its subject.
NO_BODY = "(no message body: the subject is the whole ticket)"


def _line(value: str | None) -> str:
    """One line of header text: a producer's newline must not forge a header line of its own."""
    return " ".join((value or "").split())


def user_message(ticket: TicketReceived) -> str:
    """The ticket as the model reads it: header lines, a blank line, then the customer's message.

    The customer line carries the id and plan from the producer's systems because priority depends
    on the plan (prompt v3); an unknown value is spelled "unknown" so the model does not guess one.
    Pure, so tests can read exactly what a model would be sent.
    """
    customer = _line(ticket.customer_id) or "unknown"
    plan = _line(ticket.customer_plan) or "unknown"
    return (
        f"Subject: {_line(ticket.subject) or '(none)'}\n"
        f"Channel: {ticket.channel}\n"
        f"Customer: {customer} (plan: {plan})\n\n"
        f"{ticket.body or NO_BODY}"
    )


@dataclass(frozen=True)
class Triage:
    """A triage answer with its measured confidence and what it cost."""

    answer: TriageAnswer
    confidence: Confidence
    actions: list[ProposedAction]
    completion: Completion[TriageAnswer]
    model: str
    prompt_version: str


class TicketTriageAgent:
    name = AGENT_NAME
    version = AGENT_VERSION

    def __init__(
        self,
        llm: LLMClient,
        prompt_version: str = PROMPT_VERSION,
        *,
        calibration: Calibration | None = None,
    ) -> None:
        self.llm = llm
        self.prompt_version = prompt_version
        self.system_prompt = load_prompt(prompt_version)
        #: Maps the routed score to P(triage is right); None routes on the hand-weighted score.
        self.calibration = check_calibration(calibration, prompt_version)

    async def run(self, event: TicketReceived) -> AgentResult[Triage]:
        """The :class:`~agents.base.Agent` interface: :meth:`triage` as an AgentResult."""
        t = await self.triage(event)
        return AgentResult(
            answer=t,
            confidence=t.confidence,
            usage=t.completion.usage,
            model=t.model,
            prompt_version=t.prompt_version,
            issues=list(t.completion.issues),
            requires_human=bool(t.answer.requires_human),
        )

    async def triage(self, ticket: TicketReceived) -> Triage:
        c = await self.llm.structured(
            [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": user_message(ticket)},
            ],
            TriageAnswer,
            max_tokens=MAX_TOKENS,
            validate=business_problems,
            prompt_version=self.prompt_version,
        )
        a = c.value
        # The routed label is the category; priority decides urgency. Both must be believed.
        label_probs = [
            label_probability(c.logprobs, "category", a.category, get_args(TicketCategory)),
            label_probability(c.logprobs, "priority", a.priority, get_args(TicketPriority)),
        ]
        measured = [p for p in label_probs if p is not None]
        confidence = combine(
            a.confidence,
            min(measured) if measured else None,
            reasks=c.reasks,
            issues=len(c.issues),
            calibration=self.calibration,
        )
        # Per-action confidences are not calibrated: the calibration was fitted on whether the
        # whole triage was right, not on whether each proposed action was, so its map says nothing
        # about an action's own rating. They scale by the raw validation factor, as before.
        team_p = label_probability(c.logprobs, "team", a.team, get_args(Team))
        actions = []
        seen = set()
        for act in a.actions:
            if act.action in seen:
                continue  # small models repeat list items; a duplicate proposes nothing new
            seen.add(act.action)
            score = clamp(act.confidence) * confidence.validation
            if act.action == "route_to_team" and team_p is not None:
                score = min(score, team_p)
            actions.append(
                ProposedAction(
                    action=act.action,
                    target=a.team if act.action == "route_to_team" else None,
                    confidence=round(score, 6),
                )
            )
        return Triage(
            answer=a,
            confidence=confidence,
            actions=actions,
            completion=c,
            model=self.llm.model,
            prompt_version=self.prompt_version,
        )
