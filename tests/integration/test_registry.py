"""Confluent framing against a real schema registry (Apicurio's Confluent API; `make up` starts it).

Every check here decodes with a *fresh* codec and registry client, so a record is read by looking
its schema id up in the registry, never from the writer's in-process cache.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import BaseModel

from agents.testing.fault_server import FaultServer, answer_marker
from schemas import catalogue
from schemas.catalogue import full_name, load_schema
from schemas.codec import Codec
from schemas.errors import IncompatibleSchema, UnknownSchema
from schemas.records import DeadLetter, TicketTriaged
from schemas.registry import RegistryClient
from streams.lanes import collect, end_offsets
from tests.integration.conftest import ROOT, Isolated, send_values, start_worker
from tests.integration.kcat import produce, wait_for
from tests.records import GOOD_TRIAGE, SAMPLES, dead_letter_v1_bytes, records

LOCAL = f"http://127.0.0.1:{os.environ.get('SLUICE_REGISTRY_PORT', '8081')}/apis/ccompat/v7"


@pytest.fixture(scope="session")
def registry_url() -> str:
    url = os.environ.get("SCHEMA_REGISTRY_URL") or LOCAL
    try:
        RegistryClient(url, timeout_s=3)._call("GET", "/subjects")
    except Exception as exc:
        pytest.fail(f"no schema registry answers at {url} (run `make up`): {exc}")
    return url


def fresh_codec(url: str) -> Codec:
    return Codec(RegistryClient(url))


@pytest.mark.parametrize("model", catalogue.models(), ids=lambda m: m.__name__)
def test_round_trip_confluent_framing(registry_url: str, model: type[BaseModel]) -> None:
    writer = fresh_codec(registry_url)
    schema_id = writer.register_all()[model.__name__]
    # What the registry holds under that id is our .avsc, so any Confluent deserializer reads it.
    stored = RegistryClient(registry_url).schema(schema_id)
    assert stored == catalogue.entry(model).schema()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(records(model))
    def check(record: BaseModel) -> None:
        data = writer.encode(record)
        assert data[:1] == b"\x00"
        assert struct.unpack(">I", data[1:5])[0] == schema_id
        assert fresh_codec(registry_url).decode(data) == record

    check()


def test_registering_is_idempotent(registry_url: str) -> None:
    first = fresh_codec(registry_url).register_all()
    assert fresh_codec(registry_url).register_all() == first
    assert len(set(first.values())) == len(catalogue.models())


def test_unknown_schema_id_is_a_precise_error(registry_url: str) -> None:
    data = b"\x00" + struct.pack(">I", 2**31 - 7) + b"\x02"
    with pytest.raises(UnknownSchema, match="not found"):
        fresh_codec(registry_url).decode(data)


def test_id_of_a_foreign_schema_is_refused(registry_url: str) -> None:
    foreign = {"type": "record", "name": f"Foreign{uuid.uuid4().hex[:8]}", "fields": []}
    schema_id = RegistryClient(registry_url).register(foreign["name"], foreign)
    with pytest.raises(UnknownSchema, match="not ours"):
        fresh_codec(registry_url).decode(b"\x00" + struct.pack(">I", schema_id))


def test_old_writer_version_by_id_reads_as_current(registry_url: str) -> None:
    """A DeadLetter written with released v1 (no `retriable`) under its own registry id."""
    v1 = load_schema("dead_letter.v1.avsc", "avro/released")
    v1_id = RegistryClient(registry_url).register(full_name(v1), v1)
    single_object = dead_letter_v1_bytes()
    body = single_object[10:]  # drop the single-object header, keep the v1 body
    record = fresh_codec(registry_url).decode_as(
        b"\x00" + struct.pack(">I", v1_id) + body, DeadLetter
    )
    assert record.retriable is False


def _set_backward(url: str, subject: str) -> None:
    RegistryClient(url)._call("PUT", f"/config/{subject}", {"compatibility": "BACKWARD"})


def test_registry_refuses_a_breaking_change(registry_url: str) -> None:
    """The registry enforces our rule (`sluice schemas check`): a new field needs a default."""
    subject = f"dev.sluice.test.Breaking{uuid.uuid4().hex[:8]}"
    base: dict[str, Any] = {
        "type": "record",
        "name": subject.rsplit(".", 1)[1],
        "namespace": "dev.sluice.test",
        "fields": [{"name": "a", "type": "string"}],
    }
    client = RegistryClient(registry_url)
    client.register(subject, base)
    _set_backward(registry_url, subject)
    with_default = {**base, "fields": [*base["fields"], {"name": "b", "type": "int", "default": 0}]}
    client.register(subject, with_default)
    breaking = {**base, "fields": [*with_default["fields"], {"name": "c", "type": "int"}]}
    with pytest.raises(IncompatibleSchema, match="refused"):
        client.register(subject, breaking)


def test_worker_writes_confluent_framing_that_consumers_read(
    registry_url: str, isolated: Isolated, tmp_path: Any
) -> None:
    """The worker with SCHEMA_REGISTRY_URL; `sluice consume` and a fresh codec read by id.

    The model is the fault server answering a fixed valid triage: this test is about the wire
    format, so what the local model would say must not decide its outcome.
    """
    server = FaultServer().start()
    env = {**isolated.env, "SCHEMA_REGISTRY_URL": registry_url, "OPENAI_BASE_URL": server.base_url}
    good = answer_marker(GOOD_TRIAGE)
    s = isolated.settings
    t = s.topics
    start = asyncio.run(end_offsets(s, [t.tickets_auto, t.tickets_review, t.deadletter]))
    assert sum(start.values()) == 0
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        tickets = [
            ("R-1", {"event_id": "ev-R-1", "ticket_id": "R-1", "body": f"Refund me. {good}"}),
            ("R-2", {"event_id": "ev-R-2", "ticket_id": "R-2", "body": f"Login fails. {good}"}),
        ]
        produce(
            s.bootstrap_servers,
            t.tickets_received,
            [(k, json.dumps(v).encode()) for k, v in tickets],
        )
        produce(s.bootstrap_servers, t.tickets_received, [("bad", b"not json")])
        lanes = [t.tickets_auto, t.tickets_review, t.deadletter]
        out = wait_for(s.bootstrap_servers, lanes, 3, 240)
        assert worker.alive(), worker.log_tail()
    finally:
        worker.proc.terminate()
        worker.proc.wait(timeout=30)
        server.stop()
    assert len(out) == 3
    ids = RegistryClient(registry_url)
    reader = fresh_codec(registry_url)
    kinds = []
    for r in out:
        assert r.value is not None
        assert r.value[:1] == b"\x00", r.value
        (schema_id,) = struct.unpack(">I", r.value[1:5])
        assert full_name(ids.schema(schema_id)).startswith("dev.sluice.v1.")
        kinds.append(type(reader.decode(r.value)))
    assert sorted(k.__name__ for k in kinds) == ["DeadLetter", "TicketTriaged", "TicketTriaged"]

    # The human consumer decodes the same bytes by id, from the command line.
    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "consume",
            t.deadletter,
            "--from-beginning",
            "--max",
            "1",
            "--idle-timeout",
            "20",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode()
    line = json.loads(printed.strip().splitlines()[-1])
    assert line["value"]["reason"] == "poison_input"
    # Without the registry the same bytes are refused with the fix named, not misread.
    triaged = next(r.value for r in out if r.topic != t.deadletter)
    with pytest.raises(UnknownSchema, match="SCHEMA_REGISTRY_URL"):
        Codec().decode_as(triaged or b"", TicketTriaged)


class RecordingProxy(ThreadingHTTPServer):
    """Forwards every request to the real registry and records ``(method, path)``."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    server: RecordingProxy

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _forward(self) -> None:
        with self.server.lock:
            self.server.requests.append((self.command, self.path))
        length = int(self.headers.get("Content-Length") or 0)
        request = urllib.request.Request(
            self.server.upstream + self.path,
            method=self.command,
            data=self.rfile.read(length) if length else None,
            headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, body, kind = answer.status, answer.read(), answer.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            status, body, kind = exc.code, exc.read(), exc.headers["Content-Type"]
        self.send_response(status)
        self.send_header("Content-Type", kind or "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _forward


@pytest.fixture
def recording_registry(registry_url: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(registry_url)
    thread = threading.Thread(target=proxy.serve_forever, daemon=True)
    thread.start()
    try:
        yield proxy
    finally:
        proxy.shutdown()
        proxy.server_close()
        thread.join()


def test_readers_never_register(
    registry_url: str, recording_registry: RecordingProxy, isolated: Isolated
) -> None:
    """`sluice consume` and the lane tally decode Confluent framing by id lookups alone."""
    s = isolated.settings
    record = next(r for r in SAMPLES if isinstance(r, DeadLetter))
    data = fresh_codec(registry_url).encode(record)  # the writer registers, directly
    assert data[:1] == b"\x00"
    start = asyncio.run(end_offsets(s, [s.topics.deadletter]))
    asyncio.run(send_values(s.bootstrap_servers, s.topics.deadletter, [data], partition=0))

    env = {**isolated.env, "SCHEMA_REGISTRY_URL": recording_registry.url}
    printed = subprocess.run(
        [sys.executable, "-m", "streams.cli", "consume", s.topics.deadletter, "--from-beginning"]
        + ["--max", "1", "--idle-timeout", "20"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout.decode()
    line = json.loads(printed.strip().splitlines()[-1])
    assert line["type"] == "DeadLetter", line
    assert line["value"]["event_id"] == record.event_id

    src = record.source
    reader = s.model_copy(update={"schema_registry_url": recording_registry.url})
    tally = asyncio.run(
        collect(reader, start, {(src.topic, src.partition, src.offset)}, timeout_s=60)
    )
    assert tally.counts()["deadletter"] == 1

    with recording_registry.lock:
        seen = list(recording_registry.requests)
    assert seen, "the readers never asked the registry"
    assert [r for r in seen if r[0] != "GET" or "/schemas/ids/" not in r[1]] == [], seen
