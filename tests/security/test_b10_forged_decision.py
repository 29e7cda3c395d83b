"""B10: a ReviewDecision forged onto ``tickets.reviewed`` by someone who is no reviewer ran.

Worker → review lane → (forged decisions | a reviewer's decision) → executor → sinks, all real
processes on real Kafka, Redis and sinks. Five tickets go to review. Onto four of them, decisions
are forged the ways an attacker with write access to the reviewed topic could: (a) unsigned,
(b) signed with a wrong secret and (b') with an unknown key id, (c) validly signed but by a name
that is not in the reviewers file, (d) validly signed by a reviewer but with the embedded record
swapped for one routed to another team. Each is dead-lettered as ``decision_unverified`` with its
reason and nothing reaches a sink for it; (e) a reviewer's approval through the review API runs.
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import DeadLetter, ReviewDecision, Source, TicketTriaged, ToolEffect
from streams.decisions import DecisionKeys, sha256
from streams.topics import read_to_end
from tests.integration.conftest import Isolated, Sinks, free_port, send_values
from tests.integration.test_executor import read_all
from tests.integration.test_review_effects import review_env, running
from tests.integration.test_review_service import Api, wait_for
from tests.poison.corpus import TRIAGE_ANSWER

SECRET_K2, SECRET_K1 = secrets.token_hex(20), secrets.token_hex(20)
KEYS = f"k2:{SECRET_K2},k1:{SECRET_K1}"
"""The deployment's keys (SLUICE_DECISION_KEYS): the attacker of (c) and (d) holds them too."""


def forge(result: TicketTriaged, where: Source, value: bytes, **over: Any) -> ReviewDecision:
    """An approval of the review-lane record at ``where``, as the review desk would write it."""
    fields: dict[str, Any] = {
        "event_id": result.event_id, "flow": "tickets", "reviewer": "alice",
        "verdict": "approve", "corrections": {}, "comment": None,
        "model_confidence": result.confidence, "decided_at": datetime.now(UTC),
        "decision_id": uuid.uuid4().hex, "item": where, "record": value,
        "item_sha256": sha256(value),
    }  # fmt: skip
    return ReviewDecision(**{**fields, **over})


def forged_on(dead: DeadLetter) -> str:
    """Which ticket a dead-lettered decision was forged on."""
    decision = codec.decode_as(dead.original_value or b"", ReviewDecision)
    return decision.event_id.split("-")[0]


async def test_forged_decisions_are_dead_letters_and_a_reviewers_decision_runs(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix.strip(".")
    port = free_port()
    env = review_env(isolated, sinks, fault_server, tmp_path, port, SLUICE_DECISION_KEYS=KEYS)
    acts = [
        {"action": "route_to_team", "confidence": 0.5},
        {"action": "send_acknowledgement", "confidence": 0.6},
    ]
    unsure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.5})
    names = ["unsigned", "wrongkey", "unknownkid", "mallory", "swapped", "genuine"]
    tickets = [
        {"event_id": f"{n}-{run}", "ticket_id": f"T-{i}", "body": f"Charged twice. {unsure}"}
        for i, n in enumerate(names)
    ]
    keys = DecisionKeys.parse(KEYS)
    with running(env, tmp_path) as (_, executor, service):
        await send_values(
            s.bootstrap_servers,
            s.topics.tickets_received,
            [json.dumps(t).encode() for t in tickets],
        )
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            await wait_for(api, service, len(names))
            lane: dict[str, tuple[TicketTriaged, Source, bytes]] = {}
            async for m in read_to_end(s, [s.topics.tickets_review]):
                record = codec.decode_as(m.value, TicketTriaged)
                lane[record.event_id.split("-")[0]] = (
                    record, Source(topic=m.topic, partition=m.partition, offset=m.offset), m.value
                )  # fmt: skip
            swapped = lane["swapped"][0].model_copy(update={"team": "account_security"})
            forged = [
                forge(*lane["unsigned"]),
                DecisionKeys.parse(f"k2:{secrets.token_hex(20)}").sign(forge(*lane["wrongkey"])),
                DecisionKeys.parse(f"k9:{SECRET_K2}").sign(forge(*lane["unknownkid"])),
                keys.sign(forge(*lane["mallory"], reviewer="mallory")),
                keys.sign(forge(*lane["swapped"], record=codec.encode(swapped))),
            ]
            await send_values(
                s.bootstrap_servers, s.topics.tickets_reviewed, [codec.encode(d) for d in forged]
            )
            genuine = next(i for i in await api.pending() if i["event_id"] == f"genuine-{run}")
            status, body = await api.call("POST", f"/api/items/{genuine['id']}/approve")
            assert status == 200, body

        dead = [
            codec.decode_as(v, DeadLetter) for v in await read_all(s, s.topics.deadletter, 5, 90)
        ]
        raw = await read_all(s, s.topics.effects, 2, timeout_s=60)
        assert executor.alive(), executor.log_tail()
    why = {forged_on(d): (d.reason, d.error_message) for d in dead}
    assert why == {
        "unsigned": ("decision_unverified", "the decision is not signed"),
        "wrongkey": ("decision_unverified", "the decision's signature does not match its content"),
        "unknownkid": ("decision_unverified", "the decision is signed with an unknown key id 'k9'"),
        "mallory": ("decision_unverified", "'mallory' is not in the reviewers file"),
        "swapped": (
            "decision_unverified",
            "the approved record differs from the review-lane record",
        ),
    }, executor.log_tail()
    effects = sorted(
        (e.event_id, e.tool, e.status, e.source)
        for e in (codec.decode_as(v, ToolEffect) for v in raw)
    )
    assert effects == [
        (f"genuine-{run}", "route_to_team", "applied", "reviewed"),
        (f"genuine-{run}", "send_acknowledgement", "applied", "reviewed"),
    ]
    assert (sinks.webhook_requests(), sinks.mails()) == (1, 1)
