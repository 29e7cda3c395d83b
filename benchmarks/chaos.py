"""Chaos: events through worker and executor while processes, Redis and the broker are killed.

``make chaos`` (full size) and ``tests/integration/test_chaos.py`` (small, inside ``make test``)
run :func:`run`. Everything it touches is its own, so it can restart any of it: a Kafka broker
(``infra/kafka.sh`` on free ports, with the jars ``make up`` resolved), a Redis with AOF, the
sinks (:mod:`agents.sinks`), a fault server failing ``--fail-rate`` of LLM calls, one worker and
one executor process.

While events are produced at a steady pace it SIGKILLs the worker or the executor (at random,
``--kills`` times, each restarted at once), restarts Redis once (a clean shutdown: the AOF is
flushed) and the broker once; a process that exits on its own (a broker outage makes a worker
exit before its ack) is restarted too. Then it waits until every input is in a lane and every
effect the auto lanes ask for has reached its sink, and counts at the sinks themselves:

- **lanes**: every input in exactly one of auto, review, deadletter (none missing, none in two);
- **effects**: for every allowed action of every auto record, its idempotency key present exactly
  once in the ledger table, the webhook receiver's requests and the SMTP server's messages;
  ``lost`` = expected keys missing, ``duplicates`` = rows beyond one per key or with a key nobody
  asked for.

Prints a table, writes ``.local/chaos.json``, exits 1 if anything was lost or duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from agents.testing.fault_server import answer_marker
from agents.tools import Refused
from schemas import codec as codec_module
from streams import compose
from streams.flow import registered
from streams.lanes import Tally, collect, end_offsets, lane_topics
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.poison.corpus import INVOICE_ANSWER, TRIAGE_ANSWER

ROOT = Path(__file__).resolve().parents[1]

#: Answers the fault server gives (answer markers in the event text): the same ones the tests use.
TRIAGE = {k: v for k, v in TRIAGE_ANSWER.items() if k != "actions"}
SURE = {
    **TRIAGE,
    "actions": [
        {"action": "route_to_team", "confidence": 0.9},
        {"action": "send_acknowledgement", "confidence": 0.95},
        {"action": "escalate", "confidence": 0.99},  # not allowlisted: refused, never run
    ],
}
UNSURE = {**TRIAGE, "confidence": 0.3, "actions": [{"action": "route_to_team", "confidence": 0.4}]}
INVOICE = INVOICE_ANSWER


@dataclass
class Report:
    """What one chaos run did and found."""

    events: int
    kills: list[str] = field(default_factory=list)
    restarts: dict[str, int] = field(default_factory=dict)
    own_exits: int = 0
    lanes: dict[str, int] = field(default_factory=dict)
    missing_in_lanes: int = 0
    in_two_lanes: int = 0
    lane_duplicates: int = 0
    effects: dict[str, dict[str, int]] = field(default_factory=dict)
    effect_statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.missing_in_lanes + sum(e["lost"] for e in self.effects.values())

    @property
    def duplicates(self) -> int:
        return self.in_two_lanes + sum(e["duplicates"] for e in self.effects.values())

    def ok(self) -> bool:
        return self.lost == 0 and self.duplicates == 0 and len(self.kills) > 0

    def table(self) -> str:
        rows = [
            f"events            {self.events} in {self.seconds:.0f} s",
            f"kills (SIGKILL)   {len(self.kills)}: {', '.join(self.kills)}",
            "restarts          "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.restarts.items()))
            + f"; processes that exited on their own: {self.own_exits}",
            "lanes             "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.lanes.items()))
            + f"; missing {self.missing_in_lanes}, in two lanes {self.in_two_lanes},"
            f" redelivered outputs {self.lane_duplicates}",
            "effects.applied   "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.effect_statuses.items())),
            f"{'sink':<17} {'expected':>8} {'present':>8} {'lost':>6} {'duplicates':>10}",
        ]
        for sink, e in self.effects.items():
            rows.append(
                f"{sink:<17} {e['expected']:>8} {e['present']:>8} {e['lost']:>6}"
                f" {e['duplicates']:>10}"
            )
        rows.append(f"RESULT            lost {self.lost}, duplicates {self.duplicates}")
        return "\n".join(rows)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_pair() -> int:
    """A port whose successor is free too (the broker's controller listens there)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port pair")


class Rig:
    """The processes of one chaos run, each restartable."""

    def __init__(self, state: Path, fail_rate: float, latency_ms: int, in_flight: int) -> None:
        self.state = state
        self.kafka_port, self.redis_port = free_pair(), free_port()
        self.http_port, self.smtp_port = free_port(), free_port()
        self.sinks_dir = state / "sinks"
        self.fail_rate, self.latency_ms = fail_rate, latency_ms
        tag = uuid.uuid4().hex[:8]
        self.env = {
            k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL")
        }
        self.env.update(
            {
                "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{self.kafka_port}",
                "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "SLUICE_APP_ID": f"chaos-{tag}",
                "SLUICE_TOPIC_PARTITIONS": "6",
                "SLUICE_MAX_IN_FLIGHT": str(in_flight),
                "SLUICE_LOG_FORMAT": "json",
                "SLUICE_LOG_LEVEL": "info",
                "SLUICE_LLM_MAX_ATTEMPTS": "4",
                "SLUICE_EFFECT_LEASE_S": "5",
                "SLUICE_PRODUCER_TIMEOUT_S": "10",
                "SLUICE_WEBHOOK_URL": f"http://127.0.0.1:{self.http_port}/hooks",
                "SLUICE_SMTP_PORT": str(self.smtp_port),
                "SLUICE_MAIL_STORE": str(self.sinks_dir / "mail.db"),
                "SLUICE_LEDGER_PATH": str(self.sinks_dir / "ledger.db"),
            }
        )
        self.kafka_env = {
            **self.env,
            "SLUICE_STATE_DIR": str(state),
            "SLUICE_KAFKA_PORT": str(self.kafka_port),
        }
        self.kafka_env.pop("KAFKA_BOOTSTRAP_SERVERS")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.restarts: Counter[str] = Counter()
        self.own_exits = 0
        # model_copy: the Kafka and Redis fields are read by their ecosystem names
        # (KAFKA_BOOTSTRAP_SERVERS, REDIS_URL), so keyword arguments would not set them.
        self.settings = Settings().model_copy(
            update={
                "bootstrap_servers": self.env["KAFKA_BOOTSTRAP_SERVERS"],
                "redis_url": self.env["REDIS_URL"],
                "app_id": self.env["SLUICE_APP_ID"],
                "topic_suffix": "",
                "topic_partitions": 6,
                "webhook_url": self.env["SLUICE_WEBHOOK_URL"],
                "smtp_port": self.smtp_port,
                "mail_store": self.sinks_dir / "mail.db",
                "ledger_path": self.sinks_dir / "ledger.db",
            }
        )

    # -- services

    def start_kafka(self) -> None:
        libs = ROOT / ".local" / "kafka" / "libs"
        if not (libs / ".resolved-from").exists():
            raise SystemExit("chaos needs the Kafka jars that `make up` resolves")
        (self.state / "kafka").mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            (self.state / "kafka" / "libs").symlink_to(libs)
        subprocess.run(
            ["bash", "infra/kafka.sh", "start"], env=self.kafka_env, cwd=ROOT, check=True,
            timeout=180, capture_output=True,
        )  # fmt: skip

    def stop_kafka(self) -> None:
        subprocess.run(
            ["bash", "infra/kafka.sh", "stop"], env=self.kafka_env, cwd=ROOT, timeout=120,
            capture_output=True,
        )  # fmt: skip

    def start_redis(self) -> None:
        d = self.state / "redis"
        d.mkdir(exist_ok=True)
        subprocess.run(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port), "--dir",
             str(d), "--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy",
             "noeviction", "--save", "", "--daemonize", "yes", "--pidfile", str(d / "pid"),
             "--logfile", str(d / "log")],
            check=True,
        )  # fmt: skip
        for _ in range(100):
            ping = subprocess.run(
                ["redis-cli", "-p", str(self.redis_port), "ping"], capture_output=True, text=True
            )
            if ping.stdout.strip() == "PONG":
                return
            time.sleep(0.1)
        raise RuntimeError("redis did not start")

    def stop_redis(self) -> None:
        # SHUTDOWN flushes the AOF first: a restart, not a crash (see the README's residual risks)
        subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown"], capture_output=True)

    def start_aux(self) -> None:
        self.sinks_dir.mkdir(parents=True, exist_ok=True)
        self.procs["sinks"] = self._spawn(
            "sinks",
            [sys.executable, "-m", "agents.sinks", "--state", str(self.sinks_dir),
             "--http-port", str(self.http_port), "--smtp-port", str(self.smtp_port)],
        )  # fmt: skip
        fault = self._spawn(
            "fault",
            [sys.executable, "-m", "agents.testing.fault_server", "--port", "0",
             "--latency-ms", str(self.latency_ms), "--fail-rate", str(self.fail_rate),
             "--fail-with", "500,429,reset", "--seed", "1"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert fault.stdout is not None
        line = fault.stdout.readline().decode()
        self.env["OPENAI_BASE_URL"] = line.split()[-1]
        self.procs["fault"] = fault

    def _spawn(self, name: str, argv: list[str], stdout: Any = None) -> subprocess.Popen[bytes]:
        # The child keeps its own copy of the log's descriptor; ours is closed at once.
        with open(self.state / f"{name}.log", "ab") as log:
            return subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=stdout or log, stderr=log)

    # -- the two Sluice processes

    def start(self, role: str) -> None:
        self.procs[role] = self._spawn(role, [sys.executable, "-m", "streams.cli", role])

    def kill(self, role: str) -> None:
        proc = self.procs[role]
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.restarts[role] += 1
        self.start(role)

    def revive(self) -> None:
        """Restart a worker or executor that exited on its own (after a short pause)."""
        for role in ("worker", "executor"):
            if self.procs[role].poll() is not None:
                self.own_exits += 1
                self.restarts[role] += 1
                self.start(role)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.stop_redis()
        self.stop_kafka()


def event(i: int, run: str) -> tuple[str, dict[str, Any]]:
    """Event ``i``: mostly auto tickets and invoices, some for review, a few poison."""
    kind = i % 10
    if kind in (0, 1, 2, 3):
        return "tickets", {
            "event_id": f"c{run}-{i}", "ticket_id": f"T-{i}",
            "body": f"Charged twice, ticket {i}. {answer_marker(SURE)}",
        }  # fmt: skip
    if kind in (4, 5, 6):
        return "invoices", {
            "event_id": f"c{run}-{i}", "document_id": f"DOC-{run}-{i}",
            "text": f"Invoice {i} from Acme. {answer_marker(INVOICE)}",
        }  # fmt: skip
    if kind in (7, 8):
        return "tickets", {
            "event_id": f"c{run}-{i}", "ticket_id": f"T-{i}",
            "body": f"Not sure, ticket {i}. {answer_marker(UNSURE)}",
        }  # fmt: skip
    return "tickets", {"event_id": f"c{run}-{i}", "ticket_id": f"T-{i}", "channel": "fax"}


async def produce(rig: Rig, n: int, rate: float, sent: list[tuple[str, int, int]]) -> None:
    """Produce ``n`` events at ``rate``/s, each until the broker acknowledges it.

    Through the broker restart a write fails; the producer is then replaced (an idempotent
    producer whose batches expired unacknowledged is stuck on out-of-order sequence numbers) and
    the event written again. Only acknowledged coordinates count as sent.
    """
    s = rig.settings
    run = s.app_id[-8:]

    async def new_producer() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers, acks="all", enable_idempotence=True,
            request_timeout_ms=10_000,
        )  # fmt: skip
        try:
            await producer.start()
        except BaseException:
            await producer.stop()  # a producer that failed to start still owns a client
            raise
        return producer

    producer = await new_producer()
    try:
        began = time.monotonic()
        for i in range(n):
            await asyncio.sleep(max(0.0, began + i / rate - time.monotonic()))
            flow, value = event(i, run)
            topic = s.topics.of(flow, "received")
            while True:
                try:
                    meta = await producer.send_and_wait(
                        topic, json.dumps(value).encode(), key=str(i).encode()
                    )
                    sent.append((topic, meta.partition, meta.offset))
                    break
                except Exception:  # the broker is restarting
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    while True:
                        await asyncio.sleep(1)
                        with contextlib.suppress(Exception):
                            producer = await new_producer()
                            break
    finally:
        with contextlib.suppress(Exception):
            await producer.stop()


async def chaos(rig: Rig, args: argparse.Namespace, report: Report, sent: list[Any]) -> None:
    """Kills and restarts, spread over the production period."""
    period = args.events / args.rate
    plan: list[tuple[float, str]] = [
        (period * (k + 1) / (args.kills + 3), random.choice(["worker", "executor"]))
        for k in range(args.kills)
    ]
    plan.append((period * (args.kills + 1) / (args.kills + 3), "redis"))
    plan.append((period * (args.kills + 2) / (args.kills + 3), "kafka"))
    plan.sort()
    began = time.monotonic()
    for at, what in plan:
        while time.monotonic() - began < at:
            rig.revive()
            await asyncio.sleep(0.5)
        if what in ("worker", "executor"):
            rig.kill(what)
            report.kills.append(f"{what}@{at:.0f}s")
        elif what == "redis":
            await asyncio.to_thread(rig.stop_redis)
            await asyncio.sleep(2)
            await asyncio.to_thread(rig.start_redis)
            rig.restarts["redis"] += 1
        else:
            await asyncio.to_thread(rig.stop_kafka)
            await asyncio.to_thread(rig.start_kafka)
            rig.restarts["kafka"] += 1


def sink_keys(rig: Rig) -> dict[str, Counter[str]]:
    """Idempotency keys found at each sink, with how often each was found."""

    def rows(db: str, sql: str) -> list[str]:
        path = rig.sinks_dir / db
        if not path.exists():
            return []
        with contextlib.closing(sqlite3.connect(path)) as conn:
            try:
                return [r[0] or "" for r in conn.execute(sql)]
            except sqlite3.OperationalError:
                return []

    mails = rows("mail.db", "SELECT message_id FROM messages")
    return {
        "ledger": Counter(rows("ledger.db", "SELECT idempotency_key FROM ledger")),
        "webhook": Counter(rows("webhook.db", "SELECT idempotency_key FROM requests")),
        "mail": Counter(m.strip("<>").split("@")[0] for m in mails),
    }


SINK_OF = {"post_invoice": "ledger", "route_to_team": "webhook", "send_acknowledgement": "mail"}


async def expected_keys(rig: Rig, tally: Tally) -> dict[str, set[str]]:
    """The keys the auto lanes' allowed actions must leave at each sink."""
    box = compose.toolbox(rig.settings)
    specs = {spec.name: spec for spec in registered()}
    want: dict[str, set[str]] = {"ledger": set(), "webhook": set(), "mail": set()}
    for record in tally.lanes["auto"].values():
        flow = "tickets" if type(record).__name__ == "TicketTriaged" else "invoices"
        actions = specs[flow].actions
        assert actions is not None
        for action in actions(record, "auto"):
            vetted = box.vet(action)
            if isinstance(vetted, Refused):
                continue
            tool, data = vetted
            want[SINK_OF[tool.name]].add(tool.key(record.event_id, data))  # type: ignore[attr-defined]
    return want


async def effect_statuses(rig: Rig) -> Counter[str]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.topics import partitions

    topic = rig.settings.topics.effects
    out: Counter[str] = Counter()
    # earliest: seek_to_beginning alone can lose a race with the default "latest" reset
    consumer = AIOKafkaConsumer(
        bootstrap_servers=rig.settings.bootstrap_servers, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for _, p in await partitions(rig.settings, [topic])]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for msgs in (await consumer.getmany(timeout_ms=500)).values():
                for m in msgs:
                    out[codec_module.decode(m.value or b"").status] += 1  # type: ignore[attr-defined]
    finally:
        await consumer.stop()
    return out


async def run(args: argparse.Namespace) -> Report:
    """One chaos run; see the module docstring."""
    state = Path(args.state) / f"chaos-{uuid.uuid4().hex[:6]}"
    state.mkdir(parents=True)
    random.seed(args.seed)
    rig = Rig(state, args.fail_rate, args.latency_ms, args.in_flight)
    report = Report(events=args.events)
    began = time.monotonic()
    # The run's own clients log every refused connection while the broker restarts: expected.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    rig.start_kafka()
    try:
        rig.start_redis()
        rig.start_aux()
        await ensure_topics(rig.settings)
        start = await end_offsets(rig.settings, list(lane_topics(rig.settings)))
        rig.start("worker")
        rig.start("executor")
        sent: list[tuple[str, int, int]] = []
        await asyncio.gather(
            produce(rig, args.events, args.rate, sent), chaos(rig, args, report, sent)
        )
        # Settle: keep reviving until every input is in a lane and every effect at its sink.
        deadline = time.monotonic() + args.settle_s
        tally = Tally()
        while time.monotonic() < deadline:
            rig.revive()
            tally = await collect(rig.settings, start, set(sent), timeout_s=10)
            if set(sent) <= tally.seen():
                want = await expected_keys(rig, tally)
                found = sink_keys(rig)
                if all(want[s] <= set(found[s]) for s in want):
                    break
            await asyncio.sleep(2)
        await asyncio.sleep(args.quiet_s)  # late duplicates, if any, arrive now
        tally = await collect(rig.settings, start, set(sent), timeout_s=15)
        want, found = await expected_keys(rig, tally), sink_keys(rig)
        report.lanes = tally.counts()
        report.missing_in_lanes = len(set(sent) - tally.seen())
        report.in_two_lanes = len(tally.other_lane)
        report.lane_duplicates = sum(tally.duplicates.values())
        for sink in ("ledger", "webhook", "mail"):
            present = found[sink]
            dup = sum(c - 1 for c in present.values() if c > 1)
            dup += sum(c for k, c in present.items() if k not in want[sink])
            report.effects[sink] = {
                "expected": len(want[sink]),
                "present": sum(1 for k in want[sink] if k in present),
                "lost": len(want[sink] - set(present)),
                "duplicates": dup,
            }
        report.effect_statuses = dict(await effect_statuses(rig))
    finally:
        report.restarts = dict(rig.restarts)
        report.own_exits = rig.own_exits
        report.seconds = time.monotonic() - began
        rig.stop_all()
        quiet.setLevel(level)
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__)
    p.add_argument("--events", type=int, default=2000)
    p.add_argument("--rate", type=float, default=12.0, help="events produced per second")
    p.add_argument("--kills", type=int, default=6)
    p.add_argument("--fail-rate", type=float, default=0.1, help="share of LLM calls that fail")
    p.add_argument("--latency-ms", type=int, default=100)
    p.add_argument("--in-flight", type=int, default=64)
    p.add_argument("--settle-s", type=float, default=300.0)
    p.add_argument("--quiet-s", type=float, default=8.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--state", default=str(ROOT / ".local" / "chaos"))
    p.add_argument("--out", default=str(ROOT / ".local" / "chaos.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    report = asyncio.run(run(args))
    print(report.table())
    Path(args.out).write_text(
        json.dumps({**asdict(report), "lost": report.lost, "duplicates": report.duplicates,
                    "args": vars(args)}, indent=2) + "\n"
    )  # fmt: skip
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
