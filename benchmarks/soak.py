"""Soak: a real worker on the local model, N distinct tickets, its memory sampled all the while.

Why: a worker that serves thousands of different prompts must not grow without bound. llama.cpp's
server keeps a RAM prompt cache that by default may reach 8 GiB; a busy worker grew from 0.6 GB to
2.1 GB RSS before Sluice bounded it (``SLUICE_LOCAL_CACHE_MIB``, default off). This measures it.

What it does: starts ``python -m streams.cli worker`` on topics of its own (a unique
``SLUICE_TOPIC_SUFFIX`` and ``SLUICE_APP_ID``, as the integration tests do) with one answer per
event (``SLUICE_LLM_MAX_VALIDATION_ATTEMPTS=1``: memory per call, not re-ask behaviour), produces
N events whose texts all differ, samples the worker's RSS (``VmRSS`` of it and its children, from
``/proc``) every few seconds, and waits until every event is accounted for in a lane. It prints
RSS at start, after warm-up (the first 10% of events), its maximum, its final value, the growth
after warm-up and events/s; writes everything to ``.local/soak.json``; and exits 1 if the growth
after warm-up (maximum minus warm-up RSS) passes ``--max-growth-mb`` or an event went missing.

Run (Kafka and Redis up, as for ``make demo``)::

    python -m benchmarks.soak --events 500
    SLUICE_LOCAL_CACHE_MIB=8192 python -m benchmarks.soak --events 500   # llama.cpp's default

The worker inherits the environment, so any ``SLUICE_*`` setting can be compared this way.

Half the events are text invoices by default (``--documents-pct``), because tickets alone do not
exercise the cache: every ticket prompt shares the ~1,100-token system prompt, and llama.cpp only
saves a slot into its prompt cache when the next prompt would discard more than half of it — which
is what a switch between the ticket and the invoice flow does. ``--documents-pct 0`` runs tickets
only; ``--pace-s`` trickles events in instead of producing a backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from streams.lanes import Tally, collect, end_offsets, lane_topics
from streams.produce import Sent, produce_lines
from streams.settings import Settings
from streams.topics import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
#: Phrases mixed into every ticket so no two prompts are alike (the prompt cache's worst case,
#: and a stream's normal one).
DETAILS = [
    "I tried again this morning",
    "my colleague sees the same",
    "this started after the last update",
    "we are on the annual plan",
    "the reference on the invoice is different",
    "I already contacted you by phone",
    "it happens on every device",
    "please answer before Friday",
    "the amount was taken from the wrong card",
    "nothing in the FAQ helps",
]


@dataclass
class Sample:
    seconds: float
    """Since the worker was started."""
    rss_mb: float
    done: int
    """Tickets accounted for in a lane when the sample was taken."""


@dataclass
class Soak:
    events: int
    env: dict[str, str]
    started: float = field(default_factory=time.monotonic)
    """When the worker was started."""
    produced_at: float = 0.0
    """Seconds after the start when the tickets were produced."""
    samples: list[Sample] = field(default_factory=list)
    done: int = 0
    warmup_at: int = 0
    lanes: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    elapsed_s: float = 0.0
    """From producing the tickets to the last one accounted for."""

    def sample(self, pid: int) -> Sample:
        taken = Sample(round(time.monotonic() - self.started, 2), rss_bytes(pid) / MB, self.done)
        self.samples.append(taken)
        return taken


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, from /proc; 0 for a process that is gone."""
    total = 0
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after it
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def tickets(n: int, run_id: str, seed: int = 7) -> list[bytes]:
    """``n`` tickets built from the samples, each with its own id and a text no other one has."""
    text = resources.files("streams").joinpath("samples", "tickets.jsonl").read_text("utf-8")
    samples = [json.loads(line) for line in text.splitlines() if line.strip()]
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ticket = dict(samples[i % len(samples)])
        extra = ", ".join(rng.sample(DETAILS, 3))
        ticket["ticket_id"] = f"SOAK-{run_id}-{i:05d}"
        ticket["event_id"] = f"soak-{run_id}-{i:05d}"
        ticket["subject"] = f"{ticket.get('subject', '')} (case {rng.randint(1000, 99999)})"
        ticket["body"] = (
            f"{ticket.get('body', '')} Also: {extra}. Order {rng.randint(10**5, 10**7)}."
        )
        events.append(json.dumps(ticket).encode())
    return events


def documents(n: int, run_id: str, seed: int = 11) -> list[bytes]:
    """``n`` text invoices built from the samples, each with its own id and a distinct text."""
    text = resources.files("streams").joinpath("samples", "documents.jsonl").read_text("utf-8")
    samples = [d for d in map(json.loads, filter(str.strip, text.splitlines())) if d.get("text")]
    rng = random.Random(seed)
    events = []
    for i in range(n):
        doc = dict(samples[i % len(samples)])
        extra = ", ".join(rng.sample(DETAILS, 2))
        doc["document_id"] = f"SOAK-DOC-{run_id}-{i:05d}"
        doc["event_id"] = f"soak-doc-{run_id}-{i:05d}"
        doc["text"] = f"{doc['text']}\nPO {rng.randint(10**5, 10**7)}. Note: {extra}.\n"
        events.append(json.dumps(doc).encode())
    return events


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def sample_rss(proc: subprocess.Popen[bytes], soak: Soak, interval: float) -> None:
    """Every ``interval`` s, the worker's RSS and how many tickets are done, until cancelled."""
    while proc.poll() is None:
        soak.sample(proc.pid)
        await asyncio.sleep(interval)


def logged(log: Path, text: str) -> bool:
    return text in log.read_text(errors="replace")


async def wait_for_log(proc: subprocess.Popen[bytes], log: Path, text: str) -> bool:
    """Whether the worker wrote ``text`` to its log before it exited."""
    while proc.poll() is None:
        if logged(log, text):
            return True
        await asyncio.sleep(0.5)
    return False


async def produce(settings: Settings, tag: str, args: argparse.Namespace, sent: list[Sent]) -> None:
    """The tickets (and documents), all at once or one every ``--pace-s`` seconds, into ``sent``.

    Paced, the worker idles between events as a real stream's does; that is when llama.cpp saves
    idle slots into its prompt cache (``cache_idle_slots``), so it is when an unbounded cache grows.
    """
    n_docs = args.events * args.documents_pct // 100
    flows = [
        (settings.topics.tickets_received, "ticket_id", v)
        for v in tickets(args.events - n_docs, tag)
    ]
    flows += [(settings.topics.invoices_received, "document_id", v) for v in documents(n_docs, tag)]
    random.Random(3).shuffle(flows)
    if args.pace_s <= 0:
        for topic, key in {(t, k) for t, k, _ in flows}:
            values = [v for t, _, v in flows if t == topic]
            sent += await produce_lines(settings, topic, values, key_field=key)
        return
    for topic, key, value in flows:
        sent += await produce_lines(settings, topic, [value], key_field=key)
        await asyncio.sleep(args.pace_s)


async def delete_topics(settings: Settings) -> None:
    """This run's topics, faust's own included: a soak is not data anyone reads later."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        ours = {*settings.topics.all(), f"{settings.app_id}-__assignor-__leader"}
        await admin.delete_topics([t for t in await admin.list_topics() if t in ours])
    finally:
        await admin.close()


async def run(args: argparse.Namespace) -> int:
    tag = uuid.uuid4().hex[:8]
    overrides = {
        "SLUICE_TOPIC_SUFFIX": f".soak-{tag}",
        "SLUICE_APP_ID": f"sluice-soak-{tag}",
        "SLUICE_LLM_MAX_VALIDATION_ATTEMPTS": "1",
        "SLUICE_LOG_FORMAT": "json",
    }
    env = {**os.environ, **overrides}
    settings = Settings().model_copy(
        update={
            "topic_suffix": overrides["SLUICE_TOPIC_SUFFIX"],
            "app_id": overrides["SLUICE_APP_ID"],
        }
    )
    shown = {k: v for k, v in env.items() if k.startswith("SLUICE_") and "KEY" not in k}
    soak = Soak(events=args.events, env=shown)
    await ensure_topics(settings)
    start = await end_offsets(settings, list(lane_topics(settings)))
    log = ROOT / ".local" / "soak-worker.log"
    proc = start_worker(env, log)
    soak.started = time.monotonic()
    tasks = [asyncio.create_task(sample_rss(proc, soak, args.interval))]
    try:
        # Produce once the worker has loaded its model and joined, so the first samples are idle.
        try:
            async with asyncio.timeout(args.settle_s):
                started = await wait_for_log(proc, log, "worker.starting")
        except TimeoutError:
            started = False
        if not started:
            print(f"the worker did not start (exit code {proc.poll()}); see {log}")
            return 2
        await asyncio.sleep(args.interval * 2)  # faust joins the group; two idle samples
        soak.produced_at = round(time.monotonic() - soak.started, 2)
        sent: list[Sent] = []
        producer = asyncio.create_task(produce(settings, tag, args, sent))
        tasks.append(producer)
        warmup = max(1, args.events * args.warmup_pct // 100)
        deadline = time.monotonic() + args.timeout_s
        tally = Tally()
        while time.monotonic() < deadline and proc.poll() is None:
            wanted = {(s.topic, s.partition, s.offset) for s in sent}
            if not wanted:  # collect() would return before any I/O: aiokafka#647 on its stop()
                await asyncio.sleep(args.interval)
                continue
            # collect() re-reads the lanes from the start each round: a few thousand records at
            # most, and it returns as soon as everything is there.
            tally = await collect(settings, start, wanted, timeout_s=args.interval)
            soak.done = len(tally.seen())
            if not soak.warmup_at and soak.done >= warmup:
                soak.warmup_at = len(soak.samples)
                soak.sample(proc.pid)
            if producer.done() and soak.done == len(sent) == args.events:
                break
        soak.elapsed_s = round(time.monotonic() - soak.started - soak.produced_at, 1)
        soak.sample(proc.pid)
        soak.lanes = tally.counts()
        soak.missing = args.events - soak.done
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stop_worker(proc)
        if not args.keep_topics:
            await delete_topics(settings)
    return report(soak, args)


def report(soak: Soak, args: argparse.Namespace) -> int:
    samples = soak.samples
    idle = [s for s in samples if s.seconds <= soak.produced_at and s.rss_mb > 0]
    warm = samples[soak.warmup_at] if soak.warmup_at else None
    after = samples[soak.warmup_at :] if warm else []
    peak = max((s.rss_mb for s in samples), default=0.0)
    final = samples[-1]
    growth = max(s.rss_mb for s in after) - warm.rss_mb if warm else None
    rate = soak.done / soak.elapsed_s if soak.elapsed_s else 0.0
    end = soak.produced_at + soak.elapsed_s
    warm_rate = (
        (soak.done - warm.done) / (end - warm.seconds)
        if warm and soak.done > warm.done and end > warm.seconds
        else None
    )
    summary: dict[str, Any] = {
        "events": soak.events,
        "accounted": soak.done,
        "missing": soak.missing,
        "lanes": soak.lanes,
        "elapsed_s": soak.elapsed_s,
        "rss_idle_mb": round(idle[-1].rss_mb, 1) if idle else None,
        "rss_after_warmup_mb": round(warm.rss_mb, 1) if warm else None,
        "warmup_events": warm.done if warm else None,
        "rss_max_mb": round(peak, 1),
        "rss_final_mb": round(final.rss_mb, 1),
        "growth_after_warmup_mb": round(growth, 1) if growth is not None else None,
        "final_minus_warmup_mb": round(final.rss_mb - warm.rss_mb, 1) if warm else None,
        "events_per_s": round(rate, 3),
        "events_per_s_after_warmup": round(warm_rate, 3) if warm_rate else None,
        "max_growth_mb": args.max_growth_mb,
        "documents_pct": args.documents_pct,
        "pace_s": args.pace_s,
    }
    rows = [
        ("events accounted / produced", f"{soak.done} / {soak.events}"),
        ("lanes", " ".join(f"{k}={v}" for k, v in soak.lanes.items())),
        ("RSS idle, model loaded (MB)", summary["rss_idle_mb"]),
        (f"RSS after warm-up, {summary['warmup_events']} events (MB)", warm and round(warm.rss_mb)),
        ("RSS max (MB)", summary["rss_max_mb"]),
        ("RSS final (MB)", summary["rss_final_mb"]),
        ("growth after warm-up, max - warm-up (MB)", summary["growth_after_warmup_mb"]),
        ("events/s (all / after warm-up)", f"{rate:.2f} / {warm_rate or 0:.2f}"),
        ("elapsed (s)", soak.elapsed_s),
    ]
    width = max(len(r[0]) for r in rows)
    cache = soak.env.get("SLUICE_LOCAL_CACHE_MIB", "unset (default 0)")
    print(
        f"soak: {soak.events} events, {args.documents_pct}% invoices, pace {args.pace_s}s, "
        f"SLUICE_LOCAL_CACHE_MIB={cache}"
    )
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    out = ROOT / ".local" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"summary": summary, "env": soak.env, "samples": [asdict(s) for s in soak.samples]},
            indent=2,
        )
    )
    print(f"  written to {out.relative_to(ROOT)}")
    if soak.missing:
        print(f"FAIL: {soak.missing} events not accounted for within {args.timeout_s}s")
        return 1
    if growth is None or growth > args.max_growth_mb:
        print(f"FAIL: growth after warm-up {growth} MB > {args.max_growth_mb} MB")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--events", type=int, default=500)
    parser.add_argument(
        "--documents-pct",
        type=int,
        default=50,
        help="share of the events that are text invoices (documents.received), in percent",
    )
    parser.add_argument(
        "--pace-s",
        type=float,
        default=0.0,
        help="seconds between events; 0: produce them all at once (a backlog)",
    )
    parser.add_argument("--interval", type=float, default=3.0, help="seconds between samples")
    parser.add_argument("--warmup-pct", type=int, default=10, help="events that count as warm-up")
    parser.add_argument("--max-growth-mb", type=float, default=150.0)
    parser.add_argument("--settle-s", type=float, default=120.0, help="worker start-up limit")
    parser.add_argument("--timeout-s", type=float, default=3600.0)
    parser.add_argument("--keep-topics", action="store_true", help="do not delete them at the end")
    args = parser.parse_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
