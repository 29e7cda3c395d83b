"""Reviewed results act: worker → review lane → a reviewer's decision → executor → sinks.

Two tickets the model is unsure of go to review. One is approved, and its actions run as decided:
routing at confidence 0.5 (refused from the auto lane) runs, because a person approved it; the
acknowledgement runs; ``escalate`` stays refused (not on the agent's allowlist, whoever approves).
The other is rejected, and nothing runs for it. Counted at the sinks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from agents.testing.fault_server import answer_marker
from schemas import codec
from schemas.records import ToolEffect
from tests.integration.conftest import (
    Isolated,
    Sinks,
    Worker,
    fake_model_env,
    free_port,
    send_values,
    start_worker,
    stop,
)
from tests.integration.test_executor import read_all
from tests.integration.test_review_service import Api, reviewers_file, serve, wait_for
from tests.poison.corpus import TRIAGE_ANSWER


def review_env(
    isolated: Isolated, sinks: Sinks, fault_server: str, tmp_path: Path, port: int, **extra: str
) -> dict[str, str]:
    """A worker's, executor's and review service's environment: the test's sinks and model."""
    return {
        **fake_model_env({**isolated.env, **sinks.env}, fault_server),
        "SLUICE_REVIEWERS_FILE": str(reviewers_file(tmp_path)),
        "SLUICE_REVIEW_PORT": str(port),
        **extra,
    }


@contextlib.contextmanager
def running(env: dict[str, str], tmp_path: Path) -> Iterator[tuple[Worker, Worker, Worker]]:
    """A worker, an executor and a review service, stopped (in reverse) however the test ends."""
    worker = start_worker(env, tmp_path / "worker.log")
    executor = start_worker(env, tmp_path / "executor.log", command="executor")
    service = serve(env, tmp_path / "review.log")
    try:
        yield worker, executor, service
    finally:
        stop(service)
        stop(executor)
        stop(worker)


async def test_an_approved_result_acts_and_a_rejected_one_does_not(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix  # idempotency keys are global: event ids unique per run
    port = free_port()
    env = review_env(isolated, sinks, fault_server, tmp_path, port)
    acts = [
        {"action": "route_to_team", "confidence": 0.5},
        {"action": "send_acknowledgement", "confidence": 0.6},
        {"action": "escalate", "confidence": 0.6},
    ]
    unsure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.5})
    tickets = [
        {"event_id": f"ok{run}", "ticket_id": "T-OK", "body": f"Charged twice. {unsure}"},
        {"event_id": f"no{run}", "ticket_id": "T-NO", "body": f"Charged twice. {unsure}"},
    ]
    with running(env, tmp_path) as (_, executor, service):
        await send_values(
            s.bootstrap_servers,
            s.topics.tickets_received,
            [json.dumps(t).encode() for t in tickets],
        )
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            await wait_for(api, service, 2)
            by_event = {i["event_id"]: i["id"] for i in await api.pending()}
            status, _ = await api.call("POST", f"/api/items/{by_event[f'ok{run}']}/approve")
            assert status == 200
            status, _ = await api.call(
                "POST", f"/api/items/{by_event[f'no{run}']}/reject", body={"reason": "wrong"}
            )
            assert status == 200
        raw = await read_all(s, s.topics.effects, 3, timeout_s=90)
        assert executor.alive(), executor.log_tail()
    effects = sorted(
        (e.event_id, e.tool, e.status, e.source, e.reason)
        for e in (codec.decode_as(v, ToolEffect) for v in raw)
    )
    assert effects == [
        (f"ok{run}", "escalate", "refused", "reviewed", "not_allowlisted"),
        (f"ok{run}", "route_to_team", "applied", "reviewed", None),
        (f"ok{run}", "send_acknowledgement", "applied", "reviewed", None),
    ]
    assert (sinks.webhook_requests(), sinks.mails()) == (1, 1)


async def test_held_actions_run_once_a_person_approves_them(
    isolated: Isolated, fault_server: str, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix
    port = free_port()
    policy = tmp_path / "policy.toml"
    policy.write_text("[flows.tickets]\naction_threshold = 0.7\n")
    env = review_env(isolated, sinks, fault_server, tmp_path, port, SLUICE_POLICY_FILE=str(policy))
    acts = [
        {"action": "route_to_team", "confidence": 0.9},
        {"action": "send_acknowledgement", "confidence": 0.5},
    ]
    sure = answer_marker({**TRIAGE_ANSWER, "actions": acts, "confidence": 0.95})
    ticket = {"event_id": f"held{run}", "ticket_id": "T-H", "body": f"Charged twice. {sure}"}
    with running(env, tmp_path) as (_, executor, service):
        await send_values(
            s.bootstrap_servers, s.topics.tickets_received, [json.dumps(ticket).encode()]
        )
        # The confident routing runs from the auto lane at once; the acknowledgement waits.
        first = await read_all(s, s.topics.effects, 1, timeout_s=60)
        assert [codec.decode_as(v, ToolEffect).tool for v in first] == ["route_to_team"]
        assert (sinks.webhook_requests(), sinks.mails()) == (1, 0)
        async with aiohttp.ClientSession() as session:
            api = Api(session, f"http://127.0.0.1:{port}")
            await wait_for(api, service, 1)
            [item] = await api.pending()
            assert item["kind"] == "held"
            assert "actions[1] send_acknowledgement 0.50" in item["reason"]
            status, _ = await api.call("POST", f"/api/items/{item['id']}/approve")
            assert status == 200
        raw = await read_all(s, s.topics.effects, 3, timeout_s=60)
        assert executor.alive(), executor.log_tail()
    effects = sorted(
        (e.tool, e.status, e.source) for e in (codec.decode_as(v, ToolEffect) for v in raw)
    )
    assert effects == [
        ("route_to_team", "applied", "auto"),
        ("route_to_team", "duplicate", "reviewed"),  # ran already: its key is done
        ("send_acknowledgement", "applied", "reviewed"),
    ]
    assert (sinks.webhook_requests(), sinks.mails()) == (1, 1)
