"""B4: a routing target is a team, whoever wrote it.

Triaged tickets on the auto lane (where a model's answer or a forged record lands) ask the
executor to route to ``attackers`` or ``finance; DROP``: the record's own model refuses a
``route_to_team`` target that is not a :data:`~schemas.records.Team`, so the record is
dead-lettered and the webhook never hears of it. The tool's input model refuses the same for a
reviewer's decision (``invalid_input``: tests/unit/test_tool_policy.py). A valid team is routed.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from schemas import codec
from schemas.records import DeadLetter, ProposedAction, ToolEffect
from tests.integration.conftest import Isolated, Sinks, send_values, start_worker
from tests.integration.test_executor import read_all
from tests.security import lanes


def route_to(event_id: str, target: str) -> bytes:
    action = ProposedAction.model_construct(action="route_to_team", target=target, confidence=0.99)
    return lanes.ticket(event_id, "T-4", action)


def routed(state: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(state / "webhook.db")) as db:
        return [json.loads(b)["team"] for (b,) in db.execute("SELECT body FROM requests")]


async def test_a_target_that_is_no_team_never_reaches_the_webhook(
    isolated: Isolated, sinks: Sinks, tmp_path: Path
) -> None:
    s = isolated.settings
    run = s.topic_suffix
    env = {**isolated.env, **sinks.env}
    executor = start_worker(env, tmp_path / "executor.log", "--flow", "tickets", command="executor")
    try:
        hostile = {f"ev-b4-attackers{run}": "attackers", f"ev-b4-drop{run}": "finance; DROP"}
        values = [route_to(ev, target) for ev, target in hostile.items()]
        values.append(route_to(f"ev-b4-ok{run}", "logistics"))
        await send_values(s.bootstrap_servers, s.topics.of("tickets", "auto"), values)
        raw_dead = await read_all(s, s.topics.deadletter, len(hostile), timeout_s=60)
        raw_effects = await read_all(s, s.topics.effects, 1, timeout_s=30)
        assert executor.alive(), executor.log_tail()
        dead = [codec.decode_as(v, DeadLetter) for v in raw_dead]
        assert sorted(d.original_value or b"" for d in dead) == sorted(values[:2])
        assert all("route_to_team target must be one of" in d.error_message for d in dead)
        effects = [codec.decode_as(v, ToolEffect) for v in raw_effects]
        assert [(e.event_id, e.status) for e in effects] == [(f"ev-b4-ok{run}", "applied")]
        assert routed(sinks.state) == ["logistics"]
    finally:
        lanes.kill(executor)
