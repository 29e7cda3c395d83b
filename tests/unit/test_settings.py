from pathlib import Path

import pytest
from pydantic import ValidationError

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
    assert s.llm_config().api_key == "sk-test"


def test_frozen_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.auto_threshold = 0.1  # type: ignore[misc]
    monkeypatch.setenv("SLUICE_AUTO_THRESHOLD", "1.5")
    with pytest.raises(ValidationError):
        Settings()


def test_topic_names_are_distinct() -> None:
    names = Settings().topics.all()
    assert len(names) == len(set(names)) == 7
