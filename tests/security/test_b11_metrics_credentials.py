"""B11: the LLM endpoint's breaker was named after its whole base URL, password and query
included, and that name is a ``/metrics`` label, a Redis key and ``sluice breaker status``
output. ``/metrics`` (unauthenticated) also listened on every interface by default.

Now endpoint names keep ``scheme://host:port/path`` only, and telemetry binds to 127.0.0.1 unless
``SLUICE_METRICS_HOST`` says otherwise. Checked on a running worker whose ``OPENAI_BASE_URL``
carries a user, a password and a key in its query.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from streams import serve
from streams.compose import endpoint_breaker_name
from streams.settings import Settings
from tests.integration.conftest import (
    ROOT,
    Isolated,
    fake_model_env,
    free_port,
    start_worker,
    stop,
)


def with_credentials(base_url: str) -> str:
    url = urlsplit(base_url)
    return f"{url.scheme}://user:s3cret@{url.netloc}{url.path}?key=abc123key#frag"


def test_endpoint_names_carry_no_credentials() -> None:
    url = "http://user:s3cret@127.0.0.1:8000/v1?key=abc123key#frag"
    assert endpoint_breaker_name(url) == "endpoint:http://127.0.0.1:8000/v1"
    settings = Settings(openai_base_url=url)
    assert endpoint_breaker_name(None, settings) == "endpoint:http://127.0.0.1:8000/v1"
    # Unchanged for URLs without credentials: existing breakers keep their state.
    assert endpoint_breaker_name("http://127.0.0.1:8000/v1/") == "endpoint:http://127.0.0.1:8000/v1"
    assert endpoint_breaker_name(None, Settings()) == "endpoint:local"


def test_telemetry_listens_on_loopback_by_default(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("SLUICE_METRICS_HOST", raising=False)
    assert Settings().metrics_host == "127.0.0.1"
    assert inspect.signature(serve.serve).parameters["host"].default == "127.0.0.1"


def test_a_running_worker_shows_no_credentials(
    isolated: Isolated, fault_server: str, tmp_path: Path
) -> None:
    port = free_port()
    env = fake_model_env(
        isolated.env,
        with_credentials(fault_server),
        SLUICE_METRICS_PORT=str(port),
    )
    env.pop("SLUICE_METRICS_HOST", None)
    worker = start_worker(env, tmp_path / "worker.log", "--flow", "tickets")
    try:
        deadline, text = time.monotonic() + 60, ""
        while 'breaker="endpoint:' not in text:
            assert worker.alive(), worker.log_tail()
            assert time.monotonic() < deadline, worker.log_tail()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                time.sleep(0.2)
        status = subprocess.run(
            [sys.executable, "-m", "streams.cli", "breaker", "status"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        log = worker.log.read_text(errors="replace")
    finally:
        stop(worker)
    for secret in ("s3cret", "abc123key"):
        assert secret not in text
        assert secret not in status.stdout + status.stderr
        assert secret not in log
    endpoint = endpoint_breaker_name(fault_server)
    assert f'breaker="{endpoint}"' in text
    assert status.returncode == 0, status.stderr
    assert f'"breaker": "{endpoint}"' in status.stdout
    assert "telemetry.serving" in log
    assert '"host": "127.0.0.1"' in log
