"""``make demo``: sample tickets and invoices through a real worker, then count where each ended.

The worker is started in the background if none is running (``make down`` stops it). Events are
matched to outputs by their source offsets, so earlier runs on the same topics don't count.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from importlib import resources
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from schemas.records import DeadLetter, InvoiceExtracted, TicketTriaged
from streams.lanes import collect, end_offsets, lane_topics
from streams.produce import produce_lines
from streams.settings import Settings
from streams.topics import ensure_topics

#: Deliberately broken inputs: each must end in the dead-letter lane with its reason.
MALFORMED: list[bytes] = [
    b"this is not json",
    b'{"ticket_id": "T-BAD-1", "subject": "no body field"}',
    b'{"ticket_id": "T-BAD-2", "body": 42, "channel": "carrier-pigeon"}',
]


def _samples(name: str, run_id: str) -> list[bytes]:
    text = resources.files("streams").joinpath("samples", name).read_text("utf-8")
    events = []
    for i, line in enumerate(text.splitlines()):
        if line.strip():
            data = json.loads(line)
            data["event_id"] = f"demo-{run_id}-{name.split('.')[0]}-{i:02d}"
            events.append(json.dumps(data).encode())
    return events


def sample_events(run_id: str) -> list[bytes]:
    events = _samples("tickets.jsonl", run_id)
    return events[:9] + MALFORMED[:2] + events[9:] + MALFORMED[2:]


def sample_documents(run_id: str) -> list[bytes]:
    """Three invoices (two text, one PDF) and one document event that names a URL (refused)."""
    bad = b'{"document_id": "DOC-BAD", "path": "https://example.invalid/invoice.pdf"}'
    return [*_samples("documents.jsonl", run_id), bad]


def ensure_worker(state_dir: Path) -> int:
    """Start ``sluice worker`` in the background unless ours is already running; return its pid."""
    state_dir.mkdir(parents=True, exist_ok=True)
    pidfile = state_dir / "worker.pid"
    if pidfile.exists():
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            pidfile.unlink()
    with open(state_dir / "worker.log", "ab") as logfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives this command; make down stops it
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def stop_worker(state_dir: Path) -> None:
    pidfile = state_dir / "worker.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        pidfile.unlink()


async def run_demo(settings: Settings, *, timeout_s: float, state_dir: Path) -> int:
    started = time.monotonic()
    await ensure_topics(settings)
    pid = ensure_worker(state_dir)
    print(f"worker pid {pid} (log: {state_dir / 'worker.log'})")
    start = await end_offsets(settings, list(lane_topics(settings)))
    events = sample_events(uuid.uuid4().hex[:8])
    sent = await produce_lines(settings, settings.topics.tickets_received, events)
    docs = sample_documents(uuid.uuid4().hex[:8])
    sent += await produce_lines(
        settings, settings.topics.invoices_received, docs, key_field="document_id"
    )
    print(
        f"produced {len(events)} tickets to {settings.topics.tickets_received} and {len(docs)} "
        f"documents to {settings.topics.invoices_received}; waiting for lanes ..."
    )
    wanted = {(s.topic, s.partition, s.offset) for s in sent}
    tally = await collect(settings, start, wanted, timeout_s=timeout_s)

    for lane, records in tally.lanes.items():
        print(f"\n== {lane} ({len(records)})")
        for record in list(records.values())[:5]:
            if isinstance(record, TicketTriaged):
                print(
                    f"  {record.ticket_id:<8} {record.category:<9} {record.priority:<6} "
                    f"conf={record.confidence:.2f} {record.usage.latency_ms}ms  "
                    f"{record.summary[:60]}"
                )
            elif isinstance(record, InvoiceExtracted):
                print(
                    f"  {record.document_id:<10} {record.vendor_name[:24]:<24} "
                    f"{record.total} {record.currency} conf={record.confidence:.2f} "
                    f"{record.usage.latency_ms}ms  {record.route.reason[:50]}"
                )
            elif isinstance(record, DeadLetter):
                value = (record.original_value or b"")[:40]
                print(f"  {record.reason:<14} {value!r}  {record.error_message[:70]}")
    missing = wanted - tally.seen()
    counts = tally.counts()
    print(
        f"\nelapsed {time.monotonic() - started:.1f}s; duplicates {sum(tally.duplicates.values())}"
    )
    if missing:
        print(f"NOT ACCOUNTED FOR: {len(missing)} events, e.g. {sorted(missing)[:3]}")
    print(
        f"lanes: auto={counts['auto']} review={counts['review']} "
        f"deadletter={counts['deadletter']} total={len(sent)}"
    )
    scraped = worker_lanes(settings)
    if scraped is not None:
        print(
            f"worker /metrics (since it started): auto={scraped['auto']:g} "
            f"review={scraped['review']:g} deadletter={scraped['deadletter']:g}"
        )
    example = next(iter(tally.lanes["review"].values()), None)
    if example is not None:
        print(f"one event's story: sluice trace {getattr(example, 'event_id', '')}")
    return 0 if not missing else 1


def worker_lanes(settings: Settings) -> dict[str, float] | None:
    """``sluice_events_total`` of the local worker per lane, from its ``/metrics``; None when it
    serves none."""
    if not settings.metrics_port:
        return None
    url = f"http://127.0.0.1:{settings.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    lanes = {"auto": 0.0, "review": 0.0, "deadletter": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sluice_events_total" and sample.labels.get("stage") == "worker":
                lane = sample.labels.get("lane", "")
                lanes[lane] = lanes.get(lane, 0.0) + sample.value
    return lanes
