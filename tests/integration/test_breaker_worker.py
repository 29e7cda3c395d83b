"""The circuit breaker in a real worker: the model endpoint fails, the breaker opens, events are
dead-lettered ``breaker_open`` without a model call (counted at the fault server), the endpoint
heals, and trial calls close it. (The kill switch, on two workers: test_outage.py.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agents.testing.fault_server import FaultServer, answer_marker
from schemas.records import DeadLetter
from streams.lanes import Tally, collect, end_offsets
from tests.integration.conftest import Isolated, Worker, send_values, start_worker, stop
from tests.poison.corpus import TRIAGE_ANSWER

BREAKER = {
    "SLUICE_BREAKER_WINDOW": "10",
    "SLUICE_BREAKER_MIN_CALLS": "4",
    "SLUICE_BREAKER_WAIT_S": "3",
    "SLUICE_BREAKER_HALF_OPEN_CALLS": "2",
    "SLUICE_LLM_MAX_ATTEMPTS": "1",
}


def tickets(first: int, n: int) -> list[bytes]:
    answer = answer_marker(TRIAGE_ANSWER)
    return [
        json.dumps({"ticket_id": f"T-{i}", "body": f"Ticket {i}: refund? {answer}"}).encode()
        for i in range(first, first + n)
    ]


async def send_and_collect(isolated: Isolated, worker: Worker, values: list[bytes]) -> Tally:
    s = isolated.settings
    start = await end_offsets(s, list(s.topics.lanes()))
    sent = await send_values(s.bootstrap_servers, s.topics.tickets_received, values)
    tally = await collect(s, start, set(sent), timeout_s=60)
    assert worker.alive(), worker.log_tail()
    assert tally.seen() == set(sent), worker.log_tail()
    return tally


def reasons(tally: Tally) -> list[str]:
    return sorted(r.reason for r in tally.lanes["deadletter"].values() if isinstance(r, DeadLetter))


async def test_an_outage_opens_the_breaker_and_healing_closes_it(
    isolated: Isolated, tmp_path: Path
) -> None:
    with FaultServer(fail_rate=1.0, fail_with=("500",)) as server:
        env = {**isolated.env, **BREAKER, "OPENAI_BASE_URL": server.base_url}
        worker = start_worker(env, tmp_path / "worker.log")
        try:
            # The endpoint is down: the first calls fail and fill the window.
            first = await send_and_collect(isolated, worker, tickets(0, 4))
            assert reasons(first) == ["provider_unavailable"] * 4
            calls_before = len(server.calls)
            assert calls_before == 4

            # Open: events are dead-lettered at once, and the model is not called.
            parked = await send_and_collect(isolated, worker, tickets(4, 6))
            assert reasons(parked) == ["breaker_open"] * 6
            assert len(server.calls) == calls_before

            # The endpoint heals; after the wait, trial calls close the breaker.
            server.fail_rate = 0.0
            await asyncio.sleep(3.5)
            for i in (10, 11):  # the two trials, one at a time
                trial = await send_and_collect(isolated, worker, tickets(i, 1))
                assert trial.counts()["deadletter"] == 0, reasons(trial)
            assert len(server.calls) == calls_before + 2  # nothing but the trials

            healed = await send_and_collect(isolated, worker, tickets(12, 5))
            assert healed.counts()["deadletter"] == 0, reasons(healed)
            assert '"breaker.transition"' in worker.log.read_text()
        finally:
            stop(worker)
