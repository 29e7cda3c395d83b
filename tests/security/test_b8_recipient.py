"""B8: a ticket id cannot choose who gets mail.

Tickets whose ``ticket_id`` carries an address list or a header (``x@evil.example>,
attacker@evil.example``, a CR/LF and a ``Bcc:``) go through a worker (the fault server answers with
high confidence: auto lane) to the executor. Their acknowledgement and routing are refused at the
tool boundary (``invalid_input``: an identifier matches a strict alphabet), so nothing is sent; an
honest ticket is acknowledged to exactly its one address. Checked where the mail lands: the SMTP
sink's store, envelope recipients and headers.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import ToolEffect
from tests.integration.conftest import (
    Isolated,
    Sinks,
    fake_model_env,
    send_values,
    start_worker,
)
from tests.integration.test_executor import read_all
from tests.poison.corpus import TRIAGE_ANSWER
from tests.security import lanes

HOSTILE = [
    "x@evil.example>, attacker@evil.example",
    "T-7\r\nBcc: attacker@evil.example",
    "T-8\nTo: attacker@evil.example",
]


def mails(store: Path) -> list[tuple[str, str]]:
    """(envelope sender, envelope recipients) of every message the SMTP sink accepted."""
    with contextlib.closing(sqlite3.connect(store)) as db:
        return db.execute("SELECT mail_from, rcpt_to FROM messages").fetchall()


def raw_headers(store: Path) -> str:
    with contextlib.closing(sqlite3.connect(store)) as db:
        rows = db.execute("SELECT message_id, subject FROM messages").fetchall()
    return repr(rows)


async def test_a_ticket_id_never_adds_a_recipient(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix
    env = fake_model_env({**isolated.env, **sinks.env}, fault_server)
    worker = start_worker(env, tmp_path / "worker.log", "--flow", "tickets")
    executor = start_worker(env, tmp_path / "executor.log", "--flow", "tickets", command="executor")
    acts = [
        {"action": "route_to_team", "confidence": 0.95},
        {"action": "send_acknowledgement", "confidence": 0.95},
    ]
    sure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.99})
    tickets = {f"ev-b8-{n}{run}": tid for n, tid in enumerate([*HOSTILE, "T-2"])}
    try:
        await send_values(
            s.bootstrap_servers,
            s.topics.tickets_received,
            [json.dumps({"event_id": ev, "ticket_id": tid, "body": f"Hi. {sure}"}).encode()
             for ev, tid in tickets.items()],
        )  # fmt: skip
        raw = await read_all(s, s.topics.effects, 2 * len(tickets), timeout_s=90)
        assert worker.alive(), worker.log_tail()
        assert executor.alive(), executor.log_tail()
        effects = [codec.decode_as(v, ToolEffect) for v in raw]
        honest = f"ev-b8-{len(HOSTILE)}{run}"
        for e in effects:
            if e.event_id == honest:
                assert e.status == "applied", e
            else:
                assert (e.status, e.reason) == ("refused", "invalid_input"), e
                assert "evil" not in (e.error or "")  # the refusal does not echo the input
        assert len(effects) == 2 * len(tickets)

        sent = mails(sinks.state / "mail.db")
        assert sent == [("support@sluice.local", "ticket-T-2@customers.sluice.local")], sent
        assert "evil" not in raw_headers(sinks.state / "mail.db")
        assert sinks.webhook_requests() == 1  # only the honest ticket was routed
    finally:
        lanes.kill(worker, executor)
