"""Deployment defaults (issue 21, item 14): docker-compose.yml published Kafka and Redis on every
host interface, without authentication. There is no Docker engine in the test environment, so the
file is checked as data: what it publishes, where, and with which credentials.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
#: ${NAME:?message}: compose refuses to start without it. ${NAME:-default} or a literal would not.
REQUIRED = re.compile(r"\$\{(?P<name>[A-Z_]+):\?[^}]*\}")


def published(service: dict[str, Any]) -> list[tuple[str | None, str]]:
    """``(host address or None for all interfaces, host port)`` of every published port."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):  # long syntax
            out.append((port.get("host_ip"), str(port.get("published"))))
            continue
        parts = str(port).split(":")
        if len(parts) == 3:
            out.append((parts[0], parts[1]))
        else:
            out.append((None, parts[0]))
    return out


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_published_port_is_on_loopback(name: str) -> None:
    for host, port in published(SERVICES[name]):
        assert host == "127.0.0.1", f"{name} publishes {port} on {host or 'every interface'}"


def test_kafka_and_redis_are_not_reachable_from_other_hosts() -> None:
    for name in ("kafka", "redis"):
        assert all(host == "127.0.0.1" for host, _ in published(SERVICES[name])), name


def test_redis_requires_a_password_without_a_default() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"]) if isinstance(redis["command"], list) else redis["command"]
    assert "requirepass" in command
    assert "$$REDIS_PASSWORD" in command  # the container's variable, not a literal
    password = REQUIRED.fullmatch(environment(redis)["REDIS_PASSWORD"])
    assert password is not None
    assert password["name"] == "REDIS_PASSWORD"
    assert "REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])  # the probe authenticates


@pytest.mark.parametrize(
    "name", sorted(n for n, s in SERVICES.items() if "REDIS_URL" in environment(s))
)
def test_services_reach_redis_with_the_password(name: str) -> None:
    url = environment(SERVICES[name])["REDIS_URL"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/\d+", url), url


def test_no_service_carries_a_literal_password() -> None:
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if "PASSWORD" in key:
                assert REQUIRED.fullmatch(value), f"{name}: {key} has a literal or default value"
            for userinfo in re.findall(r"://[^/@\s]*:([^/@\s]*)@", value):
                assert REQUIRED.fullmatch(userinfo), f"{name}: {key} embeds a literal password"


def test_metrics_listen_beyond_loopback_only_behind_a_loopback_port() -> None:
    for name, service in SERVICES.items():
        if environment(service).get("SLUICE_METRICS_HOST", "127.0.0.1") != "127.0.0.1":
            # Inside its container: reachable only through the published port, on loopback.
            assert published(service), name
            assert all(host == "127.0.0.1" for host, _ in published(service)), name
