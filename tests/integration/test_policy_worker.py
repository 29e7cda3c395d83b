"""A routing policy file in a real worker: hard rules send confident results to review, and a bad
file stops the worker at start with the problem named (before it reads a record)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agents.testing.fault_server import answer_marker
from schemas.records import TicketTriaged
from streams.lanes import collect, end_offsets
from tests.integration.conftest import Isolated, fake_model_env, send_values, start_worker, stop
from tests.poison.corpus import TRIAGE_ANSWER

POLICY = """
[flows.tickets]
threshold = 0.9

[[flows.tickets.rules]]
name = "enterprise customer"
when = "event.customer_plan"
op = "in"
value = ["enterprise"]

[[flows.tickets.rules]]
name = "urgent"
when = "record.priority"
op = "=="
value = "urgent"
"""


def ticket(n: int, plan: str, **answer: object) -> bytes:
    body = f"Ticket {n}: charged twice. {answer_marker({**TRIAGE_ANSWER, **answer})}"
    return json.dumps({"ticket_id": f"T-{n}", "customer_plan": plan, "body": body}).encode()


async def test_hard_rules_in_a_policy_file_route_confident_results_to_review(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    env = fake_model_env(isolated.env, fault_server, SLUICE_POLICY_FILE=str(policy))
    values = [
        ticket(1, "pro", confidence=0.95, priority="medium"),  # clears 0.9, no rule: auto
        ticket(2, "enterprise", confidence=0.95, priority="medium"),  # rule: review
        ticket(3, "pro", confidence=0.95, priority="urgent"),  # rule on the record: review
        ticket(4, "pro", confidence=0.85, priority="medium"),  # under the file's 0.9: review
    ]
    start = await end_offsets(s, list(s.topics.lanes()))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        sent = await send_values(s.bootstrap_servers, s.topics.tickets_received, values)
        tally = await collect(s, start, set(sent), timeout_s=90)
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    assert tally.counts() == {"auto": 1, "review": 3, "deadletter": 0}, worker.log_tail()
    by_ticket = {
        r.ticket_id: r
        for lane in tally.lanes.values()
        for r in lane.values()
        if isinstance(r, TicketTriaged)
    }
    assert by_ticket["T-1"].route.lane == "auto"
    assert by_ticket["T-1"].route.threshold == 0.9
    assert "rule 'enterprise customer'" in by_ticket["T-2"].route.reason
    assert "rule 'urgent': record.priority == 'urgent'" in by_ticket["T-3"].route.reason
    assert "< threshold 0.900" in by_ticket["T-4"].route.reason


def test_a_bad_policy_file_stops_the_worker_at_start(isolated: Isolated, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(
        '[[flows.tickets.rules]]\nname = "x"\nwhen = "record.priorty"\nop = "=="\nvalue = 1\n'
    )
    env = {**isolated.env, "SLUICE_POLICY_FILE": str(policy)}
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "TicketTriaged has no field 'priorty'" in done.stderr + done.stdout


SPLIT_AND_AUDIT = """
[flows.tickets]
threshold = 0.8
action_threshold = 0.7
audit_rate = 1.0
"""


async def test_held_actions_and_audit_samples_are_copies_not_a_second_lane(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    policy = tmp_path / "policy.toml"
    policy.write_text(SPLIT_AND_AUDIT)
    env = fake_model_env(isolated.env, fault_server, SLUICE_POLICY_FILE=str(policy))
    route = {"action": "route_to_team", "confidence": 0.9}
    values = [
        ticket(
            1,
            "pro",
            confidence=0.95,
            actions=[route, {"action": "send_acknowledgement", "confidence": 0.5}],
        ),
        ticket(2, "pro", confidence=0.95, actions=[route]),
    ]
    start = await end_offsets(s, list(s.topics.lanes()))
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        sent = await send_values(s.bootstrap_servers, s.topics.tickets_received, values)
        tally = await collect(s, start, set(sent), timeout_s=90)
        # the copies follow their records; give them a moment, then read again
        tally = await collect(s, start, set(sent) | {("never", 0, 0)}, timeout_s=5)
        assert worker.alive(), worker.log_tail()
    finally:
        stop(worker)
    # Both events ended in auto, once; each also left a review copy, which is not a lane.
    assert tally.counts() == {"auto": 2, "review": 0, "deadletter": 0}, worker.log_tail()
    assert not tally.other_lane
    assert sorted(tally.copies.values()) == [1, 1]
    autos = {r.ticket_id: r for r in tally.lanes["auto"].values() if isinstance(r, TicketTriaged)}
    assert [a.action for a in autos["T-1"].actions] == ["route_to_team"]  # ack held back
    assert [a.action for a in autos["T-2"].actions] == ["route_to_team"]
