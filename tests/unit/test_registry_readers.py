"""Readers never register schemas: ``sluice consume`` and the lane tally only look schemas up.

Against a tiny but real HTTP schema registry (the two Confluent endpoints the codec uses) that
records every request, so "registers nothing" is what went over the wire, not what a mock saw.
"""

from __future__ import annotations

import gc
import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError

from schemas import catalogue
from schemas.codec import CONFLUENT_MAGIC
from streams import compose
from streams.consume import consume
from streams.lanes import collect
from streams.settings import Settings
from tests.records import SAMPLES


class Registry(ThreadingHTTPServer):
    """``POST /subjects/<s>/versions`` and ``GET /schemas/ids/<id>``, in memory."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.ids: dict[str, int] = {}  # schema text -> id

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def posts(self) -> list[str]:
        with self.lock:
            return [path for method, path in self.requests if method == "POST"]

    def seen(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.requests)

    def forget_requests(self) -> None:
        with self.lock:
            self.requests.clear()


class Handler(BaseHTTPRequestHandler):
    server: Registry

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        with self.server.lock:
            self.server.requests.append(("POST", self.path))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not re.fullmatch(r"/subjects/[^/]+/versions", self.path):
            self._answer(404, {"error_code": 404, "message": "no such endpoint"})
            return
        with self.server.lock:
            schema_id = self.server.ids.setdefault(body["schema"], len(self.server.ids) + 1)
        self._answer(200, {"id": schema_id})

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests.append(("GET", self.path))
            texts = {i: text for text, i in self.server.ids.items()}
        found = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
        if found is None or int(found.group(1)) not in texts:
            self._answer(404, {"error_code": 40403, "message": "Schema not found"})
            return
        self._answer(200, {"schema": texts[int(found.group(1))]})


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    server = Registry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("SCHEMA_REGISTRY_URL", server.url)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def no_kafka(monkeypatch: pytest.MonkeyPatch) -> str:
    """A bootstrap address where nothing listens: readers fail at Kafka, after their codec."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", address)
    return address


def test_writer_codec_registers_every_schema(registry: Registry) -> None:
    compose.codec(Settings())
    assert len(registry.posts()) == len(catalogue.models())


def test_reader_codec_registers_nothing_and_reads_by_id(registry: Registry) -> None:
    writer = compose.codec(Settings())
    written = [writer.encode(record) for record in SAMPLES]
    assert all(data[:1] == CONFLUENT_MAGIC for data in written)
    registry.forget_requests()

    reader = compose.codec(Settings(), register=False)
    assert reader.wire_format == "confluent"
    assert registry.seen() == []
    assert [reader.decode(data) for data in written] == SAMPLES
    assert registry.posts() == []
    lookups = registry.seen()
    assert all(method == "GET" and "/schemas/ids/" in path for method, path in lookups)
    assert len(lookups) == len({type(record) for record in SAMPLES})  # one per id, then cached


@pytest.mark.timeout(60)
async def test_consume_registers_nothing(registry: Registry, no_kafka: str) -> None:
    with pytest.raises(KafkaConnectionError):
        await consume(
            Settings(),
            "tickets.auto",
            io.StringIO(),
            from_beginning=True,
            max_records=1,
            idle_timeout_s=1.0,
        )
    assert registry.seen() == []


@pytest.mark.timeout(60)
# collect() leaves its consumer unclosed when start() fails (it stops it only once started), and
# aiokafka complains from __del__; collected here, inside this test, and ignored.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_lane_tally_registers_nothing(registry: Registry, no_kafka: str) -> None:
    with pytest.raises(KafkaConnectionError):
        await collect(Settings(), {}, set(), timeout_s=1.0)
    gc.collect()
    assert registry.seen() == []
