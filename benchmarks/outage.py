"""A scripted provider outage under load, end to end (``make outage``).

Two workers and an executor (their own consumer groups and topics, on the broker and Redis of
``make up``), the sinks (:mod:`agents.sinks`) and a fault server in this process that stamps
every model call. Events (support tickets whose answers route them to auto with two effects
each) are produced at ``--rate`` per second throughout:

1. ``--healthy-s`` seconds with the endpoint answering;
2. ``--outage-s`` seconds with every call failing (HTTP 500): the shared breaker opens, events
   are parked as ``breaker_open`` dead letters, half-open trials fail and re-open it;
3. ``--healed-s`` seconds answering again: trials close the breaker.

Then ``sluice dlq redrive --flow tickets`` sends every dead letter of the run back, and the run
waits until every event and every redriven copy is in a lane and every effect at its sink.

It reports, from the fault server's stamps and the workers' ``breaker.transition`` lines: model
calls while the breaker was open (must be 0), trial calls in half-open, and calls made by
retries of events admitted before it opened; and from the topics and sinks: events parked,
failed, redriven, **lost** (an input whose final outcome is not a lane, or a redriven event not
back in one) and **duplicates** (effects beyond one per action at the sinks). Exits 1 unless
calls-while-open, lost and duplicates are all 0. Writes ``.local/outage.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from agents.testing.fault_server import FaultServer, answer_marker
from schemas.records import DeadLetter
from streams import compose
from streams.compose import breaker_for, endpoint_breaker_name
from streams.dlq import Filter, Redriver, read_letters
from streams.lanes import collect, end_offsets
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.poison.corpus import TRIAGE_ANSWER

ROOT = Path(__file__).resolve().parents[1]
ACTS = [
    {"action": "route_to_team", "confidence": 0.9},
    {"action": "send_acknowledgement", "confidence": 0.95},
]
Coord = tuple[str, int, int]
WORKERS = ("worker1", "worker2")
IN_FLIGHT_S = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rig:
    """This run's processes, topics (suffix) and group ids (app id)."""

    def __init__(self, state: Path, base_url: str, args: argparse.Namespace) -> None:
        tag = uuid.uuid4().hex[:8]
        self.state = state
        self.sinks_dir = state / "sinks"
        self.sinks_dir.mkdir(parents=True, exist_ok=True)
        http, smtp = free_port(), free_port()
        self.env = {
            **os.environ,
            "SLUICE_APP_ID": f"outage-{tag}",
            "SLUICE_TOPIC_SUFFIX": f".outage-{tag}",
            "SLUICE_LOG_FORMAT": "json",
            "SLUICE_LOG_LEVEL": "info",
            "OPENAI_BASE_URL": base_url,
            "SLUICE_BREAKER_WAIT_S": str(args.wait_s),
            "SLUICE_WEBHOOK_URL": f"http://127.0.0.1:{http}/hooks",
            "SLUICE_SMTP_PORT": str(smtp),
            "SLUICE_MAIL_STORE": str(self.sinks_dir / "mail.db"),
            "SLUICE_LEDGER_PATH": str(self.sinks_dir / "ledger.db"),
        }
        self.ports = (http, smtp)
        self.settings = Settings().model_copy(
            update={
                "app_id": self.env["SLUICE_APP_ID"],
                "topic_suffix": self.env["SLUICE_TOPIC_SUFFIX"],
                "openai_base_url": base_url,
            }
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *argv: str) -> None:
        with open(self.state / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", *argv], env=self.env, cwd=ROOT,
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def start_all(self) -> None:
        http, smtp = self.ports
        self.start("sinks", "agents.sinks", "--state", str(self.sinks_dir),
                   "--http-port", str(http), "--smtp-port", str(smtp))  # fmt: skip
        for name in WORKERS:
            self.start(name, "streams.cli", "worker")
        self.start("executor", "streams.cli", "executor")

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}: see {self.state}/{name}.log")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def sink_counts(self) -> tuple[int, int]:
        """(webhook requests, mails) at the sinks."""
        counts = []
        for db, table in (("webhook.db", "requests"), ("mail.db", "messages")):
            path = self.sinks_dir / db
            if not path.exists():
                counts.append(0)
                continue
            with contextlib.closing(sqlite3.connect(path)) as conn:
                counts.append(int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))
        return counts[0], counts[1]

    def transitions(self) -> list[tuple[float, str, str, str]]:
        """(time, breaker, before, after) from both workers' logs, in time order."""
        out = []
        for name in WORKERS:
            for line in (self.state / f"{name}.log").read_text(errors="replace").splitlines():
                if '"breaker.transition"' not in line:
                    continue
                r = json.loads(line)
                at = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
                out.append((at, r["flow"], r["before"], r["after"]))
        return sorted(out)


def ticket(i: int, run: str) -> bytes:
    answer = answer_marker({**TRIAGE_ANSWER, "actions": ACTS, "confidence": 0.95})
    return json.dumps({"event_id": f"ev-{i}{run}", "ticket_id": f"T-{i}",
                       "body": f"Charged twice, please refund. {answer}"}).encode()  # fmt: skip


async def produce(rig: Rig, server: FaultServer, args: argparse.Namespace) -> list[Coord]:
    """The load, with the endpoint failing from ``healthy_s`` to ``healthy_s + outage_s``."""
    s = rig.settings
    producer = AIOKafkaProducer(bootstrap_servers=s.bootstrap_servers, acks="all")
    await producer.start()
    coords: list[Coord] = []
    began = time.monotonic()
    total_s = args.healthy_s + args.outage_s + args.healed_s
    try:
        i = 0
        while (elapsed := time.monotonic() - began) < total_s:
            failing = args.healthy_s <= elapsed < args.healthy_s + args.outage_s
            server.fail_rate = 1.0 if failing else 0.0
            sent = await producer.send_and_wait(
                s.topics.tickets_received, ticket(i, s.topic_suffix), key=f"k{i}".encode()
            )
            coords.append((sent.topic, sent.partition, sent.offset))
            i += 1
            await asyncio.sleep(max(0.0, began + i / args.rate - time.monotonic()))
            if i % 100 == 0:
                rig.check()
                print(f"  {elapsed:6.1f}s produced {i}  fail_rate={server.fail_rate:.0f}  "
                      f"calls={len(server.calls)}", flush=True)  # fmt: skip
    finally:
        server.fail_rate = 0.0
        await producer.stop()
    return coords


def intervals(
    transitions: list[tuple[float, str, str, str]], name: str, end: float
) -> dict[str, list[tuple[float, float]]]:
    """Per state other than closed, the time intervals breaker ``name`` spent in it."""
    out: dict[str, list[tuple[float, float]]] = {}
    state, since = "closed", 0.0
    for at, who, _before, after in transitions:
        if who != name or after == state:
            continue
        if state != "closed":
            out.setdefault(state, []).append((since, at))
        state, since = after, at
    if state != "closed":
        out.setdefault(state, []).append((since, end))
    return out


def inside(at: float, spans: list[tuple[float, float]]) -> bool:
    return any(a < at < b for a, b in spans)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    state = Path(args.state) / time.strftime("%Y%m%dT%H%M%S")
    state.mkdir(parents=True, exist_ok=True)
    with FaultServer(latency_ms=args.latency_ms, fail_with=("500",)) as server:
        rig = Rig(state, server.base_url, args)
        s = rig.settings
        await ensure_topics(s)
        start = await end_offsets(s, list(s.topics.lanes()))
        rig.start_all()
        try:
            await stable_group(rig, args.startup_s)
            print(f"load: {args.rate}/s; healthy {args.healthy_s}s, outage {args.outage_s}s, "
                  f"healed {args.healed_s}s; state in {state}", flush=True)  # fmt: skip
            coords = await produce(rig, server, args)
            produced_at = time.time()
            first = await collect(s, start, set(coords), timeout_s=args.settle_s)
            lost_first = len(set(coords) - first.seen())
            reasons = Counter(
                r.reason for r in first.lanes["deadletter"].values() if isinstance(r, DeadLetter)
            )
            closed = await wait_closed(rig, args)

            # Redrive every dead letter of the run, as an operator would.
            before = await end_offsets(s, list(s.topics.lanes()))
            codec = compose.codec(s, register=False)
            letters = await read_letters(s, codec, Filter(flows=frozenset({"tickets"})))
            report = await Redriver(s).run(letters)
            sent = {
                (t, int(p), int(o)) for t, p, o in (x.rsplit("/", 2) for x in report.sent.values())
            }
            second = await collect(s, before, sent, timeout_s=args.settle_s)
            auto = first.counts()["auto"] + second.counts()["auto"]
            effects = await wait_effects(rig, auto, args)
            calls = server.calls
        finally:
            rig.stop()
    end = time.time()
    moves = rig.transitions()
    spans = intervals(moves, "tickets", end)
    open_spans = spans.get("open", []) + spans.get("forced_open", [])
    first_open = min((a for a, _ in open_spans), default=None)
    # A call that arrives within IN_FLIGHT_S of the opening had its permit before it: in flight
    # at the transition, not let through by an open breaker.
    late = [(a + IN_FLIGHT_S, b) for a, b in open_spans]
    in_open = [c for c in calls if inside(c.at, late)]
    in_flight = [c for c in calls if inside(c.at, open_spans) and not inside(c.at, late)]
    trials = [c for c in calls if inside(c.at, spans.get("half_open", []))]
    parked, failed = reasons.get("breaker_open", 0), reasons.get("provider_unavailable", 0)
    result = {
        "events": len(coords),
        "calls": len(calls),
        "calls_while_open": len(in_open),
        "calls_in_flight_at_opening": len(in_flight),
        "trial_calls": len(trials),
        "transitions": [
            (round(a - moves[0][0], 2) if moves else 0, n, b, c) for a, n, b, c in moves
        ],  # fmt: skip
        "first_open_after_failures_s": None,
        "parked_breaker_open": parked,
        "failed_provider_unavailable": failed,
        "dead_letters_other": sum(reasons.values()) - parked - failed,
        "first_pass": first.counts(),
        "redrive": report.counts(),
        "redriven_outcomes": second.counts(),
        "lost": lost_first + len(sent - second.seen()) + second.counts()["deadletter"],
        "redelivered_outputs": sum(first.duplicates.values()) + sum(second.duplicates.values()),
        "in_two_lanes": sum(first.other_lane.values()) + sum(second.other_lane.values()),
        "auto_events": auto,
        "effects_at_sinks": {"webhook": effects[0], "mail": effects[1]},
        "effect_duplicates": max(0, effects[0] - auto) + max(0, effects[1] - auto),
        "effects_missing": max(0, auto - effects[0]) + max(0, auto - effects[1]),
        "breaker_closed_at_end": closed,
        "settle_s_after_load": round(end - produced_at, 1),
    }
    first_failure = min((c.at for c in calls if c.fault == "500"), default=None)
    if first_open is not None and first_failure is not None:
        result["first_open_after_failures_s"] = round(first_open - first_failure, 2)
    return result


async def stable_group(rig: Rig, timeout_s: float) -> None:
    """Wait until both workers hold partitions and no rebalance happened for 3 s, so the load
    does not start inside the start-up rebalance (its redeliveries are not the outage's)."""
    deadline = time.monotonic() + timeout_s
    marker = "Setting newly assigned partitions"
    last, quiet_since = -1, time.monotonic()
    while True:
        rig.check()
        logs = [(rig.state / f"{w}.log").read_text(errors="replace") for w in WORKERS]
        seen = sum(text.count(marker) for text in logs)
        if seen != last:
            last, quiet_since = seen, time.monotonic()
        if all(marker in text for text in logs) and time.monotonic() - quiet_since >= 3:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not settle in {timeout_s}s: see {rig.state}")
        await asyncio.sleep(0.5)


async def wait_closed(rig: Rig, args: argparse.Namespace) -> bool:
    """Whether the flow's and the endpoint's breakers are closed, waiting up to ``settle_s``."""
    s = rig.settings
    deadline = time.monotonic() + args.settle_s
    names = ["tickets", endpoint_breaker_name(None, s)]
    while True:
        states = []
        for name in names:
            b = breaker_for(s, name)
            try:
                states.append(await b.state())
            finally:
                await b.redis.aclose()
        if all(x == "closed" for x in states) or time.monotonic() > deadline:
            return all(x == "closed" for x in states)
        await asyncio.sleep(1)


async def wait_effects(rig: Rig, auto: int, args: argparse.Namespace) -> tuple[int, int]:
    """Sink counts once both reach ``auto`` (or the wait is up), then after a quiet spell."""
    deadline = time.monotonic() + args.settle_s
    while min(rig.sink_counts()) < auto and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(1)
    await asyncio.sleep(args.quiet_s)  # anything beyond one per action would show now
    return rig.sink_counts()


def table(r: dict[str, Any]) -> str:
    rows = [
        ("events produced", r["events"]),
        ("model calls", r["calls"]),
        ("calls while open (must be 0)", r["calls_while_open"]),
        (f"calls in flight as it opened (< {IN_FLIGHT_S}s)", r["calls_in_flight_at_opening"]),
        ("trial calls in half-open", r["trial_calls"]),
        ("breaker opened after first failure (s)", r["first_open_after_failures_s"]),
        ("parked (breaker_open)", r["parked_breaker_open"]),
        ("failed before it opened (provider_unavailable)", r["failed_provider_unavailable"]),
        ("redrive", r["redrive"]),
        ("redriven outcomes", r["redriven_outcomes"]),
        ("auto events (first pass + redriven)", r["auto_events"]),
        ("effects at sinks", r["effects_at_sinks"]),
        ("lost (must be 0)", r["lost"]),
        ("duplicate effects at the sinks (must be 0)", r["effect_duplicates"]),
        ("events in two lanes (must be 0)", r["in_two_lanes"]),
        ("redelivered outputs (at-least-once, same lane)", r["redelivered_outputs"]),
        ("breaker closed at the end", r["breaker_closed_at_end"]),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.outage", description=__doc__)
    p.add_argument("--rate", type=float, default=20.0, help="events produced per second")
    p.add_argument("--healthy-s", type=float, default=20.0)
    p.add_argument("--outage-s", type=float, default=60.0)
    p.add_argument("--healed-s", type=float, default=40.0)
    p.add_argument("--wait-s", type=float, default=15.0, help="SLUICE_BREAKER_WAIT_S")
    p.add_argument("--latency-ms", type=int, default=50)
    p.add_argument("--startup-s", type=float, default=90.0, help="most to wait for the group")
    p.add_argument("--settle-s", type=float, default=180.0)
    p.add_argument("--quiet-s", type=float, default=5.0)
    p.add_argument("--state", default=str(ROOT / ".local" / "outage"))
    p.add_argument("--out", default=str(ROOT / ".local" / "outage.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = asyncio.run(run(args))
    print(table(result))
    Path(args.out).write_text(json.dumps({**result, "args": vars(args)}, indent=2) + "\n")
    ok = result["calls_while_open"] == 0 and result["lost"] == 0
    ok = ok and result["in_two_lanes"] == 0 and result["effect_duplicates"] == 0
    return 0 if ok and result["effects_missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
