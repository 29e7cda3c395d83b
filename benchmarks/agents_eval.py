"""Agent eval on the labeled sample set (``evals/``): quality, latency and tokens per event.

Runs both agents directly (no Kafka) on the configured provider — the offline local model unless
OPENAI_API_KEY / OPENAI_BASE_URL say otherwise — and prints, per agent:

- schema-valid rate: events that produced a schema-valid answer (possibly with business issues);
- business-valid rate: answers with no remaining business-rule issue;
- per-field accuracy against the labels (exact match; money to the cent, dates as dates);
- median latency per LLM call, and tokens per event (prompt + completion, every attempt);
- what the router would do at the configured threshold.

``make eval`` runs it; ``--limit N`` runs the first N of each set; ``--json`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, TypeVar

from agents.invoice import InvoiceExtractionAgent
from agents.llm import LLMClient
from agents.triage import TicketTriageAgent
from evals.documents import document_event, load_invoices, load_tickets
from schemas.errors import AgentError, SluiceError
from schemas.events import DocumentReceived, TicketReceived
from schemas.records import Usage
from streams import compose
from streams.logconfig import configure
from streams.router import route
from streams.settings import Settings

T = TypeVar("T")
TICKET_FIELDS = ("category", "priority", "sentiment", "team", "requires_human")
INVOICE_FIELDS = (
    "vendor_name",
    "invoice_number",
    "issue_date",
    "due_date",
    "currency",
    "subtotal",
    "tax",
    "total",
    "line_count",
)


@dataclass
class Report:
    name: str
    events: int = 0
    schema_valid: int = 0
    business_valid: int = 0
    correct: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    lanes: Counter[str] = field(default_factory=Counter)
    call_latencies_ms: list[int] = field(default_factory=list)
    tokens_per_event: list[int] = field(default_factory=list)
    event_seconds: list[float] = field(default_factory=list)

    def book(self, usage: Usage | None, seconds: float) -> None:
        self.event_seconds.append(seconds)
        if usage is not None:
            self.call_latencies_ms += [a.latency_ms for a in usage.per_attempt]
            self.tokens_per_event.append(usage.prompt_tokens + usage.completion_tokens)

    def summary(self, fields: tuple[str, ...]) -> dict[str, Any]:
        n = max(self.events, 1)
        return {
            "agent": self.name,
            "events": self.events,
            "schema_valid_rate": round(self.schema_valid / n, 3),
            "business_valid_rate": round(self.business_valid / n, 3),
            "field_accuracy": {f: round(self.correct[f] / n, 3) for f in fields},
            "median_call_latency_ms": statistics.median(self.call_latencies_ms or [0]),
            "median_event_seconds": round(statistics.median(self.event_seconds or [0]), 2),
            "tokens_per_event_median": statistics.median(self.tokens_per_event or [0]),
            "tokens_per_event_mean": round(statistics.mean(self.tokens_per_event or [0]), 1),
            "calls_per_event_mean": round(len(self.call_latencies_ms) / n, 2),
            "lanes": dict(self.lanes),
            "errors": dict(self.errors),
        }


def _same(expected: Any, got: Any) -> bool:
    if isinstance(got, Decimal):
        return expected is not None and Decimal(str(expected)) == got.quantize(Decimal("0.01"))
    if isinstance(got, date):
        return bool(expected == got.isoformat())
    if isinstance(got, str) and isinstance(expected, str):
        return got.strip().casefold() == expected.strip().casefold()
    return bool(expected == got)


async def _run(report: Report, call: Awaitable[T], usage_of: Callable[[T], Usage]) -> T | None:
    """Await one agent call and book it; a SluiceError counts as a dead letter, not a crash."""
    report.events += 1
    began = time.monotonic()
    try:
        result = await call
    except SluiceError as exc:
        report.errors[exc.reason] += 1
        report.lanes["deadletter"] += 1
        report.book(exc.usage if isinstance(exc, AgentError) else None, time.monotonic() - began)
        return None
    report.book(usage_of(result), time.monotonic() - began)
    report.schema_valid += 1
    return result


async def eval_tickets(agent: TicketTriageAgent, threshold: float, limit: int | None) -> Report:
    report = Report("ticket-triage")
    for t in load_tickets()[:limit]:
        call = agent.triage(TicketReceived.model_validate(t))
        result = await _run(report, call, lambda r: r.completion.usage)
        if result is None:
            continue
        report.business_valid += not result.completion.issues
        a = result.answer
        for f in TICKET_FIELDS:
            report.correct[f] += _same(t["expected"][f], getattr(a, f))
        decision = route(
            result.confidence.score,
            threshold,
            requires_human=a.requires_human,
            issues=result.completion.issues,
        )
        report.lanes[decision.lane] += 1
    return report


async def eval_invoices(
    agent: InvoiceExtractionAgent, threshold: float, limit: int | None
) -> Report:
    report = Report("invoice-extraction")
    for inv in load_invoices()[:limit]:
        call = agent.extract(DocumentReceived.model_validate(document_event(inv)))
        x = await _run(report, call, lambda r: r.completion.usage)
        if x is None:
            continue
        report.business_valid += not x.issues
        a = x.answer
        for f in INVOICE_FIELDS:
            if f == "line_count":
                report.correct[f] += len(a.line_items) == len(inv["line_items"])
            else:
                report.correct[f] += _same(inv[f], getattr(a, f))
        report.lanes[route(x.confidence.score, threshold, issues=x.issues).lane] += 1
    return report


async def main(limit: int | None) -> list[dict[str, Any]]:
    settings = Settings()
    llm = LLMClient(compose.llm_config(settings))
    llm.start()
    try:
        tickets = await eval_tickets(TicketTriageAgent(llm), settings.auto_threshold, limit)
        invoices = await eval_invoices(InvoiceExtractionAgent(llm), settings.auto_threshold, limit)
    finally:
        await llm.close()
    return [tickets.summary(TICKET_FIELDS), invoices.summary(INVOICE_FIELDS)]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configure("warning", "console")
    started = time.monotonic()
    results = asyncio.run(main(args.limit))
    if args.json:
        print(json.dumps(results, default=str))
    else:
        for r in results:
            print(f"\n== {r['agent']}: {r['events']} events")
            for k, v in r.items():
                if k not in ("agent", "events"):
                    print(f"  {k}: {v}")
    print(f"\nwall time {time.monotonic() - started:.0f}s")
