"""Throughput and latency: a minimal aiokafka loop vs Sluice with one and two workers.

Why: Sluice wraps every event in parsing, validation, routing, Avro, an at-least-once ack window
and dead letters. This measures what that costs against the smallest loop that makes the same LLM
call (``benchmarks/raw_loop.py``), on the same Kafka, with the same fake provider
(``agents.testing.fault_server``, a fixed latency and a minimal schema-valid answer).

Variants, each on topics of its own (a unique ``SLUICE_TOPIC_SUFFIX``, ``--partitions`` partitions)
and with a fault server of its own, at every ``--latencies`` value (default 0 and 250 ms):

- ``raw``: ``benchmarks.raw_loop``, ``--in-flight`` tasks at once;
- ``sluice-1``, ``sluice-2``: one or two ``python -m streams.cli worker`` in one group,
  ``SLUICE_MAX_IN_FLIGHT=--in-flight`` each;
- and, LLM-bound, ``sluice-1`` and ``sluice-2`` at 250 ms with ``--llm-bound-in-flight`` (8) per
  worker: so few calls in flight that the provider, not the 2 cores, is the limit; two workers
  should then be twice one.

Each variant: start the consumer process(es) and wait until the group is stable; a *probe* keeps
1.5 x the in-flight limit queued for ``--probe-s`` to estimate the rate; then a *backlog* of
N = rate x ``--seconds`` x 1.3 events is produced at once and processed (repeated with a larger N,
at most twice, if its measured window was shorter than 0.9 x ``--seconds``). Throughput is taken
from the output records' timestamps after the backlog was written, skipping the first 10% of those
outputs, so start-up, rebalances and the ramp are excluded. Then a *paced* phase produces at half
that rate for ``--latency-s`` and measures end-to-end latency per event: output record timestamp
minus input record timestamp (both CreateTime: the producer's send to the worker's send); "added"
is that minus the LLM latency. CPU is utime+stime of the consumer processes (and their children)
from ``/proc``, interpolated to the throughput window, per event; peak RSS is the largest
``VmRSS`` seen of one consumer process tree over the whole variant. Every Sluice variant is checked
for conservation with :func:`streams.lanes.collect`: every produced event in exactly one lane,
none lost, duplicates counted.

Prints a table and the targets (reported, never asserted: "met" / "NOT met"), writes everything
with the environment to ``.local/bench.json``, and exits 1 only if an event was lost or a variant
did not finish. Needs Kafka and Redis (``make up``)::

    python -m benchmarks.bench              # the full run, about 8 minutes on 2 cores
    python -m benchmarks.bench --quick      # a smoke run: raw and sluice-1 at 250 ms, < 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from benchmarks.soak import (
    delete_topics,
    descendants,
    rss_bytes,
    start_worker,
    stop_worker,
    tickets,
)
from schemas.records import Source
from streams import compose
from streams.lanes import Coord, collect, end_offsets, lane_topics
from streams.logconfig import configure
from streams.produce import Sent, key_of
from streams.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".local" / "bench"
MB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WINDOW_SKIP = 0.10
"""Share of the backlog's outputs left out of the throughput window (ramp-up)."""
BACKLOG_MARGIN = 1.3
"""Backlog = probe rate x --seconds x this: the probe, which includes the start, underestimates."""


# -- processes: CPU and memory from /proc ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its descendants, in seconds; 0 for a process that is gone."""
    ticks = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            # after "pid (comm)": state is field 3, so utime (14) and stime (15) are at 11 and 12
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(values) - values[3] - values[4], sum(values)


@dataclass
class Meter:
    """CPU of the consumer processes and the fault server, the machine's, and peak RSS, sampled."""

    consumers: list[int]
    server: int
    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    busy: list[tuple[int, int]] = field(default_factory=list)
    peak_rss: dict[int, int] = field(default_factory=dict)

    def sample(self) -> None:
        self.times.append(time.time())
        self.cpu.append(sum(cpu_seconds(p) for p in self.consumers))
        self.server_cpu.append(cpu_seconds(self.server))
        self.busy.append(machine_ticks())
        for p in self.consumers:
            self.peak_rss[p] = max(self.peak_rss.get(p, 0), rss_bytes(p))

    async def run(self, interval: float) -> None:
        while True:
            self.sample()
            await asyncio.sleep(interval)

    def at(self, series: list[float], t: float) -> float:
        """``series`` linearly interpolated at wall time ``t``."""
        i = bisect_left(self.times, t)
        if i <= 0:
            return series[0]
        if i >= len(self.times):
            return series[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        share = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return series[i - 1] + share * (series[i] - series[i - 1])

    def busy_pct(self, t0: float, t1: float) -> float | None:
        """Share of all cores' time that was busy between ``t0`` and ``t1`` (sample resolution)."""
        i, j = bisect_left(self.times, t0), min(bisect_left(self.times, t1), len(self.times) - 1)
        if j <= i:
            return None
        (b0, n0), (b1, n1) = self.busy[i], self.busy[j]
        return round(100 * (b1 - b0) / (n1 - n0), 1) if n1 > n0 else None


# -- Kafka: producing with timestamps, reading outputs back ---------------------------------------


class Feeder:
    """One producer for a variant's input topic; remembers where and when each event was written."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers, acks="all")
        self.sent: list[Sent] = []
        self.in_ms: dict[Coord, int] = {}

    async def send(self, values: list[bytes]) -> list[Sent]:
        """Write ``values`` as fast as the producer goes and wait for every ack."""
        stamped = [(await self._send(v), v) for v in values]
        return await self._landed(stamped)

    async def paced(self, values: list[bytes], rate: float) -> list[Sent]:
        """Write ``values`` at ``rate`` per second (in 5 ms steps), then wait for every ack."""
        stamped: list[tuple[tuple[Any, int], bytes]] = []
        started = time.monotonic()
        while len(stamped) < len(values):
            due = min(len(values), int((time.monotonic() - started) * rate) + 1)
            stamped += [(await self._send(v), v) for v in values[len(stamped) : due]]
            await asyncio.sleep(0.005)
        return await self._landed(stamped)

    async def _send(self, value: bytes) -> tuple[Any, int]:
        now_ms = int(time.time() * 1000)
        future = await self.producer.send(
            self.topic, value, key=key_of(value, "ticket_id"), timestamp_ms=now_ms
        )
        return future, now_ms

    async def _landed(self, stamped: list[tuple[tuple[Any, int], bytes]]) -> list[Sent]:
        sent = []
        for (future, ts), value in stamped:
            meta = await future
            sent.append(Sent(self.topic, meta.partition, meta.offset, value))
            self.in_ms[(self.topic, meta.partition, meta.offset)] = ts
        self.sent += sent
        return sent

    def coords(self) -> set[Coord]:
        return {(s.topic, s.partition, s.offset) for s in self.sent}


Decode = Callable[[bytes], Coord | None]


def sluice_source(settings: Settings) -> Decode:
    """The input coordinate of a Sluice output record (any lane); None for anything else."""
    codec = compose.codec(settings, register=False)  # a reader, like streams.lanes.collect

    def decode(value: bytes) -> Coord | None:
        src = getattr(codec.decode(value), "source", None)
        return (src.topic, src.partition, src.offset) if isinstance(src, Source) else None

    return decode


def raw_source(errors: Counter[str]) -> Decode:
    """The input coordinate of a raw loop's JSON output; counts its error records in ``errors``."""

    def decode(value: bytes) -> Coord | None:
        out = json.loads(value)
        if "error" in out:
            errors[out["error"]] += 1
        src = out["source"]
        return (src["topic"], int(src["partition"]), int(src["offset"]))

    return decode


class Outputs:
    """Reads a variant's output topics from where they ended before it started.

    While events are in flight it only asks for end offsets (cheap: the bench shares the cores
    with what it measures); records are read and decoded once the counts say they are there.
    """

    def __init__(self, settings: Settings, topics: list[str], decode: Decode) -> None:
        self.settings = settings
        self.topics = topics
        self.decode = decode
        self.start: dict[TopicPartition, int] = {}
        self.read: dict[TopicPartition, int] = {}
        self.out_ms: dict[Coord, int] = {}
        """Per input coordinate, the timestamp of its first output record."""
        self.duplicates: Counter[Coord] = Counter()
        self.other = 0
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
        )

    async def open(self) -> None:
        self.start = await end_offsets(self.settings, self.topics)
        self.read = dict(self.start)
        await self.consumer.start()
        await asyncio.sleep(0)  # aiokafka#647: let start()'s task run before any stop()
        self.consumer.assign(list(self.start))
        for tp, offset in self.start.items():
            self.consumer.seek(tp, offset)

    async def close(self) -> None:
        await self.consumer.stop()

    async def count(self) -> int:
        """Output records written since the start (duplicates and foreign records included)."""
        ends = await self.consumer.end_offsets(list(self.start))
        return sum(ends[tp] - self.start[tp] for tp in self.start)

    async def drain(self) -> None:
        ends = await self.consumer.end_offsets(list(self.start))
        while any(self.read[tp] < ends[tp] for tp in ends):
            batches = await self.consumer.getmany(timeout_ms=500)
            for tp, messages in batches.items():
                for message in messages:
                    self.read[tp] = message.offset + 1
                    coord = self.decode(message.value or b"")
                    if coord is None:
                        self.other += 1
                    elif coord in self.out_ms:
                        self.duplicates[coord] += 1
                    else:
                        self.out_ms[coord] = message.timestamp

    async def wait(self, wanted: set[Coord], timeout_s: float, alive: Callable[[], bool]) -> bool:
        """Whether every ``wanted`` input has an output before ``timeout_s`` (or a death)."""
        deadline = time.monotonic() + timeout_s
        while True:
            expired = time.monotonic() > deadline or not alive()
            if expired or await self.count() >= len(wanted):
                await self.drain()
                if wanted <= self.out_ms.keys() or expired:
                    return wanted <= self.out_ms.keys()
            await asyncio.sleep(0.25)


async def wait_group(
    settings: Settings, group: str, members: int, timeout_s: float, alive: Callable[[], bool]
) -> None:
    """Until consumer group ``group`` is Stable with ``members`` members, each assigned."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and alive():
            with contextlib.suppress(Exception):  # coordinator not there yet, group unknown
                for response in await admin.describe_consumer_groups([group]):
                    for g in response.groups:
                        state, found = g[2], g[5]
                        if state == "Stable" and len(found) == members and all(m[4] for m in found):
                            return
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    raise RuntimeError(f"group {group} not stable with {members} members within {timeout_s}s")


# -- one variant -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    """raw, sluice-1 or sluice-2."""
    latency_ms: int
    in_flight: int
    """Per consumer process."""
    group: str = "main"
    """main, or llm-bound (few in flight: the provider is the limit, not the CPU)."""
    paced: bool = True
    """Whether to run the latency phase."""

    @property
    def workers(self) -> int:
        return 2 if self.name == "sluice-2" else 1

    @property
    def label(self) -> str:
        return f"{self.name}@{self.latency_ms}ms/{self.in_flight}"

    @property
    def slug(self) -> str:
        """For file names."""
        return f"{self.name}-{self.latency_ms}ms-{self.in_flight}"


def start_fault_server(latency_ms: int, log: Path) -> tuple[subprocess.Popen[str], str]:
    """``python -m agents.testing.fault_server`` on a free port; returns it and its base URL."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.testing.fault_server", "--port", "0"]
            + ["--default", "ok", "--latency-ms", str(latency_ms)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "listening on http://127.0.0.1:PORT/v1"
    if not line.startswith("listening on "):
        proc.kill()
        raise RuntimeError(f"fault server did not start: {line!r}; see {log}")
    return proc, line.split()[-1]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of ``values`` (not empty)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Run:
    """What one variant's phases measured, filled in as they go."""

    variant: Variant
    probe_rate: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    throughput: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None
    conservation: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    error: str | None = None


def window(outputs: Outputs, after_ms: int, meter: Meter) -> dict[str, Any]:
    """Throughput over outputs written after ``after_ms``, less the first 10%; CPU over the same."""
    stamps = sorted(t for t in outputs.out_ms.values() if t >= after_ms)
    stamps = stamps[int(len(stamps) * WINDOW_SKIP) :]
    if len(stamps) < 2 or stamps[-1] <= stamps[0]:
        return {"events_per_s": 0.0, "window_events": len(stamps), "window_s": 0.0}
    t0, t1 = stamps[0] / 1000, stamps[-1] / 1000
    events = len(stamps) - 1
    cpu = meter.at(meter.cpu, t1) - meter.at(meter.cpu, t0)
    server = meter.at(meter.server_cpu, t1) - meter.at(meter.server_cpu, t0)
    return {
        "events_per_s": round(events / (t1 - t0), 1),
        "window_events": events,
        "window_s": round(t1 - t0, 2),
        "cpu_ms_per_event": round(1000 * cpu / events, 3),
        "fault_server_cpu_ms_per_event": round(1000 * server / events, 3),
        "machine_busy_pct": meter.busy_pct(t0, t1),
    }


async def probe(
    feeder: Feeder, outputs: Outputs, make: Callable[[int], list[bytes]], keep: int, seconds: float
) -> float:
    """Keep ``keep`` events queued for ``seconds``; the output rate over the second half."""
    started = time.monotonic()
    marks: list[tuple[float, int]] = []
    while (elapsed := time.monotonic() - started) < seconds:
        done = await outputs.count()
        marks.append((elapsed, done))
        missing = keep - (len(feeder.sent) - done)
        if missing > 0:
            await feeder.send(make(missing))
        await asyncio.sleep(0.2)
    done = await outputs.count()
    half = [m for m in marks if m[0] >= seconds / 2] or marks
    span = time.monotonic() - started - half[0][0]
    return max((done - half[0][1]) / span if span > 0 else 0.0, 1.0)


async def run_variant(v: Variant, args: argparse.Namespace) -> Run:
    tag = uuid.uuid4().hex[:8]
    base = Settings()
    settings = base.model_copy(
        update={
            "topic_suffix": f".bench-{tag}",
            "app_id": f"sluice-bench-{tag}",
            "topic_partitions": args.partitions,
        }
    )
    topics = settings.topics
    run = Run(v)
    LOGS.mkdir(parents=True, exist_ok=True)
    await ensure_topics(settings)
    server, base_url = start_fault_server(v.latency_ms, LOGS / f"{v.slug}.server.log")
    errors: Counter[str] = Counter()
    if v.name == "raw":
        outputs = Outputs(settings, [topics.tickets_review], raw_source(errors))
        group = f"raw-bench-{tag}"
    else:
        outputs = Outputs(settings, list(lane_topics(settings)), sluice_source(settings))
        group = settings.app_id
    await outputs.open()
    procs = start_consumers(v, settings, base_url, group)
    meter = Meter([p.pid for p in procs], server.pid)
    sampler = asyncio.create_task(meter.run(args.sample_s))
    feeder = Feeder(settings, topics.tickets_received)
    await feeder.producer.start()
    chunks = iter(range(10**9))

    def make(n: int) -> list[bytes]:
        return tickets(n, f"{tag}-{next(chunks)}", seed=len(feeder.sent))

    def alive() -> bool:
        return all(p.poll() is None for p in procs) and server.poll() is None

    try:
        await wait_group(settings, group, v.workers, args.start_timeout_s, alive)
        # Probe: the rate with the in-flight limit kept full, to size the backlog.
        keep = max(8, v.in_flight * v.workers * 3 // 2)
        run.probe_rate = round(await probe(feeder, outputs, make, keep, args.probe_s), 1)
        rate = run.probe_rate
        for _ in range(3):
            wanted = math.ceil(rate * args.seconds * BACKLOG_MARGIN)
            n = min(args.max_events, max(args.min_events, wanted))
            await feeder.send(make(n))
            after_ms = int(time.time() * 1000)
            timeout = max(args.timeout_s, 3 * n / rate)
            if not await outputs.wait(feeder.coords(), timeout, alive):
                run.error = f"not every event had an output within {timeout:.0f}s"
                run.throughput = window(outputs, after_ms, meter)
                break
            run.throughput = window(outputs, after_ms, meter)
            run.rounds.append({"backlog": n, **run.throughput})
            measured = run.throughput["events_per_s"]
            if run.throughput["window_s"] >= (1 - WINDOW_SKIP) * args.seconds or not measured:
                break
            rate = measured
        if run.error is None and v.paced:
            measured = float(run.throughput.get("events_per_s") or 1.0)
            run.latency = await paced(v, feeder, outputs, make, alive, args, measured)
        if run.error is None:
            run.finished = True
    except Exception as exc:  # reported in the table and the JSON; the other variants go on
        run.error = f"{type(exc).__name__}: {exc}"
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        meter.sample()
        measuring = sum(outputs.duplicates.values())
        # All at once: a worker stopping alone would hand its partitions to the other one.
        await asyncio.gather(*(asyncio.to_thread(stop_worker, p) for p in procs))
        stop_worker(server)  # type: ignore[arg-type]
        await feeder.producer.stop()
        try:
            await outputs.drain()
            run.conservation = await conservation(v, settings, outputs, feeder, errors)
            run.conservation["duplicates_while_measuring"] = measuring
        finally:
            await outputs.close()
            if not args.keep_topics:
                await delete_topics(settings)
    peaks = [b / MB for b in meter.peak_rss.values()]
    run.throughput["peak_rss_mb"] = round(max(peaks, default=0.0), 1)
    run.throughput["peak_rss_total_mb"] = round(sum(peaks), 1)
    return run


def start_consumers(
    v: Variant, settings: Settings, base_url: str, group: str
) -> list[subprocess.Popen[bytes]]:
    if v.name == "raw":
        log = LOGS / f"{v.slug}.log"
        with open(log, "wb") as out:
            argv = [sys.executable, "-m", "benchmarks.raw_loop"]
            argv += ["--bootstrap", settings.bootstrap_servers, "--group", group]
            argv += ["--input", settings.topics.tickets_received]
            argv += ["--output", settings.topics.tickets_review]
            argv += ["--base-url", base_url, "--in-flight", str(v.in_flight)]
            return [subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)]
    env = {
        **os.environ,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": "bench",
        "SLUICE_TOPIC_SUFFIX": settings.topic_suffix,
        "SLUICE_APP_ID": settings.app_id,
        "SLUICE_TOPIC_PARTITIONS": str(settings.topic_partitions),
        "SLUICE_MAX_IN_FLIGHT": str(v.in_flight),
        "SLUICE_LOG_LEVEL": "warning",
        "SLUICE_LOG_FORMAT": "json",
        "SLUICE_LLM_MAX_VALIDATION_ATTEMPTS": "1",
    }
    return [start_worker(env, LOGS / f"{v.slug}.worker{i}.log") for i in range(v.workers)]


async def paced(
    v: Variant,
    feeder: Feeder,
    outputs: Outputs,
    make: Callable[[int], list[bytes]],
    alive: Callable[[], bool],
    args: argparse.Namespace,
    measured: float,
) -> dict[str, Any]:
    """Events at half the ``measured`` rate for ``--latency-s``; their end-to-end latencies."""
    rate = max(1.0, measured / 2)
    n = max(10, math.ceil(rate * args.latency_s))
    sent = await feeder.paced(make(n), rate)
    if not await outputs.wait(feeder.coords(), args.timeout_s, alive):
        raise RuntimeError(f"paced events without an output after {args.timeout_s}s")
    e2e = [
        float(outputs.out_ms[c] - feeder.in_ms[c])
        for c in ((s.topic, s.partition, s.offset) for s in sent)
    ]
    p50, p99 = percentile(e2e, 50), percentile(e2e, 99)
    return {
        "rate": round(rate, 1),
        "events": n,
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max(e2e),
        "p50_added_ms": p50 - v.latency_ms,
        "p99_added_ms": p99 - v.latency_ms,
    }


async def conservation(
    v: Variant, settings: Settings, outputs: Outputs, feeder: Feeder, errors: Counter[str]
) -> dict[str, Any]:
    """Every produced event accounted for: Sluice's lanes via streams.lanes.collect."""
    wanted = feeder.coords()
    if v.name == "raw":
        seen = wanted & outputs.out_ms.keys()
        return {
            "produced": len(wanted),
            "accounted": len(seen),
            "lost": len(wanted) - len(seen),
            "duplicates": sum(outputs.duplicates.values()),
            "errors": dict(errors),
        }
    tally = await collect(settings, outputs.start, wanted, timeout_s=30)
    seen = tally.seen() & wanted
    return {
        "produced": len(wanted),
        "accounted": len(seen),
        "lost": len(wanted) - len(seen),
        "duplicates": sum(tally.duplicates.values()),
        "lanes": tally.counts(),
    }


# -- the whole run ---------------------------------------------------------------------------------


def variants(args: argparse.Namespace) -> list[Variant]:
    names = args.only.split(",") if args.only else ["raw", "sluice-1", "sluice-2"]
    chosen = [
        Variant(name, latency, args.in_flight)
        for latency in args.latencies
        for name in ["raw", "sluice-1", "sluice-2"]
        if name in names
    ]
    if args.llm_bound_in_flight:
        chosen += [
            Variant(name, args.llm_bound_latency_ms, args.llm_bound_in_flight, "llm-bound", False)
            for name in ["sluice-1", "sluice-2"]
            if name in names
        ]
    return chosen


def rate_of(runs: list[Run], name: str, latency_ms: int, group: str = "main") -> float | None:
    for r in runs:
        v = r.variant
        if (v.name, v.latency_ms, v.group) == (name, latency_ms, group) and r.finished:
            return float(r.throughput["events_per_s"])
    return None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def targets(runs: list[Run], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The issue's targets, each met / NOT met / not measured, with the numbers behind it."""
    found: list[dict[str, Any]] = []

    def add(name: str, met: bool | None, detail: str) -> None:
        found.append({"target": name, "met": met, "detail": detail})

    slow = max(args.latencies)
    s1, raw = rate_of(runs, "sluice-1", slow), rate_of(runs, "raw", slow)
    cap = args.in_flight * 1000 / max(slow, 1)  # what the in-flight limit allows at that latency
    name = f"{slow} ms LLM, {args.in_flight} in flight: sluice-1 >= 0.9 x min({cap:,.0f}/s, raw)"
    if not slow:
        add("slow LLM: sluice-1 >= 0.9 x min(cap, raw)", None, "no latency > 0 in --latencies")
    elif s1 is None or raw is None:
        add(name, None, "not measured")
    else:
        bound = 0.9 * min(cap, raw)
        detail = f"sluice-1 {s1:,.1f}/s vs 0.9 x min({cap:,.0f}, {raw:,.1f}) = {bound:,.1f}/s"
        add(name, s1 >= bound, detail)
    s1, raw = rate_of(runs, "sluice-1", 0), rate_of(runs, "raw", 0)
    name = "instant LLM: sluice-1 >= 0.8 x raw"
    if s1 is None or raw is None:
        add(name, None, "not measured")
    else:
        add(name, s1 >= 0.8 * raw, f"sluice-1 {s1:,.1f}/s vs 0.8 x {raw:,.1f} = {0.8 * raw:,.1f}/s")
    for r in runs:
        if r.variant.name == "raw" or r.latency is None:
            continue
        added = r.latency["p99_added_ms"]
        add(
            f"{r.variant.label}: p99 pipeline-added latency <= 20 ms at half the measured rate",
            added <= 20,
            f"p99 {r.latency['p99_ms']:.0f} ms - LLM {r.variant.latency_ms} ms = {added:.0f} ms "
            f"at {r.latency['rate']:,.1f}/s",
        )
    bound_ms = args.llm_bound_latency_ms
    one = rate_of(runs, "sluice-1", bound_ms, "llm-bound")
    two = rate_of(runs, "sluice-2", bound_ms, "llm-bound")
    name = f"LLM-bound, {args.llm_bound_in_flight} in flight per worker: sluice-2 >= 1.8 x sluice-1"
    if not args.llm_bound_in_flight:
        add("LLM-bound: sluice-2 >= 1.8 x sluice-1", None, "skipped (--llm-bound-in-flight 0)")
    elif one is None or two is None:
        add(name, None, "not measured")
    else:
        add(name, two >= 1.8 * one, f"{two:,.1f}/s / {one:,.1f}/s = {two / one:.2f}")
    return found


def table(runs: list[Run]) -> list[str]:
    head = (
        f"{'variant':<10}{'group':<10}{'LLM ms':>7}{'flight':>7}{'events/s':>10}{'/raw':>6}"
        f"{'/1 wkr':>7}{'window':>15}{'p50 ms':>8}{'p99 ms':>8}{'p99-LLM':>8}{'CPU ms/ev':>10}"
        f"{'RSS MB':>7}{'srv %':>6}{'busy %':>7}{'lost/dup':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        v, t, lat = r.variant, r.throughput, r.latency
        rate = t.get("events_per_s") if r.finished else None
        vs_raw = ratio(rate, rate_of(runs, "raw", v.latency_ms, v.group))
        vs_one = ratio(rate, rate_of(runs, "sluice-1", v.latency_ms, v.group))
        server = t.get("fault_server_cpu_ms_per_event")
        server_pct = server * t["events_per_s"] / 10 if server is not None else None
        busy = t.get("machine_busy_pct")
        c = r.conservation
        cells = [
            f"{v.name:<10}{v.group:<10}{v.latency_ms:>7}{v.in_flight:>7}",
            f"{rate:>10,.1f}" if rate is not None else f"{'-':>10}",
            f"{vs_raw:>6.2f}" if vs_raw and v.name != "raw" else f"{'':>6}",
            f"{vs_one:>7.2f}" if vs_one and v.name == "sluice-2" else f"{'':>7}",
            f"{t.get('window_events', 0):>6} in {t.get('window_s', 0):>4.1f}s",
            f"{lat['p50_ms']:>8.0f}{lat['p99_ms']:>8.0f}{lat['p99_added_ms']:>8.0f}"
            if lat
            else f"{'-':>8}{'-':>8}{'-':>8}",
            f"{t['cpu_ms_per_event']:>10.2f}" if "cpu_ms_per_event" in t else f"{'-':>10}",
            f"{t.get('peak_rss_mb', 0):>7.0f}",
            f"{server_pct:>6.0f}" if server_pct is not None else f"{'-':>6}",
            f"{busy:>7.0f}" if busy is not None else f"{'-':>7}",
            f"{c.get('lost', '?')}/{c.get('duplicates', '?')}".rjust(9),
        ]
        lines.append("".join(cells))
        if r.error:
            lines.append(f"  ! {v.label}: {r.error}")
    return lines


def environment(args: argparse.Namespace) -> dict[str, Any]:
    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        None,
    )
    packages = ["faust-streaming", "aiokafka", "openai", "aiohttp", "pydantic", "fastavro"]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MB,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: metadata.version(p) for p in packages},
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "kafka": Settings().bootstrap_servers,
        "args": {k: v for k, v in vars(args).items()},
    }


def report(runs: list[Run], args: argparse.Namespace) -> int:
    print()
    print(
        f"throughput: backlog of N = rate x {args.seconds:g} s x {BACKLOG_MARGIN} events (again, "
        "larger, if it ran shorter), rate measured from output "
        f"timestamps after the backlog was written, first {WINDOW_SKIP:.0%} of outputs skipped "
        "(start-up, rebalance and ramp excluded)"
    )
    print(
        f"latency: paced at half the measured rate for {args.latency_s:g} s; input CreateTime to "
        "output CreateTime; p99-LLM = pipeline-added"
    )
    print(
        "CPU ms/ev: utime+stime of the consumer process(es) over the throughput window; "
        "RSS: peak VmRSS of one consumer process; srv %: the fault server's share of one core "
        "and busy %: of all cores, over the same window"
    )
    print()
    for line in table(runs):
        print(line)
    found = targets(runs, args)
    print()
    print("targets (reported, not asserted):")
    for t in found:
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        print(f"  {verdict:<13}{t['target']}: {t['detail']}")
    for r in runs:
        c = r.conservation
        detail = c.get("lanes") or c.get("errors") or {}
        print(
            f"conservation {r.variant.label}: {c.get('accounted')}/{c.get('produced')} accounted, "
            f"lost={c.get('lost')} duplicates={c.get('duplicates')} "
            + " ".join(f"{k}={n}" for k, n in detail.items())
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "environment": environment(args),
                "variants": [
                    {
                        "variant": r.variant.name,
                        "group": r.variant.group,
                        "llm_latency_ms": r.variant.latency_ms,
                        "in_flight_per_worker": r.variant.in_flight,
                        "workers": r.variant.workers,
                        "finished": r.finished,
                        "error": r.error,
                        "probe_events_per_s": r.probe_rate,
                        "throughput": r.throughput,
                        "rounds": r.rounds,
                        "latency": r.latency,
                        "conservation": r.conservation,
                        "vs_raw": ratio(
                            r.throughput.get("events_per_s"),
                            rate_of(runs, "raw", r.variant.latency_ms, r.variant.group),
                        ),
                        "vs_one_worker": ratio(
                            r.throughput.get("events_per_s"),
                            rate_of(runs, "sluice-1", r.variant.latency_ms, r.variant.group),
                        ),
                    }
                    for r in runs
                ],
                "targets": found,
            },
            indent=2,
        )
    )
    print(f"written to {out}")
    failed = [r for r in runs if r.error or r.conservation.get("lost", 1)]
    for r in failed:
        print(f"FAIL {r.variant.label}: {r.error or ''} lost={r.conservation.get('lost')}")
    return 1 if failed else 0


async def run_all(args: argparse.Namespace) -> int:
    configure("warning", "console")  # no topics.created lines between the results
    runs = []
    for v in variants(args):
        print(f"{v.label} ({v.group}) ...", flush=True)
        started = time.monotonic()
        run = await run_variant(v, args)
        runs.append(run)
        t = run.throughput
        print(
            f"  {t.get('events_per_s', 0):,.1f} events/s over {t.get('window_s', 0)} s"
            + (f", p99 {run.latency['p99_ms']:.0f} ms" if run.latency else "")
            + f"; {time.monotonic() - started:.0f} s"
            + (f"; ERROR {run.error}" if run.error else ""),
            flush=True,
        )
    return report(runs, args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="backlog phase length target")
    parser.add_argument("--latency-s", type=float, default=15.0, help="paced phase length")
    parser.add_argument("--probe-s", type=float, default=4.0, help="rate probe length")
    parser.add_argument(
        "--latencies", type=lambda s: [int(x) for x in s.split(",")], default=[0, 250]
    )
    parser.add_argument("--in-flight", type=int, default=256, help="per consumer process")
    parser.add_argument("--llm-bound-in-flight", type=int, default=8, help="0: skip that group")
    parser.add_argument("--llm-bound-latency-ms", type=int, default=250)
    parser.add_argument("--only", default="", help="comma-separated: raw,sluice-1,sluice-2")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--min-events", type=int, default=50)
    parser.add_argument("--max-events", type=int, default=200_000)
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per phase, at least")
    parser.add_argument("--start-timeout-s", type=float, default=120.0)
    parser.add_argument("--sample-s", type=float, default=0.5, help="CPU/RSS sampling interval")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--out", default=str(ROOT / ".local" / "bench.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: raw and sluice-1 at 250 ms, 8 in flight, 4 s phases",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.latency_s, args.probe_s = 4.0, 3.0, 2.0
        args.latencies, args.in_flight, args.llm_bound_in_flight = [250], 8, 0
        args.only, args.min_events = args.only or "raw,sluice-1", 10
    return asyncio.run(run_all(args))


if __name__ == "__main__":
    sys.exit(main())
