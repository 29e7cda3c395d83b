"""TicketTriageAgent: one job — a support ticket in, a validated triage out.

It does not route, write or retry on its own: the client layer bounds retries and the stream
decides the lane from the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

from pydantic import BaseModel, Field

from agents.llm import Completion, LLMClient
from schemas.events import TicketReceived

PROMPT_VERSION = "ticket_triage.v1"
AGENT_NAME = "ticket-triage"
AGENT_VERSION = "0.1.0"


class TriageAnswer(BaseModel):
    """What the model must return. Lengths are bounded so a rambling model can't bloat records."""

    category: Literal["billing", "technical", "account", "shipping", "other"]
    priority: Literal["low", "medium", "high", "urgent"]
    summary: str = Field(max_length=400)
    confidence: float
    """Self-rated; small models give canned values, so the router treats it with suspicion."""


@dataclass(frozen=True)
class Triage:
    """A triage answer with the identity of who produced it and what it cost."""

    answer: TriageAnswer
    confidence: float
    completion: Completion[TriageAnswer]
    model: str
    prompt_version: str = PROMPT_VERSION


def load_prompt(version: str) -> str:
    return resources.files("agents").joinpath("prompts", f"{version}.md").read_text("utf-8")


class TicketTriageAgent:
    name = AGENT_NAME
    version = AGENT_VERSION

    def __init__(self, llm: LLMClient, prompt_version: str = PROMPT_VERSION) -> None:
        self.llm = llm
        self.prompt_version = prompt_version
        self.system_prompt = load_prompt(prompt_version)

    async def triage(self, ticket: TicketReceived) -> Triage:
        user = f"Subject: {ticket.subject}\nChannel: {ticket.channel}\n\n{ticket.body}"
        completion = await self.llm.structured(
            [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": user}],
            TriageAnswer,
            max_tokens=200,
        )
        # Neither llama.cpp nor every provider enforces numeric bounds from a JSON schema.
        confidence = min(1.0, max(0.0, completion.value.confidence))
        return Triage(
            answer=completion.value,
            confidence=confidence,
            completion=completion,
            model=self.llm.model,
            prompt_version=self.prompt_version,
        )
