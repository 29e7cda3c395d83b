"""The local model's server parameters: the limits that bound its memory reach llama.cpp.

Built by :func:`agents.local_model.server_params` without starting anything, so the test is cheap;
what each limit is for is said where it is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import agents.llm
from agents.llm import LLMClient, LLMConfig
from agents.local_model import LOCAL_CTX_CHECKPOINTS, LocalModelServer, server_params
from schemas.errors import ConfigError
from streams import compose
from streams.settings import Settings


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")  # never loaded: nothing is started
    return path


def test_params_carry_the_configured_limits(gguf: Path) -> None:
    server = LocalModelServer(gguf, threads=3, context=4096, parallel=4, cache_mib=64)
    params = server.params()
    assert params.model.path == str(gguf)
    assert params.model_alias == {"local"}
    assert (params.n_ctx, params.n_parallel, params.kv_unified) == (4096, 4, False)
    assert (params.cpuparams.n_threads, params.cpuparams_batch.n_threads) == (3, 3)
    assert (params.cache_ram_mib, params.cache_idle_slots) == (64, True)
    assert params.n_ctx_checkpoints == LOCAL_CTX_CHECKPOINTS == 2
    assert (params.endpoint_slots, params.ui) == (False, False)
    assert (params.port, params.verbosity) == (0, 0)
    assert server.slot_context == 1024  # until the started server says otherwise


def test_defaults_turn_llama_cpps_8_gib_prompt_cache_off(
    gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SLUICE_LOCAL_CONTEXT", "SLUICE_LOCAL_PARALLEL", "SLUICE_LOCAL_CACHE_MIB"):
        monkeypatch.delenv(name, raising=False)
    config = compose.llm_config(Settings())
    assert (config.local_context, config.local_parallel, config.local_cache_mib) == (8192, 2, 0)
    params = server_params(
        gguf,
        threads=config.local_threads,
        context=config.local_context,
        parallel=config.local_parallel,
        cache_mib=config.local_cache_mib,
    )
    assert (params.n_ctx, params.n_parallel) == (8192, 2)
    assert (params.cache_ram_mib, params.cache_idle_slots) == (0, False)


def test_settings_reach_the_llm_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_LOCAL_CONTEXT", "2048")
    monkeypatch.setenv("SLUICE_LOCAL_PARALLEL", "1")
    monkeypatch.setenv("SLUICE_LOCAL_CACHE_MIB", "128")
    monkeypatch.setenv("SLUICE_LLM_CONTEXT_TOKENS", "16000")
    config = compose.llm_config(Settings())
    assert (config.local_context, config.local_parallel, config.local_cache_mib) == (2048, 1, 128)
    assert config.context_tokens == 16000
    monkeypatch.delenv("SLUICE_LLM_CONTEXT_TOKENS")
    assert compose.llm_config(Settings()).context_tokens is None


def test_an_unbounded_prompt_cache_is_refused(gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLUICE_LOCAL_CACHE_MIB", "-1")  # llama.cpp's "no limit"
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ConfigError, match="prompt cache"):
        server_params(gguf, threads=1, context=1024, parallel=1, cache_mib=-1)


class FakeServer:
    """Stands in for LocalModelServer: records what the client asks for, starts nothing."""

    made: list[dict[str, Any]] = []

    def __init__(self, model_path: Path | None, **kwargs: Any) -> None:
        FakeServer.made.append({"model_path": model_path, **kwargs})
        self.slot_context = 0

    def start(self) -> None:
        self.slot_context = 4096  # what a started llama.cpp server reports per slot

    root_url = "http://127.0.0.1:1"
    base_url = "http://127.0.0.1:1/v1"

    def stop(self) -> None:
        pass


async def test_the_client_starts_the_local_model_with_the_limits_and_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents.llm, "LocalModelServer", FakeServer)
    FakeServer.made.clear()
    config = LLMConfig(
        local_threads=1, local_context=8192, local_parallel=2, local_cache_mib=32, context_tokens=9
    )
    llm = LLMClient(config)
    llm.start()
    await llm.close()
    assert FakeServer.made == [
        {"model_path": None, "threads": 1, "context": 8192, "parallel": 2, "cache_mib": 32}
    ]
    assert llm.provider == "local"
    assert llm.context_tokens == 4096  # the local window comes from the server, not the setting
