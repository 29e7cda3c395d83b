"""Where ``sluice replay`` writes its rows, and where it stopped.

Rows go to a JSON Lines file or an eval topic (never a live one). The position — per partition,
the span being replayed and the next offset still to do — is a small JSON file written
atomically, so ``--resume`` can go on after Ctrl-C or a crash; see :mod:`streams.replay`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from aiokafka import AIOKafkaProducer

from schemas.errors import ConfigError
from streams.settings import Settings
from streams.topics import create_missing

STATE_FORMAT = "sluice.replay-state/1"


# --- where rows go ---------------------------------------------------------------------------


class Sink(Protocol):
    """Where replay rows are written; ``flush`` returns once every row so far is durable."""

    async def start(self) -> None: ...
    async def write(self, row: dict[str, Any]) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


class FileSink:
    """JSON Lines appended to a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: Any = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    async def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    async def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    async def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def __str__(self) -> str:
        return str(self.path)


class TopicSink:
    """JSON rows to an eval topic (created when missing), keyed by event id."""

    def __init__(self, settings: Settings, topic: str) -> None:
        if topic in settings.topics.all():
            raise ConfigError(f"{topic!r} is a live topic; replay writes only to an eval topic")
        self.settings = settings
        self.topic = topic
        self._producer: AIOKafkaProducer | None = None
        self._sent: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        s = self.settings
        await create_missing(s, [self.topic])
        self._producer = AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            max_request_size=s.max_message_bytes,
        )
        await self._producer.start()

    async def write(self, row: dict[str, Any]) -> None:
        assert self._producer is not None
        value = json.dumps(row, ensure_ascii=False, default=str).encode()
        key = str(row["event_id"]).encode()
        self._sent.append(await self._producer.send(self.topic, value, key=key))

    async def flush(self) -> None:
        sent, self._sent = self._sent, []
        if sent:
            await asyncio.gather(*sent)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    def __str__(self) -> str:
        return f"topic {self.topic}"


# --- the resumable position ------------------------------------------------------------------


@dataclass
class State:
    """Per partition: the replayed span ``[start, end)`` and the next offset still to do."""

    topic: str
    candidate: dict[str, Any]
    spans: dict[int, tuple[int, int]]
    next: dict[int, int]
    rows: int = 0

    def to_json(self, upto: Mapping[int, int] | None = None) -> str:
        """``upto``: the positions to write (a snapshot taken before the output was flushed)."""
        nxt = self.next if upto is None else upto
        return json.dumps(
            {
                "format": STATE_FORMAT,
                "topic": self.topic,
                "candidate": self.candidate,
                "spans": {str(p): list(s) for p, s in sorted(self.spans.items())},
                "next": {str(p): o for p, o in sorted(nxt.items())},
                "rows": self.rows,
                "updated_at": datetime.now(UTC).isoformat(),
            },
            indent=2,
        )

    @classmethod
    def load(cls, path: Path) -> State:
        data = json.loads(path.read_text("utf-8"))
        if data.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path}: not a replay state file ({data.get('format')!r})")
        return cls(
            topic=data["topic"],
            candidate=data["candidate"],
            spans={int(p): (s[0], s[1]) for p, s in data["spans"].items()},
            next={int(p): o for p, o in data["next"].items()},
            rows=data.get("rows", 0),
        )

    def save(self, path: Path, upto: Mapping[int, int] | None = None) -> None:
        """Atomically: a crash leaves the previous position, never half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json(upto), "utf-8")
        os.replace(tmp, path)

    @property
    def remaining(self) -> int:
        return sum(max(0, end - self.next[p]) for p, (_, end) in self.spans.items())


def default_state_path(out: str) -> Path:
    """Next to a file output; under ``.local/replay/`` for a topic output."""
    if not out.startswith("topic:"):
        return Path(out + ".state.json")
    return Path(".local") / "replay" / f"{out.removeprefix('topic:')}.state.json"
