"""The ticket tools: route a ticket to a team (HTTP webhook) and acknowledge it (SMTP).

Both hand the idempotency key to their target — the webhook as an ``Idempotency-Key`` header, the
mail as its ``Message-ID`` — and ``reconcile`` asks the target for it, so a crash between the effect
and its record is settled by looking, never by sending again. The local targets are
:mod:`agents.sinks`; a real team router or mail relay needs the same two things (accept the key,
answer a lookup by it), or its tool leaves a crashed attempt ``unknown`` for a person. Both are
asked once before their first send as well (``reconciles``), so a redelivery after the idempotency
keys were lost finds the effect and sends nothing.

Their inputs are typed: a team is a :data:`~schemas.records.Team` whoever wrote it (the model or a
reviewer), and a ticket id matches :data:`~agents.tools.IDENTIFIER` before it goes near an address.
The mail's addresses are built by :class:`email.headerregistry.Address`, never by formatting text,
and its envelope recipients are given explicitly: a ticket id cannot add a recipient or a header.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.headerregistry import Address
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from pydantic import BaseModel, Field

from agents.sinks import message_seen
from agents.tools import Identifier, Reconciled, Tool, ToolPolicy
from schemas.errors import EffectFailed
from schemas.records import Team

SENDER = Address("Support", "support", "sluice.local")
CUSTOMER_DOMAIN = "customers.sluice.local"


class RouteTicket(BaseModel):
    """Which team gets the ticket."""

    event_id: str = Field(min_length=1, max_length=128)
    ticket_id: Identifier
    team: Team
    """One of the known teams: a model's or a reviewer's free text never picks a receiver."""


class Acknowledge(BaseModel):
    """Tell the customer the ticket arrived."""

    event_id: str = Field(min_length=1, max_length=128)
    ticket_id: Identifier


class RouteTicketTool(Tool[RouteTicket]):
    """POSTs the routing to ``<webhook_url>/route``; once per ticket per event."""

    name: ClassVar[str] = "route_to_team"
    input_model = RouteTicket
    key_fields = ("ticket_id",)
    reconciles = True

    def __init__(self, webhook_url: str, policy: ToolPolicy | None = None, timeout_s: float = 10):
        super().__init__(policy)
        self.url = webhook_url.rstrip("/") + "/route"
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def apply(self, data: RouteTicket, key: str) -> dict[str, Any]:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as http,
            http.post(self.url, json=data.model_dump(), headers={"Idempotency-Key": key}) as r,
        ):
            if 400 <= r.status < 500:  # the receiver refused it: nothing was routed
                raise EffectFailed(f"webhook answered {r.status}")
            r.raise_for_status()  # 5xx: may or may not have happened, reconcile decides
            return {"routed_to": data.team, "status": r.status}

    async def reconcile(self, data: RouteTicket, key: str) -> Reconciled:
        async with (
            aiohttp.ClientSession(timeout=self.timeout) as http,
            http.get(f"{self.url}/{key}") as r,
        ):
            if r.status == 404:
                return Reconciled(False)
            r.raise_for_status()
            return Reconciled(True, {"routed_to": data.team, "status": 202})


class AcknowledgeTool(Tool[Acknowledge]):
    """Sends a short acknowledgement through SMTP, Message-ID derived from the key."""

    name: ClassVar[str] = "send_acknowledgement"
    input_model = Acknowledge
    key_fields = ("ticket_id",)
    reconciles = True

    def __init__(
        self, host: str, port: int, mail_store: Path, policy: ToolPolicy | None = None
    ) -> None:
        super().__init__(policy)
        self.host, self.port, self.mail_store = host, port, mail_store

    @staticmethod
    def message_id(key: str) -> str:
        return f"<{key}@sluice.local>"

    @staticmethod
    def recipient(data: Acknowledge) -> Address:
        """The customer's address. The triage record carries none; a deployment maps ticket →
        customer address here (the ticket id is an :data:`~agents.tools.IDENTIFIER`)."""
        return Address(username=f"ticket-{data.ticket_id}", domain=CUSTOMER_DOMAIN)

    async def apply(self, data: Acknowledge, key: str) -> dict[str, Any]:
        to = self.recipient(data)
        msg = EmailMessage()
        msg["From"] = SENDER
        msg["To"] = to
        msg["Subject"] = f"We received your ticket {data.ticket_id}"
        msg["Message-ID"] = self.message_id(key)
        msg.set_content("Thank you: your ticket is with our team, who will answer soon.")
        try:
            await asyncio.to_thread(self._send, msg, to)
        except smtplib.SMTPRecipientsRefused as exc:
            raise EffectFailed(f"recipient refused: {exc}") from exc
        return {"message_id": msg["Message-ID"]}

    def _send(self, msg: EmailMessage, to: Address) -> None:
        # Explicit envelope: the server delivers to exactly this one address, whatever headers say.
        with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
            smtp.send_message(msg, from_addr=SENDER.addr_spec, to_addrs=[to.addr_spec])

    async def reconcile(self, data: Acknowledge, key: str) -> Reconciled:
        seen = await asyncio.to_thread(message_seen, self.mail_store, self.message_id(key))
        return Reconciled(seen, {"message_id": self.message_id(key)} if seen else None)
