from pathlib import Path

import pytest
from pydantic import ValidationError

from streams import compose
from streams.settings import Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def env_names(name: str, field) -> list[str]:  # type: ignore[no-untyped-def]
    alias = field.validation_alias
    if alias is None:
        return [f"SLUICE_{name.upper()}"]
    if isinstance(alias, str):
        return [alias]
    return [str(a) for a in alias.choices]


def test_every_variable_is_documented_in_the_readme() -> None:
    for name, field in Settings.model_fields.items():
        documented = [env for env in env_names(name, field) if f"`{env}`" in README]
        assert documented, f"README does not document {env_names(name, field)}"


def test_ecosystem_names_and_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("REDIS_URL", "redis://r:6379/1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("SLUICE_TOPIC_SUFFIX", ".t1")
    monkeypatch.setenv("SLUICE_AUTO_THRESHOLD", "0.9")
    s = Settings()
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert s.redis_url == "redis://r:6379/1"
    assert s.topics.tickets_received == "tickets.received.t1"
    assert s.topics.deadletter == "deadletter.t1"
    assert s.auto_threshold == 0.9
    assert "sk-test" not in repr(s)  # secrets never reach logs
    assert compose.llm_config(s).api_key == "sk-test"


def test_frozen_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.auto_threshold = 0.1  # type: ignore[misc]
    monkeypatch.setenv("SLUICE_AUTO_THRESHOLD", "1.5")
    with pytest.raises(ValidationError):
        Settings()


def test_topics_derive_from_flow_names_and_are_distinct() -> None:
    t = Settings().topics
    names = t.all()
    # two flows x four roles, then deadletter, effects, audit
    assert len(names) == len(set(names)) == 2 * 4 + 3
    assert (t.tickets_received, t.tickets_auto, t.tickets_reviewed) == (
        "tickets.received",
        "tickets.auto",
        "tickets.reviewed",
    )
    assert t.of("invoices", "received") == "documents.received"  # the spec's override


def test_topic_overrides_and_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_TOPIC_OVERRIDES", '{"tickets.received": "support.tickets.v1"}')
    monkeypatch.setenv("SLUICE_TOPIC_SUFFIX", ".x")
    t = Settings().topics
    assert t.tickets_received == "support.tickets.v1.x"
    assert t.tickets_auto == "tickets.auto.x"
    assert t.deadletter == "deadletter.x"
    assert t.lanes()["tickets.review.x"] == "review"


def test_the_local_model_gets_longer_call_timeouts_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams import compose

    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "SLUICE_LLM_TIMEOUT_S",
        "SLUICE_LLM_DEADLINE_S",
    ):
        monkeypatch.delenv(name, raising=False)
    local = compose.llm_config(Settings())
    assert (local.timeout_s, local.deadline_s) == (120.0, 300.0)
    monkeypatch.setenv("SLUICE_LLM_TIMEOUT_S", "45")
    assert compose.llm_config(Settings()).timeout_s == 45.0  # an explicit setting wins
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    monkeypatch.delenv("SLUICE_LLM_TIMEOUT_S")
    remote = compose.llm_config(Settings())
    assert (remote.timeout_s, remote.deadline_s) == (30.0, 90.0)
