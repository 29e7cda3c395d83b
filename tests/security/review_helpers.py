"""A review service process for the security tests, started once per module: its own topics
(a unique suffix), reviewers file, session key file and Redis prefix; review items produced
straight onto the review lanes (no worker, no model), each pointing at a real source event."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from argon2 import PasswordHasher
from pydantic import BaseModel

from schemas.codec import Codec
from schemas.records import Source
from streams.review.auth import token_digest
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.integration.conftest import (
    Worker,
    delete_topics,
    free_port,
    send_values,
    start_worker,
    stop,
)

PASSWORDS = {"alice": "alice password 1", "bob": "bob password 22"}
#: Reviewers' hashes here are cheap (the service verifies with the parameters a hash names), so
#: tests log in fast; unknown names still cost a full default hash (the service's dummy).
CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TOKENS = {"alice": "alice-token-" + "a" * 40, "bob": "bob-token-" + "b" * 40}


def reviewers_toml(passwords: dict[str, str], tokens: dict[str, str]) -> str:
    out = []
    for name in sorted(set(passwords) | set(tokens)):
        out.append(f"[reviewers.{name}]\n")
        if name in passwords:
            out.append(f'password_argon2 = "{CHEAP.hash(passwords[name])}"\n')
        if name in tokens:
            out.append(f'token_sha256 = "{token_digest(tokens[name])}"\n')
    return "".join(out)


@dataclass
class Service:
    url: str
    settings: Settings
    env: dict[str, str]
    proc: Worker
    reviewers: Path
    items: list[str]
    """Item ids, in the order of the records given."""

    @property
    def prefix(self) -> str:
        return f"sluice:review:{self.settings.app_id}"


async def _produce(settings: Settings, flow: str, records: list[BaseModel]) -> list[str]:
    """Each record onto ``flow``'s review lane, its ``source`` a real event on the received
    topic (so the item page shows it); returns the item ids."""
    codec = Codec()
    received = settings.topics.of(flow, "received")
    review = settings.topics.of(flow, "review")
    ids = []
    for n, record in enumerate(records):
        event = json.dumps({"event_id": f"src-{n}", "ticket_id": f"T-{n}", "body": "Help."})
        [(topic, partition, offset)] = await send_values(
            settings.bootstrap_servers, received, [event.encode()]
        )
        record = record.model_copy(
            update={
                "source": Source(topic=topic, partition=partition, offset=offset),
                "processed_at": datetime.now(UTC),
            }
        )
        [(_, p, o)] = await send_values(settings.bootstrap_servers, review, [codec.encode(record)])
        ids.append(f"{flow}-{p}-{o}")
    return ids


@contextlib.contextmanager
def review_service(
    services: Settings,
    tmp: Path,
    records: dict[str, list[BaseModel]] | None = None,
    **extra: str,
) -> Iterator[Service]:
    """``sluice review serve`` on its own topics with alice and bob (password and token);
    ``records`` by flow go onto the review lanes first. Stopped however the module ends."""
    tag = uuid.uuid4().hex[:8]
    settings = services.model_copy(
        update={"topic_suffix": f".sec-{tag}", "app_id": f"sluice-sec-{tag}"}
    )
    port = free_port()
    reviewers = tmp / "reviewers.toml"
    reviewers.write_text(reviewers_toml(PASSWORDS, TOKENS))
    env = {
        **os.environ,
        "SLUICE_TOPIC_SUFFIX": settings.topic_suffix,
        "SLUICE_APP_ID": settings.app_id,
        "SLUICE_LOG_FORMAT": "json",
        "SLUICE_LOG_LEVEL": "info",
        "SLUICE_REVIEWERS_FILE": str(reviewers),
        "SLUICE_REVIEW_PORT": str(port),
        "SLUICE_REVIEW_SESSION_KEY_FILE": str(tmp / "session.key"),
        **extra,
    }
    asyncio.run(ensure_topics(settings))
    items: list[str] = []
    for flow, flow_records in (records or {}).items():
        items += asyncio.run(_produce(settings, flow, flow_records))
    proc = start_worker(env, tmp / "review.log", "serve", command="review")
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_wait_ready(url, proc, len(items)))
        yield Service(url, settings, env, proc, reviewers, items)
    finally:
        stop(proc)
        asyncio.run(delete_topics(settings.bootstrap_servers, settings.topics.all()))


async def _wait_ready(url: str, proc: Worker, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {TOKENS['alice']}"}
    async with aiohttp.ClientSession() as http:
        while True:
            assert proc.alive(), proc.log_tail()
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(url + "/api/items?state=all", headers=headers) as r:
                    if r.status == 200 and len(await r.json()) >= count:
                        return
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.2)


async def login(http: aiohttp.ClientSession, url: str, name: str, password: str) -> int:
    """Log in through the form (its CSRF token first); the status of the POST."""
    async with http.get(url + "/login") as r:
        csrf = (await r.text()).split('name="csrf" value="')[1].split('"')[0]
    async with http.post(
        url + "/login",
        data={"csrf": csrf, "name": name, "password": password},
        allow_redirects=False,
    ) as r:
        return r.status


def csrf_of(html: str) -> str:
    return html.split('name="csrf" value="')[1].split('"')[0]


async def api(
    http: aiohttp.ClientSession, url: str, method: str, path: str, who: str = "alice", **kw: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {TOKENS[who]}", **kw.pop("headers", {})}
    async with http.request(method, url + path, headers=headers, **kw) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text
