"""The routing policy: a pure function, table-tested rule by rule, and the file it is read from."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents.base import AgentResult
from agents.testing.fake_agent import FakeAgent
from schemas.envelope import ResultRecord
from schemas.errors import ConfigError
from schemas.events import DocumentReceived, TicketReceived
from schemas.records import InvoiceExtracted, ProposedAction, TicketTriaged
from streams.flow import Envelope, Flow
from streams.meta import Meta
from streams.pipeline import Pipeline
from streams.policy import (
    FlowPolicy,
    Policy,
    Rule,
    apply_policy,
    audit_sampled,
    check_policy,
    load_policy,
    routing_policy,
)
from streams.router import Decision, route
from streams.settings import Settings

AUTO = Decision("auto", "confidence 0.950 >= threshold 0.800")
REVIEW = Decision("review", "confidence 0.500 < threshold 0.800")


class Rec(BaseModel):
    total: Decimal | None = None
    priority: str = "medium"
    field_confidence: dict[str, float] = {}


class Ev(BaseModel):
    customer_plan: str | None = None


def rule(when: str, op: str, value: object) -> Rule:
    return Rule.model_validate({"name": "r", "when": when, "op": op, "value": value})


@pytest.mark.parametrize(
    ("r", "record", "event", "matches"),
    [
        (rule("record.total", ">", 10000), Rec(total=Decimal("10000.01")), Ev(), True),
        (rule("record.total", ">", 10000), Rec(total=Decimal("10000.00")), Ev(), False),
        (rule("record.total", ">=", 10000), Rec(total=Decimal("10000")), Ev(), True),
        (rule("record.total", "<", 0), Rec(total=Decimal("-5")), Ev(), True),  # credit note
        (rule("record.total", "<=", 0), Rec(total=Decimal("0.01")), Ev(), False),
        (rule("record.total", ">", 10000), Rec(total=None), Ev(), False),  # null never matches
        (rule("record.priority", "==", "urgent"), Rec(priority="urgent"), Ev(), True),
        (rule("record.priority", "!=", "urgent"), Rec(priority="urgent"), Ev(), False),
        (rule("record.priority", "in", ["high", "urgent"]), Rec(priority="high"), Ev(), True),
        (rule("record.priority", "not_in", ["high", "urgent"]), Rec(priority="low"), Ev(), True),
        (
            rule("event.customer_plan", "in", ["enterprise"]),
            Rec(),
            Ev(customer_plan="enterprise"),
            True,
        ),
        (rule("event.customer_plan", "in", ["enterprise"]), Rec(), Ev(customer_plan="pro"), False),
        (rule("event.customer_plan", "in", ["enterprise"]), Rec(), Ev(), False),  # unknown plan
        (
            rule("record.total", "==", 54.05),
            Rec(total=Decimal("54.05")),
            Ev(),
            True,
        ),  # no float drift
    ],
)
def test_rule_table(r: Rule, record: Rec, event: Ev, matches: bool) -> None:
    assert r.matches(record, event) is matches


@pytest.mark.parametrize(
    ("policy", "record", "proposed", "lane", "reason_has"),
    [
        # nothing in the policy applies: the router's decision stands, either way
        (FlowPolicy(), Rec(), AUTO, "auto", "confidence 0.950"),
        (FlowPolicy(), Rec(), REVIEW, "review", "confidence 0.500"),
        # a per-field threshold sends an otherwise confident result to review, naming the field
        (
            FlowPolicy(fields={"total": 0.9}),
            Rec(field_confidence={"total": 0.85}),
            AUTO,
            "review",
            "field total confidence 0.850 < 0.900",
        ),
        (
            FlowPolicy(fields={"total": 0.9}),
            Rec(field_confidence={"total": 0.9}),
            AUTO,
            "auto",
            "confidence 0.950",
        ),
        (
            FlowPolicy(fields={"total": 0.9}),
            Rec(),
            AUTO,
            "review",
            "field total confidence missing",
        ),
        (
            FlowPolicy(fields={"total": 0.9}),
            Rec(field_confidence={"total": math.nan}),
            AUTO,
            "review",
            "field total",
        ),
        # a hard rule, whatever the confidence
        (
            FlowPolicy(rules=(rule("record.total", ">", 100),)),
            Rec(total=Decimal(500)),
            AUTO,
            "review",
            "rule 'r': record.total > 100",
        ),
        # already in review: the policy's reasons are added to the router's, never replace them
        (
            FlowPolicy(rules=(rule("record.total", ">", 100),)),
            Rec(total=Decimal(500)),
            REVIEW,
            "review",
            "confidence 0.500 < threshold 0.800; rule 'r'",
        ),
    ],
)
def test_policy_table(
    policy: FlowPolicy, record: Rec, proposed: Decision, lane: str, reason_has: str
) -> None:
    decision = apply_policy(proposed, policy, record, Ev())
    assert decision.lane == lane
    assert reason_has in decision.reason


def test_every_reason_is_kept() -> None:
    policy = FlowPolicy(
        fields={"total": 0.9, "vendor_name": 0.7},
        rules=(
            rule("record.total", ">", 100),
            Rule(name="vip", when="event.customer_plan", op="==", value="enterprise"),
        ),
    )
    record = Rec(total=Decimal(500), field_confidence={"total": 0.5, "vendor_name": 0.2})
    decision = apply_policy(AUTO, policy, record, Ev(customer_plan="enterprise"))
    assert decision.lane == "review"
    assert len(decision.reasons) == 4
    assert decision.reason == "; ".join(decision.reasons)


def test_all_below_threshold_never_reaches_auto() -> None:
    # The router says review for every score under the threshold; no policy can undo that.
    permissive = FlowPolicy(threshold=0.0)
    for score in (0.0, 0.3, 0.7999):
        proposed = route(score, 0.8)
        assert apply_policy(proposed, permissive, Rec(), Ev()).lane == "review"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def test_the_file_is_read_with_defaults(tmp_path: Path) -> None:
    policy = load_policy(
        write(
            tmp_path,
            """
            [flows.invoices]
            threshold = 0.85
            fields = { total = 0.9 }
            [[flows.invoices.rules]]
            name = "large invoice"
            when = "record.total"
            op = ">"
            value = 10000
            """,
        ),
        threshold=0.7,
    )
    assert policy.of("invoices").threshold == 0.85
    assert policy.of("invoices").rules[0].name == "large invoice"
    assert policy.of("tickets").threshold == 0.7  # the default section takes the setting


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[flows.tickets]\nthreshold = 1.5", "flows.tickets.threshold"),
        ("[flows.tickets]\nthresold = 0.5", "thresold"),  # a typo is an error, not ignored
        ("[flows.tickets]\nfields = { total = 2.0 }", "fields.total = 2.0"),
        ('[[flows.tickets.rules]]\nname = "x"\nwhen = "total"\nop = ">"\nvalue = 1', "when"),
        ('[[flows.tickets.rules]]\nname = "x"\nwhen = "record.total"\nop = "~"\nvalue = 1', "op"),
        (
            '[[flows.tickets.rules]]\nname = "x"\nwhen = "record.total"\nop = ">"\nvalue = "big"',
            "needs a number",
        ),
        (
            '[[flows.tickets.rules]]\nname = "x"\nwhen = "record.total"\nop = "in"\nvalue = 1',
            "needs a list",
        ),
        ("[flows.tickets\n", "not valid TOML"),
        ('[flows.tickets]\nbreaker_fallback = "human"', "breaker_fallback"),
    ],
)
def test_a_bad_file_is_refused_with_the_place_named(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConfigError, match="policy file") as caught:
        load_policy(write(tmp_path, text))
    assert says in str(caught.value)


def test_the_breaker_fallback_is_read(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, '[flows.tickets]\nbreaker_fallback = "review"'))
    assert policy.of("tickets").breaker_fallback == "review"
    assert policy.of("invoices").breaker_fallback == "deadletter"


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_policy(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("policy", "says"),
    [
        (Policy(flows={"tikets": FlowPolicy()}), "flow 'tikets' is not registered"),
        (
            Policy(flows={"invoices": FlowPolicy(rules=(rule("record.totl", ">", 1),))}),
            "InvoiceExtracted has no field 'totl'",
        ),
        (
            Policy(flows={"tickets": FlowPolicy(rules=(rule("event.plan", "==", "x"),))}),
            "TicketReceived has no field 'plan'",
        ),
        (
            Policy(flows={"tickets": FlowPolicy(fields={"category": 0.5})}),
            "TicketTriaged has no field_confidence",
        ),
    ],
)
def test_names_are_checked_against_the_flows(policy: Policy, says: str) -> None:
    flows = {
        "tickets": (TicketTriaged, TicketReceived),
        "invoices": (InvoiceExtracted, DocumentReceived),
    }
    with pytest.raises(ConfigError, match=says):
        check_policy(policy, flows)


def test_nested_paths_are_checked() -> None:
    flows: dict[str, tuple[type[BaseModel] | None, type[BaseModel] | None]] = {
        "tickets": (TicketTriaged, TicketReceived)
    }
    ok = Policy(flows={"tickets": FlowPolicy(rules=(rule("record.agent.model", "==", "x"),))})
    check_policy(ok, flows)
    bad = Policy(flows={"tickets": FlowPolicy(rules=(rule("record.agent.modle", "==", "x"),))})
    with pytest.raises(ConfigError, match="agent.modle"):
        check_policy(bad, flows)


# --- wired into the pipeline: a real Pipeline, an in-process agent, the record on the lane ---


class Answer(BaseModel):
    total: Decimal


class Priced(ResultRecord):
    """The shared envelope plus one amount: enough for a ``record.total`` rule."""

    total: Decimal


def flow(confidence: float) -> Flow[TicketReceived, Answer]:
    def record(event: TicketReceived, result: AgentResult[Answer], envelope: Envelope) -> Priced:
        return Priced(**envelope, total=result.answer.total)

    agent: FakeAgent[TicketReceived, Answer] = FakeAgent(
        lambda e: Answer(total=Decimal(e.subject or "0")), confidence=confidence
    )
    return Flow("tickets", TicketReceived, agent, record)


def meta(subject: str) -> Meta:
    value = f'{{"ticket_id": "T-1", "subject": "{subject}"}}'.encode()
    return Meta(
        topic="tickets.received",
        partition=0,
        offset=7,
        timestamp=datetime(2026, 1, 1, tzinfo=UTC),
        key=b"k",
        value=value,
        headers=(),
    )


@pytest.mark.parametrize(
    ("subject", "confidence", "lane", "reason_has"),
    [
        ("50", 0.95, "auto", "confidence 0.950 >= threshold 0.850"),
        ("50000", 0.95, "review", "rule 'large': record.total > 10000"),
        ("50", 0.80, "review", "confidence 0.800 < threshold 0.850"),
    ],
)
async def test_the_pipeline_routes_by_the_flows_policy(
    subject: str, confidence: float, lane: str, reason_has: str
) -> None:
    policy = FlowPolicy(
        threshold=0.85, rules=(Rule(name="large", when="record.total", op=">", value=10000),)
    )
    pipeline = Pipeline(flow(confidence), Settings(), policy=policy)
    pipeline.codec = _JsonCodec()  # type: ignore[assignment]
    outcome = await pipeline.handle(meta(subject))
    assert outcome.lane == lane
    assert reason_has in outcome.reason
    record = pipeline.codec.last  # type: ignore[attr-defined]
    assert record.route.lane == lane  # the record on the lane says the same
    assert reason_has in record.route.reason
    assert record.route.threshold == 0.85


class _JsonCodec:
    """Keeps the record it was asked to encode (Priced has no Avro schema of its own)."""

    last: BaseModel | None = None

    def encode(self, record: BaseModel) -> bytes:
        self.last = record
        return record.model_dump_json().encode()


def test_without_a_file_every_flow_gets_the_threshold_setting() -> None:
    s = Settings().model_copy(update={"auto_threshold": 0.6})
    assert routing_policy(s, []).of("anything").threshold == 0.6


def test_the_file_setting_is_checked_at_start(tmp_path: Path) -> None:
    path = write(tmp_path, "[flows.nosuchflow]\nthreshold = 0.5")
    s = Settings().model_copy(update={"policy_file": path})
    with pytest.raises(ConfigError, match="nosuchflow"):
        routing_policy(s, [])


def test_the_example_file_is_valid_for_the_built_in_flows() -> None:
    path = Path(__file__).parents[2] / "examples" / "policy.toml"
    policy = load_policy(path)
    check_policy(
        policy,
        {
            "tickets": (TicketTriaged, TicketReceived),
            "invoices": (InvoiceExtracted, DocumentReceived),
        },
    )
    assert {r.name for r in policy.of("invoices").rules} == {"large invoice", "credit note"}


# --- audit sampling and per-action splits ---


def test_audit_sampling_is_a_hash_of_the_event_id_at_the_configured_rate() -> None:
    ids = [f"ev-{n}" for n in range(20_000)]
    picked = [i for i in ids if audit_sampled(i, 0.1)]
    assert 0.09 < len(picked) / len(ids) < 0.11
    assert picked == [i for i in ids if audit_sampled(i, 0.1)]  # a redelivery agrees
    assert not any(audit_sampled(i, 0.0) for i in ids[:500])
    assert all(audit_sampled(i, 1.0) for i in ids[:500])


class Acted(ResultRecord):
    """The envelope plus proposed actions."""

    actions: list[ProposedAction]


def acted_flow(confidence: float, actions: list[ProposedAction]) -> Flow[TicketReceived, Any]:
    def record(event: TicketReceived, result: AgentResult[Any], envelope: Envelope) -> Acted:
        return Acted(**envelope, actions=result.answer)

    agent: FakeAgent[TicketReceived, Any] = FakeAgent(lambda e: actions, confidence=confidence)
    return Flow("tickets", TicketReceived, agent, record)


ROUTE = ProposedAction(action="route_to_team", target="billing", confidence=0.9)
ACK = ProposedAction(action="send_acknowledgement", target=None, confidence=0.5)


@pytest.mark.parametrize(
    ("policy", "confidence", "auto_actions", "copy_kind", "copy_actions"),
    [
        # no split, no audit: one record, every action
        (FlowPolicy(), 0.95, ["route_to_team", "send_acknowledgement"], None, None),
        # split: the confident action runs, the doubtful one waits in a review copy of the whole
        (
            FlowPolicy(action_threshold=0.7),
            0.95,
            ["route_to_team"],
            "held",
            ["route_to_team", "send_acknowledgement"],
        ),
        # audit: everything runs, and a copy is queued to check the auto lane
        (
            FlowPolicy(audit_rate=1.0),
            0.95,
            ["route_to_team", "send_acknowledgement"],
            "audit",
            ["route_to_team", "send_acknowledgement"],
        ),
        # a result in review is never split nor sampled: the whole thing waits already
        (FlowPolicy(action_threshold=0.7, audit_rate=1.0), 0.5, None, None, None),
    ],
)
async def test_splits_and_audits_add_a_review_copy_of_an_auto_result(
    policy: FlowPolicy,
    confidence: float,
    auto_actions: list[str] | None,
    copy_kind: str | None,
    copy_actions: list[str] | None,
) -> None:
    pipeline = Pipeline(acted_flow(confidence, [ROUTE, ACK]), Settings(), policy=policy)
    pipeline.codec = _Keep()  # type: ignore[assignment]
    outcome = await pipeline.handle(meta("x"))
    kept = pipeline.codec.kept  # type: ignore[attr-defined]
    if auto_actions is None:
        assert (outcome.lane, outcome.copies) == ("review", ())
        return
    assert outcome.lane == "auto"
    assert [a.action for a in kept[0].actions] == auto_actions
    if copy_kind is None:
        assert outcome.copies == ()
        return
    [copy] = outcome.copies
    assert copy.topic == pipeline.lane_topic("review")
    assert dict(copy.headers)["sluice.copy"] == copy_kind.encode()
    assert dict(copy.headers)["sluice.lane"] == b"auto"  # where the event ended
    held = kept[1]
    assert held.route.lane == "auto"
    assert [a.action for a in held.actions] == copy_actions
    assert ("actions held" in held.route.reason) is (copy_kind == "held")
    assert "routed auto: confidence 0.950" in held.route.reason


class _Keep:
    def __init__(self) -> None:
        self.kept: list[BaseModel] = []

    def encode(self, record: BaseModel) -> bytes:
        self.kept.append(record)
        return record.model_dump_json().encode()
