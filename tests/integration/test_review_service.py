"""The review service on real Kafka and Redis: items come from a real worker's review lane,
decisions go to ``tickets.reviewed`` once each, claims keep two reviewers apart, edits are
validated by the record's schema, nothing works without a token, and a restarted service shows
what the topics say."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import ReviewDecision, TicketTriaged
from streams.review.auth import token_digest
from streams.topics import partitions
from tests.integration.conftest import (
    ROOT,
    Isolated,
    Worker,
    fake_model_env,
    free_port,
    send_values,
    start_worker,
    stop,
)
from tests.poison.corpus import TRIAGE_ANSWER

TOKENS = {"alice": "alice-token-" + "a" * 40, "bob": "bob-token-" + "b" * 40}


def reviewers_file(tmp_path: Path) -> Path:
    path = tmp_path / "reviewers.toml"
    path.write_text(
        "".join(
            f'[reviewers.{name}]\ntoken_sha256 = "{token_digest(token)}"\n'
            for name, token in TOKENS.items()
        )
    )
    return path


def ticket(n: int) -> bytes:
    answer = {**TRIAGE_ANSWER, "confidence": 0.4, "category": "shipping", "team": "logistics"}
    answer["priority"] = "medium"
    answer["actions"] = [{"action": "route_to_team", "target": "logistics", "confidence": 0.5}]
    body = f"Ticket {n}: where is my parcel? {answer_marker(answer)}"
    return json.dumps({"event_id": f"rv-{n}", "ticket_id": f"T-{n}", "body": body}).encode()


class Api:
    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def call(
        self, method: str, path: str, who: str | None = "alice", body: Any = None
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
        async with self.session.request(
            method, self.base + path, headers=headers, json=body
        ) as response:
            return response.status, await response.json()

    async def pending(self) -> list[dict[str, Any]]:
        status, items = await self.call("GET", "/api/items?flow=tickets")
        assert status == 200, items
        return list(items)


def serve(env: dict[str, str], log: Path) -> Worker:
    return start_worker(env, log, "serve", command="review")


async def wait_for(api: Api, service: Worker, count: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert service.alive(), service.log_tail()
        try:
            if len(await api.pending()) >= count:
                return
        except aiohttp.ClientConnectionError:
            pass  # not listening yet: it reads the topics first
        assert time.monotonic() < deadline, service.log_tail()
        await asyncio.sleep(0.5)


async def reviewed(isolated: Isolated) -> list[ReviewDecision]:
    s = isolated.settings
    topic = s.topics.of("tickets", "reviewed")
    tps = await partitions(s, [topic])
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[ReviewDecision] = []
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                out += [codec.decode_as(m.value or b"", ReviewDecision) for m in messages]
        return out
    finally:
        await consumer.stop()


async def test_review_service_end_to_end(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    s = isolated.settings
    port = free_port()
    env = {
        **fake_model_env(isolated.env, fault_server),
        "SLUICE_REVIEWERS_FILE": str(reviewers_file(tmp_path)),
        "SLUICE_REVIEW_PORT": str(port),
        "SLUICE_REVIEW_URL": f"http://127.0.0.1:{port}",
    }
    # Poison on the review lane itself (not ours, truncated, empty): skipped, logged, not fatal.
    review_topic = s.topics.of("tickets", "review")
    await send_values(s.bootstrap_servers, review_topic, [b"not avro", b"\xc3\x01\x00", b""])
    worker = start_worker(env, tmp_path / "worker.log")
    service = serve(env, tmp_path / "review-1.log")
    try:
        await send_values(
            s.bootstrap_servers, s.topics.tickets_received, [ticket(n) for n in range(5)]
        )
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            await wait_for(api, service, 5)
            items = await api.pending()
            assert {i["event_id"] for i in items} == {f"rv-{n}" for n in range(5)}
            assert service.log.read_text().count("review.unreadable") == 3
            assert all("< threshold 0.800" in i["reason"] for i in items), items
            assert all("actions[0]" in i["low_confidence"] for i in items)
            a, b, c, d, e = (i["id"] for i in sorted(items, key=lambda i: i["event_id"]))

            # Nothing without a valid token, before any handler runs.
            refused = [
                ("GET", "/api/items"),
                ("GET", f"/api/items/{a}"),
                ("POST", f"/api/items/{a}/approve"),
                ("GET", "/api/metrics"),
            ]
            for method, path in refused:
                status, body = await api.call(method, path, who=None)
                assert (status, body["error"]) == (401, "unauthorized")
            async with session.get(
                api.base + "/api/items", headers={"Authorization": "Bearer " + "x" * 52}
            ) as wrong:
                assert wrong.status == 401

            # The source event is shown with the item.
            status, shown = await api.call("GET", f"/api/items/{a}")
            assert status == 200
            assert json.loads(shown["source_event"])["event_id"] == "rv-0"

            # Claims: alice holds a; bob can neither claim nor decide it.
            assert (await api.call("POST", f"/api/items/{a}/claim"))[0] == 200
            status, body = await api.call("POST", f"/api/items/{a}/claim", who="bob")
            assert (status, body["error"]) == (409, "review_conflict")
            assert "claimed by alice" in body["message"]
            assert (await api.call("POST", f"/api/items/{a}/approve", who="bob"))[0] == 409

            # Edits are checked against the record's schema and its locked fields.
            status, body = await api.call(
                "POST", f"/api/items/{a}/edit", body={"changes": {"priority": "sky-high"}}
            )
            assert (status, body["error"]) == (422, "invalid_edit")
            status, body = await api.call(
                "POST", f"/api/items/{a}/edit", body={"changes": {"event_id": "forged"}}
            )
            assert (status, body["error"]) == (422, "invalid_edit")
            status, decision = await api.call(
                "POST",
                f"/api/items/{a}/edit",
                body={"changes": {"team": "billing", "priority": "high"}, "comment": "refund"},
            )
            assert status == 200, decision
            assert decision["verdict"] == "correct"
            assert {c["field"] for c in decision["changes"]} == {"team", "priority"}
            # Decided once: a second decision on a is refused.
            assert (await api.call("POST", f"/api/items/{a}/approve"))[0] == 409

            # Two reviewers deciding b at the same moment: exactly one wins.
            both = await asyncio.gather(
                api.call("POST", f"/api/items/{b}/approve", who="alice"),
                api.call("POST", f"/api/items/{b}/approve", who="bob"),
            )
            assert sorted(status for status, _ in both) == [200, 409]

            # One reviewer's double click: one decision.
            twice = await asyncio.gather(
                api.call("POST", f"/api/items/{e}/approve"),
                api.call("POST", f"/api/items/{e}/approve"),
            )
            assert sorted(status for status, _ in twice) == [200, 409]

            status, body = await api.call("POST", f"/api/items/{c}/reject", who="bob", body={})
            assert (status, body["error"]) == (422, "invalid_edit")  # a reason is required
            status, _ = await api.call(
                "POST", f"/api/items/{c}/reject", who="bob", body={"reason": "spam"}
            )
            assert status == 200
            assert [i["id"] for i in await api.pending()] == [d]
    finally:
        stop(service)
        stop(worker)

    decisions = await reviewed(isolated)
    assert len(decisions) == 4
    by_event = {x.event_id: x for x in decisions}
    assert set(by_event) == {"rv-0", "rv-1", "rv-2", "rv-4"}
    edited = by_event["rv-0"]
    assert (edited.verdict, edited.reviewer, edited.comment) == ("correct", "alice", "refund")
    assert json.loads(edited.corrections["team"]) == "billing"
    record = codec.decode_as(edited.record or b"", TicketTriaged)
    assert (record.team, record.priority, record.event_id) == ("billing", "high", "rv-0")
    assert edited.item is not None
    assert edited.seconds_to_decision > 0
    assert (by_event["rv-2"].verdict, by_event["rv-2"].record) == ("reject", None)

    # A restarted service shows what the topics say: d pending, four decided; and the CLI works.
    service = serve(env, tmp_path / "review-2.log")
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            await wait_for(api, service, 1)
            assert [i["id"] for i in await api.pending()] == [d]
            status, done = await api.call("GET", "/api/items?flow=tickets&state=decided")
            verdicts = sorted(i["decision"]["verdict"] for i in done)
            assert verdicts == ["approve", "approve", "correct", "reject"]
            status, metrics = await api.call("GET", "/api/metrics")
            assert metrics["tickets"]["pending"] == 1
            assert metrics["tickets"]["verdicts"] == {"approve": 2, "correct": 1, "reject": 1}
            assert metrics["tickets"]["rates"]["approve"] == 0.5
            assert metrics["tickets"]["field_edit_rate"] == {"priority": 0.25, "team": 0.25}

        cli_env = {**env, "SLUICE_REVIEW_TOKEN": TOKENS["bob"]}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "streams.cli", "review", *args],
                env=cli_env, cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip

        listed = cli("list", "--flow", "tickets")
        assert listed.returncode == 0, listed.stderr
        assert [i["id"] for i in json.loads(listed.stdout)] == [d]
        approved = cli("approve", d, "--comment", "ok")
        assert approved.returncode == 0, approved.stderr
        assert json.loads(approved.stdout)["reviewer"] == "bob"
        again = cli("approve", d)
        assert again.returncode == 1
        assert "decided already" in again.stderr
    finally:
        stop(service)
    assert len(await reviewed(isolated)) == 5


def test_the_service_refuses_to_start_without_reviewers(isolated: Isolated) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", "review", "serve"],
        env={k: v for k, v in isolated.env.items() if k != "SLUICE_REVIEWERS_FILE"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no anonymous access" in done.stderr
