"""A provider outage and the operator's controls, on two real workers, an executor, real Kafka,
Redis, the sinks and a fault server that counts every model call.

- The endpoint starts failing every call under a steady stream: the shared breaker opens within
  its window on both workers; every later event is parked (``breaker_open``) with no model call;
  the endpoint heals, half-open trials close it, and ``sluice dlq redrive`` sends every parked
  and failed event back — each ends in a lane once, and the sinks hold exactly one effect per
  action (none lost, none doubled); a second redrive sends nothing.
- The kill switch stops both workers' model calls within a second and ``close`` resumes them.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaProducer

from agents.testing.fault_server import FaultServer, answer_marker
from schemas.records import DeadLetter
from streams.lanes import Tally, collect, end_offsets
from tests.integration.conftest import ROOT, Isolated, Sinks, Worker, start_worker, stop
from tests.integration.test_breaker_worker import BREAKER
from tests.poison.corpus import TRIAGE_ANSWER

ACTS = [
    {"action": "route_to_team", "confidence": 0.9},
    {"action": "send_acknowledgement", "confidence": 0.95},
]
Coord = tuple[str, int, int]


def tickets(run: str, first: int, n: int) -> list[bytes]:
    """Tickets the model (when it answers) routes to auto with two effects each."""
    answer = answer_marker({**TRIAGE_ANSWER, "actions": ACTS, "confidence": 0.95})
    return [
        json.dumps(
            {
                "event_id": f"ev-{i}{run}",
                "ticket_id": f"T-{i}",
                "body": f"Charged twice, refund? {answer}",
            }
        ).encode()  # fmt: skip
        for i in range(first, first + n)
    ]


async def paced(bootstrap: str, topic: str, values: list[bytes], per_s: float) -> list[Coord]:
    """Produce ``values`` at ``per_s`` a second (load, not a burst), keyed k<i>."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    coords = []
    try:
        for i, value in enumerate(values):
            meta = await producer.send_and_wait(topic, value, key=f"k{i}".encode())
            coords.append((topic, meta.partition, meta.offset))
            await asyncio.sleep(1 / per_s)
    finally:
        await producer.stop()
    return coords


def sluice(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def summary(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """The counts line ``sluice dlq redrive`` prints on stderr (log lines may follow it)."""
    return next(json.loads(x) for x in proc.stderr.splitlines() if x.startswith('{"matched"'))


def reasons(tally: Tally) -> list[str]:
    return [r.reason for r in tally.lanes["deadletter"].values() if isinstance(r, DeadLetter)]


def alive(*workers: Worker) -> None:
    for w in workers:
        assert w.alive(), w.log_tail()


async def both_working(isolated: Isolated, workers: list[Worker], run: str) -> int:
    """Warm up until each worker has routed an event (both hold partitions); returns how many
    tickets were sent."""
    s = isolated.settings
    sent = 0
    deadline = time.monotonic() + 90
    while not all('"event.routed"' in w.log.read_text() for w in workers):
        alive(*workers)
        assert time.monotonic() < deadline, [w.log_tail() for w in workers]
        start = await end_offsets(s, list(s.topics.lanes()))
        coords = await paced(s.bootstrap_servers, s.topics.tickets_received,
                             tickets(run, sent, 6), per_s=50)  # fmt: skip
        sent += 6
        await collect(s, start, set(coords), timeout_s=60)
    return sent


async def until(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.2)


async def test_outage_parks_events_without_calls_and_redrive_runs_each_effect_once(
    isolated: Isolated, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix
    with FaultServer(latency_ms=5, fail_with=("500",)) as server:
        env = {**isolated.env, **sinks.env, **BREAKER, "OPENAI_BASE_URL": server.base_url}
        workers = [start_worker(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
        executor = start_worker(env, tmp_path / "executor.log", command="executor")
        try:
            warm = await both_working(isolated, workers, run)

            # The endpoint fails every call, under a steady 20 events/s.
            server.fail_rate = 1.0
            calls = len(server.calls)
            start = await end_offsets(s, list(s.topics.lanes()))
            coords = await paced(s.bootstrap_servers, s.topics.tickets_received,
                                 tickets(run, 100, 40), per_s=20)  # fmt: skip
            outage = await collect(s, start, set(coords), timeout_s=60)
            assert outage.seen() == set(coords)
            failed = reasons(outage)
            assert len(failed) == 40
            assert set(failed) == {"provider_unavailable", "breaker_open"}
            called = failed.count("provider_unavailable")
            # Every model call was a counted failure; every other event was parked without one.
            assert len(server.calls) - calls == called
            assert called <= 10  # it opened within its window (10 calls)
            for w in workers:  # both workers saw it open (one shared breaker)
                assert '"reason": "breaker_open"' in w.log.read_text(), w.log_tail()

            # The endpoint heals: after the wait, two trials (one at a time) close the breaker.
            server.fail_rate = 0.0
            await asyncio.sleep(3.5)
            for i in (200, 201):
                start = await end_offsets(s, list(s.topics.lanes()))
                trial = await paced(s.bootstrap_servers, s.topics.tickets_received,
                                    tickets(run, i, 1), per_s=50)  # fmt: skip
                got = await collect(s, start, set(trial), timeout_s=60)
                assert got.counts()["auto"] == 1, reasons(got)
            listed = sluice(env, "breaker", "status").stdout.splitlines()
            status = [json.loads(line) for line in listed]
            assert {x["breaker"]: x["state"] for x in status} == {
                "tickets": "closed",
                "invoices": "closed",
                f"endpoint:{server.base_url}": "closed",
            }
            for x in status[:1] + status[2:]:  # tickets and the endpoint: counted transitions
                assert x["transitions.closed>open"] == "1", x
                assert x["transitions.half_open>closed"] == "1", x

            # Redrive every dead letter of the outage.
            dry = sluice(env, "dlq", "redrive", "--flow", "tickets", "--dry-run")
            assert dry.returncode == 0, dry.stderr
            assert summary(dry) == {"matched": 40, "would_redrive": 40}
            start = await end_offsets(s, list(s.topics.lanes()))
            done = sluice(env, "dlq", "redrive", "--flow", "tickets", "--why", "endpoint healed")
            assert done.returncode == 0, done.stderr
            lines = [json.loads(line) for line in done.stdout.splitlines()]
            assert {x["status"] for x in lines} == {"redriven"}
            assert len(lines) == 40
            sent = {(t, int(p), int(o)) for t, p, o in
                    (x["sent_to"].rsplit("/", 2) for x in lines)}  # fmt: skip
            redriven = await collect(s, start, sent, timeout_s=90)
            assert redriven.counts()["auto"] == 40, reasons(redriven)
            assert not redriven.duplicates

            # Exactly one effect per action of every auto ticket, at the sinks.
            auto_tickets = warm + 2 + 40
            await until(lambda: sinks.mails() >= auto_tickets, 120, "effects did not all run")
            await until(lambda: sinks.webhook_requests() >= auto_tickets, 60, "routes missing")
            await asyncio.sleep(2)
            assert (sinks.webhook_requests(), sinks.mails()) == (auto_tickets, auto_tickets)

            again = sluice(env, "dlq", "redrive", "--flow", "tickets", "--why", "twice")
            assert summary(again) == {
                "matched": 40, "already_redriven": 40
            }  # fmt: skip
            alive(*workers, executor)
        finally:
            for w in (executor, *workers):
                stop(w)


async def test_the_kill_switch_stops_two_workers_within_a_second(
    isolated: Isolated, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix
    with FaultServer(latency_ms=20) as server:
        env = {**isolated.env, **BREAKER, "OPENAI_BASE_URL": server.base_url}
        workers = [start_worker(env, tmp_path / f"worker{i}.log") for i in (1, 2)]
        try:
            await both_working(isolated, workers, run)
            start = await end_offsets(s, list(s.topics.lanes()))
            load = asyncio.create_task(
                paced(
                    s.bootstrap_servers,
                    s.topics.tickets_received,
                    tickets(run, 1000, 320),
                    per_s=20,
                )  # fmt: skip
            )
            await asyncio.sleep(2)
            refused = await asyncio.to_thread(sluice, env, "breaker", "open", "--flow", "tickets")
            assert refused.returncode == 2  # no reason, no kill switch
            assert "--reason" in refused.stderr
            opened = await asyncio.to_thread(
                sluice, env, "breaker", "open", "--flow", "tickets", "--reason", "drill",
                "--by", "ops",
            )  # fmt: skip
            assert opened.returncode == 0, opened.stderr
            assert json.loads(opened.stdout)["state"] == "forced_open"
            await asyncio.sleep(1.0)
            stopped_at = len(server.calls)
            await asyncio.sleep(2.0)
            assert len(server.calls) == stopped_at  # no model call from 1 s after the switch

            closed = await asyncio.to_thread(
                sluice, env, "breaker", "close", "--flow", "tickets", "--reason", "drill over",
                "--by", "ops",
            )  # fmt: skip
            assert closed.returncode == 0, closed.stderr
            status = json.loads(closed.stdout)
            assert (status["state"], status["by"]) == ("closed", "ops")
            assert status["reason"] == "drill over"
            await asyncio.sleep(1.0)
            resumed_at = len(server.calls)
            await asyncio.sleep(2.0)
            assert len(server.calls) > resumed_at + 20  # both calling again at ~20/s
            coords = await load
            tally = await collect(s, start, set(coords), timeout_s=60)
            assert tally.seen() == set(coords)  # every event in a lane, none lost
            assert set(reasons(tally)) == {"breaker_open"}
            for w in workers:
                assert '"reason": "breaker_open"' in w.log.read_text(), w.log_tail()
            alive(*workers)
        finally:
            for w in workers:
                stop(w)
    audit = sluice(env, "consume", s.topics.audit, "--from-beginning", "--idle-timeout", "3")
    records = [json.loads(line)["value"] for line in audit.stdout.splitlines()]
    assert [(r["action"], r["target"], r["reason"]) for r in records] == [
        ("breaker.open", "breaker:tickets", "drill"),
        ("breaker.close", "breaker:tickets", "drill over"),
    ]
    assert all(r["by"] == "ops" and r["at"] for r in records)
