"""The golden sets as the input events a producer would write, labels left out.

``python -m evals.events tickets | sluice produce tickets.received - --key-field ticket_id``
puts the labelled tickets on a topic (``invoices`` with ``documents.received`` and
``--key-field document_id`` for the invoices, as PDFs and text). A live worker or ``sluice
replay`` then answers them, and ``sluice eval`` scores the answers against the labels by event id.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from evals.documents import document_event, load_invoices, load_tickets

#: What a ticket event carries; the rest of a golden line (``expected``, ``tags``) is the answer.
TICKET_FIELDS = (
    "event_id", "ticket_id", "channel", "subject", "body", "customer_id", "customer_plan",
    "created_at",
)  # fmt: skip


def golden_events(flow: str) -> list[dict[str, Any]]:
    """The input events of ``flow``'s golden set (``tickets`` or ``invoices``), in file order."""
    if flow == "tickets":
        return [{k: t[k] for k in TICKET_FIELDS if k in t} for t in load_tickets()]
    if flow == "invoices":
        return [document_event(inv) for inv in load_invoices()]
    raise ValueError(f"no golden set for flow {flow!r}; there are tickets and invoices")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("flow", choices=["tickets", "invoices"])
    args = parser.parse_args(argv)
    for event in golden_events(args.flow):
        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
