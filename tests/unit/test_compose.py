"""docker-compose.yml can't run here (no Docker engine); check its structure instead."""

from pathlib import Path

import yaml

from streams.settings import Settings

COMPOSE = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())


def test_services_and_healthchecks() -> None:
    services = COMPOSE["services"]
    assert set(services) >= {"kafka", "redis", "schema-registry", "worker"}
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    for name in ("kafka", "redis", "schema-registry", "worker"):
        assert services[name]["healthcheck"]["test"], f"{name} has no healthcheck"
    depends = services["worker"]["depends_on"]
    assert {d["condition"] for d in depends.values()} == {"service_healthy"}
    assert set(depends) == {"kafka", "redis", "schema-registry"}


def test_kraft_single_node() -> None:
    env = COMPOSE["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    internal = [a for a in env["KAFKA_ADVERTISED_LISTENERS"].split(",") if a.startswith("INTERNAL")]
    assert internal == ["INTERNAL://kafka:29092"]


def test_redis_keeps_keys() -> None:
    # sh -c "... exec redis-server /tmp/auth.conf --appendonly yes ...": the password goes into a
    # config file, so the server's own arguments are the last line's words.
    command = COMPOSE["services"]["redis"]["command"][-1].split()
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_worker_uses_the_same_variable_names() -> None:
    env = COMPOSE["services"]["worker"]["environment"]
    known = {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL"}
    known.add("SCHEMA_REGISTRY_URL")
    known.add("OTEL_EXPORTER_OTLP_ENDPOINT")  # the OpenTelemetry SDK's own variable
    known |= {f"SLUICE_{n.upper()}" for n in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
    assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")  # tests/security
    assert env["REDIS_URL"].endswith("@redis:6379/0")
    assert env["SCHEMA_REGISTRY_URL"] == "http://schema-registry:8081"


def test_registry_stores_in_our_kafka_with_our_compatibility_rule() -> None:
    env = COMPOSE["services"]["schema-registry"]["environment"]
    assert env["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"] == "PLAINTEXT://kafka:29092"
    assert env["SCHEMA_REGISTRY_SCHEMA_COMPATIBILITY_LEVEL"] == "backward"
