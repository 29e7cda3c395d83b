"""The two built-in flows, written against the public flow API like any user's flow.

- ``tickets``: support tickets (``tickets.received``) → :class:`TicketTriageAgent` →
  :class:`TicketTriaged` on ``tickets.auto`` / ``tickets.review``.
- ``invoices``: documents (``documents.received``: PDF bytes, text or a path) →
  :class:`InvoiceExtractionAgent` → :class:`InvoiceExtracted` on ``invoices.auto`` /
  ``invoices.review``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import get_args

from agents.base import AgentResult
from agents.calibration import Calibration, load_calibration
from agents.invoice import (
    CENT,
    NO_INVOICE_NUMBER,
    Extraction,
    InvoiceExtractionAgent,
    business_problems,
)
from agents.invoice import PROMPT_VERSION as INVOICE_PROMPT
from agents.tools import Action
from agents.tools import Source as DecisionSource
from agents.triage import PROMPT_VERSION as TRIAGE_PROMPT
from agents.triage import TicketTriageAgent, Triage
from schemas.events import DocumentReceived, TicketReceived
from schemas.records import InvoiceExtracted, LineItem, Team, TicketTriaged
from streams.flow import Envelope, Flow, FlowSpec, Runtime, register_flow

QUANTITY = Decimal("0.001")


def fit(value: Decimal, step: Decimal) -> Decimal:
    """Round to the Avro scale. The agent's schema already bounds amounts below 1e15 (finite),
    so the result fits decimal(18, 2) and decimal(12, 3)."""
    return value.quantize(step, rounding=ROUND_HALF_UP)


def ticket_record(
    ticket: TicketReceived, result: AgentResult[Triage], envelope: Envelope
) -> TicketTriaged:
    """The ``TicketTriaged`` record of one triaged ticket."""
    a = result.answer.answer
    return TicketTriaged(
        **envelope,
        ticket_id=ticket.ticket_id,
        category=a.category,
        priority=a.priority,
        summary=a.summary,
        sentiment=a.sentiment,
        team=a.team,
        requires_human=a.requires_human,
        reasoning=a.reasoning,
        actions=result.answer.actions,
    )


def ticket_unanswered(ticket: TicketReceived, envelope: Envelope) -> TicketTriaged:
    """The ticket for a person to triage while the model cannot be asked (the breaker's human
    fallback): category ``other``, priority ``medium``, no team and no actions — placeholders
    the reviewer corrects — and ``requires_human``."""
    return TicketTriaged(
        **envelope,
        ticket_id=ticket.ticket_id,
        category="other",
        priority="medium",
        summary=f"Not triaged (the model was not called): {ticket.subject}"[:500],
        requires_human=True,
        reasoning=envelope["route"].reason,
    )


def invoice_record(
    event: DocumentReceived, result: AgentResult[Extraction], envelope: Envelope
) -> InvoiceExtracted:
    """The ``InvoiceExtracted`` record of one extracted document, amounts at Avro scale."""
    x = result.answer
    a = x.answer
    return InvoiceExtracted(
        **envelope,
        document_id=event.document_id,
        vendor_name=a.vendor_name,
        invoice_number=a.invoice_number,
        issue_date=a.issue_date,
        due_date=a.due_date,
        currency=a.currency.upper(),
        line_items=[
            LineItem(
                description=i.description,
                quantity=fit(i.quantity, QUANTITY),
                unit_price=fit(i.unit_price, CENT),
                amount=fit(i.amount, CENT),
            )
            for i in a.line_items
        ],
        subtotal=fit(a.subtotal, CENT),
        tax=fit(a.tax, CENT),
        total=fit(a.total, CENT),
        field_confidence=x.field_confidence,
        # unresolved problems after every re-ask, then review flags (no invoice number)
        validation_issues=result.issues,
        content_type=x.document.content_type,
        document_kind=a.document_kind,
    )


def calibration_for(rt: Runtime, prompt_version: str) -> Calibration | None:
    """The calibration shipped next to ``prompt_version`` for the model in use (``sluice
    calibrate`` writes it), unless ``SLUICE_CALIBRATION=off``. Without one, the flow routes on
    the hand-weighted score."""
    if rt.settings.calibration == "off":
        return None
    return load_calibration(prompt_version, rt.llm.model)


def tickets_flow(rt: Runtime) -> Flow[TicketReceived, Triage]:
    """Ticket triage on the runtime's LLM client."""
    version = rt.settings.prompt_versions.get("tickets", TRIAGE_PROMPT)
    agent = TicketTriageAgent(rt.llm, version, calibration=calibration_for(rt, version))
    return Flow(
        "tickets",
        TicketReceived,
        agent,
        ticket_record,
        unanswered=ticket_unanswered,
    )


def invoices_flow(rt: Runtime) -> Flow[DocumentReceived, Extraction]:
    """Invoice extraction on the runtime's LLM client; documents by path from document_dir."""
    version = rt.settings.prompt_versions.get("invoices", INVOICE_PROMPT)
    agent = InvoiceExtractionAgent(
        rt.llm,
        rt.settings.document_dir,
        version,
        calibration=calibration_for(rt, version),
        pdf_budget_s=rt.settings.pdf_budget_s,
    )
    return Flow("invoices", DocumentReceived, agent, invoice_record)


def ticket_actions(record: TicketTriaged, source: DecisionSource) -> list[Action]:
    """Each action the triage agent proposed, with its own confidence. Their names come from
    model output: the executor's allowlist decides which of them may ever run, and each tool's
    input model types their arguments (``route_to_team``'s team is a ``Team``, whoever wrote it)."""
    actions = []
    for a in record.actions:
        data: dict[str, object] = {"event_id": record.event_id, "ticket_id": record.ticket_id}
        if a.action == "route_to_team":
            data["team"] = a.target or record.team
        elif a.target is not None:
            data["target"] = a.target
        actions.append(Action(a.action, data, record.agent.name, a.confidence, source))
    return actions


def invoice_actions(record: InvoiceExtracted, source: DecisionSource) -> list[Action]:
    """Post the invoice to the ledger, gated by the record's confidence."""
    data = {
        "event_id": record.event_id,
        "document_id": record.document_id,
        "vendor_name": record.vendor_name,
        "invoice_number": record.invoice_number,
        "issue_date": record.issue_date.isoformat(),
        "currency": record.currency,
        "total": str(record.total),
        "document_kind": record.document_kind,
    }
    return [Action("post_invoice", data, record.agent.name, record.confidence, source)]


def invoice_amount(record: InvoiceExtracted) -> Decimal:
    """The money an extracted invoice moves: its total (negative for a credit note)."""
    return record.total


def ticket_rules(record: TicketTriaged) -> list[str]:
    """A triaged ticket's business rules: each action's arguments typed. ``route_to_team`` routes
    to a :data:`Team` (its target, else the record's team); no other action takes a target."""
    teams = get_args(Team)
    problems = []
    for n, a in enumerate(record.actions):
        if a.action == "route_to_team":
            team = a.target if a.target is not None else record.team
            if team not in teams:
                problems.append(
                    f"actions[{n}] route_to_team: {team!r} is not a team ({', '.join(teams)})"
                )
        elif a.target is not None:
            problems.append(f"actions[{n}] {a.action} takes no target, not {a.target!r}")
    return problems


def invoice_rules(record: InvoiceExtracted) -> list[str]:
    """An extracted invoice's business rules, as an accounts-payable clerk checks them: the
    agent's own (:func:`agents.invoice.business_problems`, with its tolerances), a currency
    written as its code, and an invoice number assigned where the document printed none."""
    problems = business_problems(record)
    if record.currency != record.currency.upper():
        problems.append(f"currency {record.currency!r}: write the ISO 4217 code in capitals")
    number = record.invoice_number
    if number is not None and not number.strip():
        problems.append("invoice_number is blank")
    elif number is None and NO_INVOICE_NUMBER in record.validation_issues:
        problems.append("invoice_number: none printed on the document; assign one (edit)")
    return problems


TICKETS = register_flow(
    FlowSpec(
        "tickets",
        tickets_flow,
        record_model=TicketTriaged,
        actions=ticket_actions,
        rules=ticket_rules,
    )
)
INVOICES = register_flow(
    FlowSpec(
        "invoices",
        invoices_flow,
        record_model=InvoiceExtracted,
        topics={"received": "documents.received"},
        actions=invoice_actions,
        rules=invoice_rules,
        amount=invoice_amount,
    )
)
