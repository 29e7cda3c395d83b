"""A fault-injecting, OpenAI-compatible chat server for tests and benchmarks (yours and ours).

Why it exists: the LLM layer's retry, re-ask and routing logic only matters when the provider
misbehaves, and a real provider cannot be made to misbehave on cue. This server speaks just enough
of the OpenAI HTTP API (``POST /v1/chat/completions``, ``GET /v1/models``) for the real ``openai``
client to parse its answers, and decides per request which failure to produce. Driving it through
the real client (not a mock of it) means the tests also pin how that client maps HTTP failures
onto its exception types.

Choosing a fault, in order of precedence:

1. :meth:`FaultServer.script` queues faults for the next requests, whatever they contain.
2. A marker ``[[fault:A,B,C]]`` anywhere in the request's messages. Requests are grouped by a
   *key*, the sha1 of the first user message, so a retry or a re-ask of the same event (which
   appends messages but keeps the first user message) counts as the next request of that key:
   request *n* (0-based) of a key gets fault *n* of the list, or the last one once past its end.
3. The server's ``default`` fault.

A marker ``[[answer:<base64>]]`` forces the exact content of a successful answer; otherwise a
successful answer is a minimal instance of the request's JSON schema (see :func:`example_instance`),
or ``"ok"`` without one.

Logprobs, as an OpenAI-compatible server gives them when the request asks (``logprobs: true``,
``top_logprobs: N``): ``choices[0].logprobs.content`` is a list of tokens that concatenate to the
content exactly, each with its logprob and up to N alternatives (see :func:`token_logprobs`). The
tokens of a JSON value are given the answer's *certainty*: a string value that is a label of the
schema's ``enum`` for its field gets it as the label's probability, the other labels sharing the
rest among its alternatives; every other value token gets its log as logprob (so the geometric mean
over a value is the certainty too). The certainty is, in order: a marker ``[[certainty:<p>]]``
(:func:`certainty_marker`; ``[[certainty:none]]`` gives no logprobs even when asked), the answer's
own top-level ``confidence`` (a fake model as sure as it says it is), or
:data:`DEFAULT_CERTAINTY`. Without ``logprobs: true`` the choice's ``logprobs`` is null.

Faults: ``ok``, ``slow``, ``429``, ``500``, ``401``, ``403``, ``context_exceeded``, ``hang``,
``reset``, ``invalid_json``, ``schema_violation``, ``refusal``, ``truncated``, ``context_full``,
``content_filter`` (see :data:`FAULTS`).

In a test, use it in-process (a background thread)::

    from agents.testing.fault_server import FaultServer, fault_marker

    with FaultServer(latency_ms=20) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused")
        ...  # put fault_marker("429", "ok") in a message; inspect server.calls afterwards

Or run it standalone, e.g. for a worker in another process (``--port 0`` picks a free port and
prints ``listening on <base_url>``)::

    python -m agents.testing.fault_server --port 8099 --default ok --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import hashlib
import itertools
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final

from aiohttp import web

FAULTS: Final[Mapping[str, str]] = {
    "ok": "200 with a schema-valid answer",
    "slow": "like ok, after an extra slow_ms on top of latency_ms",
    "429": "HTTP 429 with retry-after: 1 (seconds) and an OpenAI-style error body",
    "500": "HTTP 500 with an OpenAI-style error body",
    "401": "HTTP 401 with OpenAI's invalid_api_key error body: a wrong key",
    "401_echo": (
        "HTTP 401 whose message quotes the request's Authorization header whole: a careless "
        "provider or proxy that echoes the key"
    ),
    "403": "HTTP 403 with an OpenAI-style request_forbidden error body",
    "context_exceeded": (
        "HTTP 400 with llama.cpp's exceed_context_size_error body: the prompt does not fit"
    ),
    "hang": "answers ok only after hang_s: the client's timeout should fire first",
    "reset": "drops the connection (TCP RST) without any response",
    "invalid_json": "200 whose content is cut-off JSON",
    "schema_violation": 'valid JSON that breaks the schema: {"unexpected": true}',
    "refusal": "200 with content null and message.refusal set",
    "truncated": "200, finish_reason length, a prefix of a valid answer",
    "context_full": (
        "200, finish_reason length after a quarter of max_tokens (4 without one): llama.cpp's "
        "answer when a slot's context fills up mid-answer"
    ),
    "content_filter": "200, finish_reason content_filter, content null",
}
"""Every fault name and what it does; a marker or script naming anything else is a 400."""

MODEL_ID: Final = "fault"
REFUSAL_TEXT: Final = "I can't help with that."
INVALID_JSON_TEXT: Final = '{"category": "billing", '
SCHEMA_VIOLATION_TEXT: Final = '{"unexpected": true}'
TRUNCATED_DEFAULT_TOKENS: Final = 16
"""completion_tokens of a ``truncated`` answer when the request sets no max_tokens."""
CONTEXT_FULL_DEFAULT_TOKENS: Final = 4
"""completion_tokens of a ``context_full`` answer when the request sets no max_tokens."""

_FAULT_MARKER = re.compile(r"\[\[fault:([^\]]*)\]\]")
_ANSWER_MARKER = re.compile(r"\[\[answer:([A-Za-z0-9+/=_-]*)\]\]")
_STRING_FORMATS: Final[Mapping[str, str]] = {
    "date": "2026-01-15",
    "date-time": "2026-01-15T00:00:00Z",
    "time": "00:00:00",
    "email": "x@example.com",
    "uri": "https://example.com/x",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
DEFAULT_CERTAINTY: Final = 0.99
"""The probability the logprobs give an answer's values when nothing else sets one (logprob
about -0.01)."""
MIN_CERTAINTY: Final = 0.001
MAX_CERTAINTY: Final = 0.999
"""Certainties are clamped to [MIN_CERTAINTY, MAX_CERTAINTY]: alternatives keep some mass."""
STRUCTURE_LOGPROB: Final = -0.0001
"""The logprob of JSON punctuation, whitespace and keys: a model is all but sure of them."""
MAX_TOP_LOGPROBS: Final = 20
"""OpenAI's upper bound on ``top_logprobs``."""
_CERTAINTY_MARKER = re.compile(r"\[\[certainty:([^\]]*)\]\]")
_LEXEME = re.compile(
    r'"(?:[^"\\]|\\.)*"?|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|[A-Za-z_]\w*|\s+|.', re.S
)
"""One JSON lexeme (a string, number, word or punctuation) or a run of whitespace; every character
of any text falls in one, so the lexemes of a text concatenate to it."""
_PIECE = re.compile(r" ?[A-Za-z0-9]+|\\.|.", re.S)
"""One token inside a string: a word (with its leading space), an escape or one other character."""
_PREFER_NULL_DEPTH: Final = 32
"""Past this nesting, unions pick their null branch so recursive schemas still terminate."""
_MAX_DEPTH: Final = 64


def fault_marker(*faults: str) -> str:
    """The marker that makes requests of one key fail with ``faults`` in turn (then the last)."""
    unknown = [f for f in faults if f not in FAULTS]
    if not faults or unknown:
        raise ValueError(f"unknown or missing faults {unknown}: choose from {sorted(FAULTS)}")
    return f"[[fault:{','.join(faults)}]]"


def answer_marker(answer: Any) -> str:
    """The marker that makes a successful answer exactly ``answer`` (a str as is, else as JSON)."""
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return f"[[answer:{base64.b64encode(text.encode()).decode()}]]"


def certainty_marker(certainty: float | None) -> str:
    """The marker that sets the probability the logprobs give an answer's values (clamped to
    [MIN_CERTAINTY, MAX_CERTAINTY]); None: no logprobs for the request even when it asks."""
    if certainty is None:
        return "[[certainty:none]]"
    if not 0.0 < certainty <= 1.0:
        raise ValueError(f"certainty must be in (0, 1], not {certainty}")
    return f"[[certainty:{certainty!r}]]"


@dataclass
class Call:
    """One request as the server saw it, so tests can assert what was asked and what it cost.

    Recorded on arrival (``status`` 0, no tokens) and completed when the answer is sent: a
    request whose client gave up (``hang``) or whose connection was dropped (``reset``) keeps
    ``status`` 0 and zero tokens, like a provider that never billed it.
    """

    fault: str
    key: str
    prompt_tokens: int
    completion_tokens: int
    status: int
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    """The request's ``max_tokens`` (or ``max_completion_tokens``), if it set one."""
    at: float = field(default_factory=time.time)
    """When the request arrived (wall clock), to line calls up with a worker's log."""


# -- minimal valid instances of a JSON schema ------------------------------------------------------


def example_instance(schema: Mapping[str, Any]) -> Any:
    """A small, deterministic value valid against ``schema`` (the subset structured output uses).

    Why deterministic and minimal: tests assert on it and benchmarks want stable token counts.
    Handles objects (every property, plus required names), strings (``enum``, ``format``,
    ``minLength``/``maxLength``), integers and numbers with bounds (a property named like
    ``*confidence*`` gets 0.9), booleans, arrays (``minItems``, ``prefixItems``), ``const``,
    ``enum``, ``anyOf``/``oneOf`` (first non-null branch), ``allOf``, type lists such as
    ``["string", "null"]`` and local ``$ref`` (``#/$defs/...``, ``#/definitions/...``).
    Not handled: ``pattern``, ``uniqueItems``, ``not``, conditionals. Raises ValueError on a
    non-local ``$ref`` or a schema that recurses without end.
    """
    return _instance(schema, schema, "", 0)


def _instance(node: Any, root: Mapping[str, Any], name: str, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise ValueError("schema recurses without end")
    if not isinstance(node, Mapping):
        return None  # `true`: anything goes
    if "$ref" in node:
        return _instance(_resolve(root, node["$ref"]), root, name, depth + 1)
    if "const" in node:
        return node["const"]
    if node.get("enum"):
        return node["enum"][0]
    for union in ("anyOf", "oneOf"):
        if isinstance(node.get(union), list):
            branches: list[Any] = node[union]
            solid = [b for b in branches if not _is_null(b, root)]
            if not solid or (depth > _PREFER_NULL_DEPTH and len(solid) < len(branches)):
                return None
            return _instance(solid[0], root, name, depth + 1)
    if isinstance(node.get("allOf"), list):
        return _instance(_merge(node, root), root, name, depth + 1)

    kind = node.get("type")
    if isinstance(kind, list):
        solid_kinds = [k for k in kind if k != "null"]
        if not solid_kinds:
            return None
        kind = solid_kinds[0]
    if kind is None:
        kind = "object" if "properties" in node else "array" if "items" in node else None

    if kind == "object":
        out = {
            key: _instance(sub, root, key, depth + 1)
            for key, sub in node.get("properties", {}).items()
        }
        extra = node.get("additionalProperties")
        for key in node.get("required", []):
            if key not in out:
                out[key] = _instance(extra, root, key, depth + 1) if extra else "x"
        return out
    if kind == "array":
        prefix: list[Any] = node.get("prefixItems", [])
        count = max(int(node.get("minItems", 0)), len(prefix))
        return [
            _instance(prefix[i] if i < len(prefix) else node.get("items"), root, name, depth + 1)
            for i in range(count)
        ]
    if kind == "string":
        return _string(node)
    if kind == "integer":
        return _integer(node)
    if kind == "number":
        return _number(node, name)
    if kind == "boolean":
        return False
    return None  # "null", or no type at all


def _resolve(root: Mapping[str, Any], ref: Any) -> Any:
    if not isinstance(ref, str) or not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, not {ref!r}")
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"$ref {ref!r} points nowhere")
        node = node[part]
    return node


def _is_null(node: Any, root: Mapping[str, Any]) -> bool:
    if isinstance(node, Mapping) and "$ref" in node:
        node = _resolve(root, node["$ref"])
    return isinstance(node, Mapping) and node.get("type") == "null"


def _merge(node: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """``allOf`` flattened into one schema: enough for the single-ref wrappers pydantic emits."""
    merged = {k: v for k, v in node.items() if k != "allOf"}
    for branch in node["allOf"]:
        part = _resolve(root, branch["$ref"]) if "$ref" in branch else branch
        for key, value in part.items():
            if key == "properties":
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required":
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged.setdefault(key, value)
    return merged


def _string(node: Mapping[str, Any]) -> str:
    value = _STRING_FORMATS.get(str(node.get("format")), "x")
    value += "x" * (int(node.get("minLength", 0)) - len(value))
    if "maxLength" in node:
        value = value[: int(node["maxLength"])]
    return value


def _integer(node: Mapping[str, Any]) -> int:
    value = 0
    if "minimum" in node:
        value = math.ceil(node["minimum"])
    elif "exclusiveMinimum" in node:
        value = math.floor(node["exclusiveMinimum"]) + 1
    if "maximum" in node and value > node["maximum"]:
        value = math.floor(node["maximum"])
    if "exclusiveMaximum" in node and value >= node["exclusiveMaximum"]:
        value = math.ceil(node["exclusiveMaximum"]) - 1
    step = node.get("multipleOf")
    if isinstance(step, int) and step > 0 and value % step:
        value += step - value % step
    return value


def _number(node: Mapping[str, Any], name: str) -> float:
    lo, hi = node.get("minimum"), node.get("maximum")
    xlo, xhi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")

    def fits(v: float) -> bool:
        return (
            (lo is None or v >= lo)
            and (xlo is None or v > xlo)
            and (hi is None or v <= hi)
            and (xhi is None or v < xhi)
        )

    if "confidence" in name.lower():
        value = 0.9
    elif hi is not None and hi <= 1:
        value = float(hi)
    else:
        value = 0.9
    for candidate in (value, lo, hi):
        if candidate is not None and fits(float(candidate)):
            return float(candidate)
    if xlo is not None and xhi is not None:
        return (float(xlo) + float(xhi)) / 2.0
    if xlo is not None:
        return float(xlo) + 1.0
    if xhi is not None:
        return float(xhi) - 1.0
    return value


# -- the server ------------------------------------------------------------------------------------


class FaultServer:
    """The server, run on its own event loop in a background thread.

    Why a thread: sync tests (blocking ``openai.OpenAI``) and async code on other event loops
    (``openai.AsyncOpenAI`` under pytest-asyncio, a faust worker) can all call it without sharing
    a loop with it. Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        default: str = "ok",
        latency_ms: int = 0,
        hang_s: float = 60.0,
        *,
        slow_ms: int = 1000,
        fail_rate: float = 0.0,
        fail_with: Sequence[str] = ("500",),
        seed: int | None = None,
    ) -> None:
        if default not in FAULTS:
            raise ValueError(f"unknown default fault {default!r}: choose from {sorted(FAULTS)}")
        if not 0.0 <= fail_rate <= 1.0 or any(f not in FAULTS for f in fail_with):
            raise ValueError("fail_rate must be in [0, 1] and fail_with name known faults")
        self.fail_rate = fail_rate
        """Share of requests that would answer ``ok`` but get a random ``fail_with`` fault."""
        self.fail_with = tuple(fail_with)
        self._random = random.Random(seed)
        self.default = default
        self.latency_ms = latency_ms
        """Delay before every answer, faults included: a provider's base latency."""
        self.hang_s = hang_s
        self.slow_ms = slow_ms
        """Extra delay of the ``slow`` fault, on top of ``latency_ms``."""
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._counts: dict[str, int] = {}
        self._script: collections.deque[str] = collections.deque()
        self._ids = itertools.count(1)
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- lifecycle

    def start(self) -> FaultServer:
        """Bind a free port on 127.0.0.1 and serve in a background thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("FaultServer already started")
        ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(
            target=self._run_thread, args=(ready,), name="fault-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=10.0):
            raise RuntimeError("FaultServer did not start within 10 s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError("FaultServer failed to start") from self._error
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; requests still in flight are cut off. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=10.0)
        self._thread = None

    def __enter__(self) -> FaultServer:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def serve_forever(self, port: int = 0) -> None:
        """Serve on the current loop until SIGINT/SIGTERM: the CLI, for subprocess tests."""
        loop = asyncio.get_running_loop()

        def announce() -> None:
            for sig in (signal.SIGINT, signal.SIGTERM):
                assert self._stopping is not None
                loop.add_signal_handler(sig, self._stopping.set)
            print(f"listening on {self.base_url}", flush=True)

        await self._serve(port, announce)

    def _run_thread(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(0, ready.set))
        except BaseException as exc:  # handed to start(); the thread itself has no one to tell
            self._error = exc
        finally:
            ready.set()

    async def _serve(self, port: int, on_ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: a client that gives up (hang) ends its handler at once, so stop()
        # never waits on it. A short shutdown_timeout: in-flight answers don't matter at stop.
        runner = web.AppRunner(
            app, access_log=None, handler_cancellation=True, shutdown_timeout=0.25
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", port)
            await site.start()
            self._port = int(runner.addresses[0][1])
            on_ready()
            await self._stopping.wait()
        finally:
            await runner.cleanup()

    # -- what tests look at

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FaultServer not started")
        return self._port

    @property
    def base_url(self) -> str:
        """What to give ``openai.OpenAI(base_url=...)``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def calls(self) -> list[Call]:
        """A snapshot of every request so far, oldest first (safe to read from any thread)."""
        with self._lock:
            return list(self._calls)

    def script(self, faults: Iterable[str]) -> None:
        """Queue faults for the next requests, one each, overriding markers and the default."""
        queued = list(faults)
        unknown = [f for f in queued if f not in FAULTS]
        if unknown:
            raise ValueError(f"unknown faults {unknown}: choose from {sorted(FAULTS)}")
        with self._lock:
            self._script.extend(queued)

    def clear(self) -> None:
        """Forget calls, per-key counts and the script, for reuse of one server across tests."""
        with self._lock:
            self._calls.clear()
            self._counts.clear()
            self._script.clear()

    # -- handlers

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "sluice-tests"}
        return web.json_response({"object": "list", "data": [model]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._bad_request("the body is not JSON")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return self._bad_request("the body needs a list of messages")
        if body.get("stream"):
            return self._bad_request("streaming is not supported by the fault server")
        messages: list[dict[str, Any]] = [m for m in body["messages"] if isinstance(m, dict)]
        texts = [_text(m.get("content")) for m in messages]
        first_user = next(
            (t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"), ""
        )
        key = hashlib.sha1(first_user.encode()).hexdigest()
        fault = self._choose(key, texts)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = limit if isinstance(limit, int) else None
        call = Call(fault, key, 0, 0, 0, messages, max_tokens)
        with self._lock:
            self._calls.append(call)
        if fault not in FAULTS:
            call.status = 400
            return _reject(f"unknown fault {fault!r}: choose from {sorted(FAULTS)}")
        try:
            answer = _forced_answer(texts)
            if answer is None:
                answer = _valid_answer(body.get("response_format"))
            certainty = _certainty(texts, answer)
        except ValueError as exc:
            call.status = 400
            return _reject(str(exc))

        delay = self.latency_ms / 1000.0
        if fault == "slow":
            delay += self.slow_ms / 1000.0
        elif fault == "hang":
            delay += self.hang_s
        if delay > 0:
            await asyncio.sleep(delay)

        if fault == "429":
            call.status = 429
            return _error(429, "rate_limit_error", "fault: rate limited", {"retry-after": "1"})
        if fault == "500":
            call.status = 500
            return _error(500, "server_error", "fault: internal server error")
        if fault == "401":
            call.status = 401
            return _error(
                401,
                "invalid_request_error",
                "fault: incorrect API key provided",
                code="invalid_api_key",
            )
        if fault == "401_echo":
            call.status = 401
            return _error(
                401,
                "invalid_request_error",
                f"fault: incorrect API key provided: {request.headers.get('Authorization')}",
                code="invalid_api_key",
            )
        if fault == "403":
            call.status = 403
            return _error(
                403,
                "request_forbidden",
                "fault: country, region, or territory not supported",
                code="unsupported_country_region_territory",
            )
        if fault == "context_exceeded":
            call.status = 400
            return _context_exceeded(max(1, sum(len(t) for t in texts) // 4))
        if fault == "reset":
            _reset(request)
            return web.Response()  # never written: aiohttp drops it for the closed transport

        content: str | None = answer
        refusal: str | None = None
        finish = "stop"
        completion_tokens = max(1, len(answer) // 4)
        if fault == "invalid_json":
            content = INVALID_JSON_TEXT
            completion_tokens = max(1, len(content) // 4)
        elif fault == "schema_violation":
            content = SCHEMA_VIOLATION_TEXT
            completion_tokens = max(1, len(content) // 4)
        elif fault == "refusal":
            content, refusal = None, REFUSAL_TEXT
            completion_tokens = max(1, len(REFUSAL_TEXT) // 4)
        elif fault == "truncated":
            content, finish = answer[: len(answer) // 2], "length"
            completion_tokens = max_tokens if max_tokens else TRUNCATED_DEFAULT_TOKENS
        elif fault == "context_full":
            content, finish = answer[: len(answer) // 4], "length"
            completion_tokens = (
                max(1, max_tokens // 4) if max_tokens else CONTEXT_FULL_DEFAULT_TOKENS
            )
        elif fault == "content_filter":
            content, finish, completion_tokens = None, "content_filter", 1

        logprobs: dict[str, Any] | None = None
        if body.get("logprobs") is True and content is not None and certainty is not None:
            top = body.get("top_logprobs")
            top_n = min(max(top, 0), MAX_TOP_LOGPROBS) if isinstance(top, int) else 0
            labels = _field_labels(body.get("response_format"))
            logprobs = {
                "content": token_logprobs(content, certainty, labels, top_n),
                "refusal": None,
            }
        call.prompt_tokens = max(1, sum(len(t) for t in texts) // 4)
        call.completion_tokens = completion_tokens
        call.status = 200
        return web.json_response(
            {
                "id": f"chatcmpl-fault-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": str(body.get("model") or MODEL_ID),
                "system_fingerprint": None,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "finish_reason": finish,
                        "logprobs": logprobs,
                    }
                ],
                "usage": {
                    "prompt_tokens": call.prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": call.prompt_tokens + completion_tokens,
                },
            }
        )

    def _choose(self, key: str, texts: Sequence[str]) -> str:
        """The fault for this request; counts it against its key either way."""
        with self._lock:
            n = self._counts.get(key, 0)
            self._counts[key] = n + 1
            if self._script:
                return self._script.popleft()
            chosen = self.default
            for text in texts:
                found = _FAULT_MARKER.search(text)
                if found:
                    faults = [f.strip() for f in found.group(1).split(",")]
                    chosen = faults[min(n, len(faults) - 1)]
                    break
            if chosen == "ok" and self.fail_rate and self._random.random() < self.fail_rate:
                return self._random.choice(self.fail_with)
            return chosen

    def _bad_request(self, message: str) -> web.Response:
        """A request the server cannot read: recorded as fault ``bad_request``, answered 400."""
        with self._lock:
            self._calls.append(Call("bad_request", "", 0, 0, 400, []))
        return _reject(message)


def _text(content: Any) -> str:
    """A message's text: a plain string, or the text parts of a multi-part message."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _forced_answer(texts: Sequence[str]) -> str | None:
    for text in texts:
        found = _ANSWER_MARKER.search(text)
        if found:
            encoded = found.group(1).replace("-", "+").replace("_", "/")
            try:
                return base64.b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError) as exc:
                raise ValueError(f"bad [[answer:...]] marker: {exc}") from exc
    return None


def _certainty(texts: Sequence[str], answer: str) -> float | None:
    """The probability the logprobs give ``answer``'s values; None: no logprobs (see the module
    docstring for the order of the sources)."""
    value = DEFAULT_CERTAINTY
    for text in texts:
        found = _CERTAINTY_MARKER.search(text)
        if found:
            raw = found.group(1).strip()
            if raw.lower() == "none":
                return None
            try:
                value = float(raw)
            except ValueError as exc:
                raise ValueError(f"bad [[certainty:...]] marker: {raw!r}") from exc
            if not 0.0 < value <= 1.0:
                raise ValueError(f"bad [[certainty:...]] marker: {raw!r} is not in (0, 1]")
            return min(MAX_CERTAINTY, max(MIN_CERTAINTY, value))
    try:
        parsed = json.loads(answer)
    except ValueError:
        parsed = None
    rated = parsed.get("confidence") if isinstance(parsed, dict) else None
    if isinstance(rated, int | float) and not isinstance(rated, bool) and 0.0 <= rated <= 1.0:
        value = float(rated)
    return min(MAX_CERTAINTY, max(MIN_CERTAINTY, value))


def _field_labels(response_format: Any) -> dict[str, tuple[str, ...]]:
    """The allowed string labels of every property with an ``enum`` in the request's JSON schema,
    by property name (merged where two objects share a name), arrays of labels included."""
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return {}
    schema = (response_format.get("json_schema") or {}).get("schema")
    if not isinstance(schema, dict):
        return {}
    out: dict[str, list[str]] = {}

    def walk(node: Any, depth: int) -> None:
        if depth > _MAX_DEPTH:
            return
        if isinstance(node, dict):
            props = node.get("properties")
            if isinstance(props, dict):
                for name, sub in props.items():
                    for label in _labels(sub, schema, 0):
                        if label not in out.setdefault(name, []):
                            out[name].append(label)
            for value in node.values():
                walk(value, depth + 1)
        elif isinstance(node, list):
            for value in node:
                walk(value, depth + 1)

    walk(schema, 0)
    return {name: tuple(labels) for name, labels in out.items() if labels}


def _labels(node: Any, root: Mapping[str, Any], depth: int) -> list[str]:
    """The string labels a value of ``node`` may take (its ``enum``/``const``, through ``$ref``,
    unions, ``allOf`` and array items); empty for a free value."""
    if depth > _MAX_DEPTH or not isinstance(node, Mapping):
        return []
    if "$ref" in node:
        try:
            return _labels(_resolve(root, node["$ref"]), root, depth + 1)
        except ValueError:
            return []
    found = [v for v in node.get("enum") or [] if isinstance(v, str)]
    if isinstance(node.get("const"), str):
        found.append(node["const"])
    for key in ("anyOf", "oneOf", "allOf"):
        for branch in node.get(key) or []:
            found += _labels(branch, root, depth + 1)
    if isinstance(node.get("items"), Mapping):
        found += _labels(node["items"], root, depth + 1)
    return list(dict.fromkeys(found))


def token_logprobs(
    content: str, certainty: float, labels: Mapping[str, Sequence[str]], top_n: int
) -> list[dict[str, Any]]:
    """``logprobs.content`` for ``content``: tokens that concatenate to it exactly.

    A tokeniser simple enough to read: JSON punctuation, numbers, literals and whitespace runs are
    tokens; a string is its quotes and its words (``" Supplies"``), except a string value that is
    one of its field's ``labels``, which is one token after its opening quote, so a reader finds
    the label whole at the value's first token. That token has probability ``certainty`` and its
    alternatives (up to ``top_n`` entries in all, itself first) are the field's other labels, the
    rest of the mass shared among them equally. Other value tokens have logprob
    ``log(certainty)``; keys, punctuation and whitespace :data:`STRUCTURE_LOGPROB`.
    """
    chosen = math.log(certainty)
    out: list[dict[str, Any]] = []

    def emit(text: str, logprob: float, alternatives: Sequence[tuple[str, float]] = ()) -> None:
        top = [(text, logprob), *alternatives][:top_n]
        out.append(
            {
                **_entry(text, logprob),
                "top_logprobs": [_entry(t, lp) for t, lp in top],
            }
        )

    lexemes = [m.group() for m in _LEXEME.finditer(content)]
    key: str | None = None
    stack: list[str | None] = []
    for i, lexeme in enumerate(lexemes):
        if lexeme in ("{", "["):
            stack.append(key)
            key = None if lexeme == "{" else key
            emit(lexeme, STRUCTURE_LOGPROB)
        elif lexeme in ("}", "]"):
            key = stack.pop() if stack else None
            emit(lexeme, STRUCTURE_LOGPROB)
        elif lexeme.startswith('"'):
            following = next((x for x in lexemes[i + 1 :] if not x.isspace()), "")
            closed = len(lexeme) > 1 and lexeme.endswith('"')
            inner = lexeme[1:-1] if closed else lexeme[1:]
            if following == ":":  # a key
                key = _decoded(lexeme) or inner
                for piece in ['"', *_PIECE.findall(inner), '"' if closed else ""]:
                    if piece:
                        emit(piece, STRUCTURE_LOGPROB)
                continue
            allowed = labels.get(key or "", ())
            emit('"', chosen)
            if closed and _decoded(lexeme) in allowed and inner == _decoded(lexeme):
                others = [label for label in allowed if label != inner]
                share = math.log((1.0 - certainty) / len(others)) if others else chosen
                emit(inner, chosen, [(label, share) for label in others])
            else:
                for piece in _PIECE.findall(inner):
                    emit(piece, chosen)
            if closed:
                emit('"', chosen)
        elif lexeme.isspace() or lexeme in (":", ","):
            emit(lexeme, STRUCTURE_LOGPROB)
        else:  # a number, a literal (true, false, null) or a stray character
            emit(lexeme, chosen)
    return out


def _entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": round(logprob, 6), "bytes": list(text.encode())}


def _decoded(lexeme: str) -> str | None:
    try:
        value = json.loads(lexeme)
    except ValueError:
        return None
    return value if isinstance(value, str) else None


def _valid_answer(response_format: Any) -> str:
    """What a well-behaved model would answer to this ``response_format``."""
    if not isinstance(response_format, dict):
        return "ok"
    kind = response_format.get("type")
    if kind == "json_object":
        return "{}"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise ValueError("response_format.json_schema.schema must be an object")
        return json.dumps(example_instance(schema))
    return "ok"


def _reject(message: str) -> web.Response:
    """A 400 for a request the server cannot serve: a test bug, so say exactly what."""
    return _error(400, "invalid_request_error", message)


def _error(
    status: int,
    kind: str,
    message: str,
    headers: Mapping[str, str] | None = None,
    *,
    code: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    return web.json_response(body, status=status, headers=headers)


def _context_exceeded(prompt_tokens: int) -> web.Response:
    """llama.cpp's refusal of a prompt larger than a slot's context, body shape and wording as its
    server sends them (here the context is taken to be half the prompt)."""
    n_ctx = max(1, prompt_tokens // 2)
    body = {
        "error": {
            "code": 400,
            "message": (
                f"request ({prompt_tokens} tokens) exceeds the available context size "
                f"({n_ctx} tokens), try increasing it"
            ),
            "type": "exceed_context_size_error",
            "n_prompt_tokens": prompt_tokens,
            "n_ctx": n_ctx,
        }
    }
    return web.json_response(body, status=400)


def _reset(request: web.Request) -> None:
    """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed proxy or LB would."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.testing.fault_server",
        description=__doc__.splitlines()[0] if __doc__ else "",
    )
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    parser.add_argument("--default", default="ok", choices=sorted(FAULTS))
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--slow-ms", type=int, default=1000)
    parser.add_argument("--hang-s", type=float, default=60.0)
    parser.add_argument(
        "--fail-rate", type=float, default=0.0, help="share of ok answers turned into a fault"
    )
    parser.add_argument(
        "--fail-with", default="500", help="comma-separated faults --fail-rate picks from"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    server = FaultServer(
        args.default,
        latency_ms=args.latency_ms,
        hang_s=args.hang_s,
        slow_ms=args.slow_ms,
        fail_rate=args.fail_rate,
        fail_with=[f.strip() for f in args.fail_with.split(",")],
        seed=args.seed,
    )
    asyncio.run(server.serve_forever(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
