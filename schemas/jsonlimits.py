"""Parsing untrusted JSON with explicit limits: size, nesting depth, string length, integer digits.

Python's ``json`` has no limits of its own. A value nested ~1,000 levels deep raises
``RecursionError``, a 100,000-digit integer costs quadratic time (or ``ValueError`` past
``sys.int_max_str_digits``), and ``NaN``, duplicate keys, lone surrogates and NUL characters are
accepted although other consumers of the same event would choke on them or read it differently.
Every limit breach here is an :class:`~schemas.errors.InputError` with its own reason, raised
before or during parsing, never a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from schemas.errors import InputTooDeep, InputTooLarge, UndecodableInput

#: A JSON string literal (unrolled loop: linear time, no backtracking blow-up).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


@dataclass(frozen=True)
class Limits:
    """What one input event may be. Defaults fit tickets and inline documents."""

    max_bytes: int = 1_048_576
    """Whole value, in bytes (driven by SLUICE_MAX_MESSAGE_BYTES)."""
    max_depth: int = 32
    """Nesting of arrays and objects; our events need 2."""
    max_string_chars: int = 16_000_000
    """Any one string; the event models bound their own fields more tightly."""
    max_int_digits: int = 24
    """An integer literal's digits; larger numbers are not ids or amounts of ours."""


DEFAULT_LIMITS = Limits()


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` outside string literals, computed without recursion."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(_STEP[c] for c in brackets), default=0)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            # Parsers disagree on which duplicate wins; an ambiguous event is refused.
            raise UndecodableInput(f"duplicate key {key[:40]!r} in a JSON object")
        obj[key] = value
    return obj


def _constant(name: str) -> Any:
    raise UndecodableInput(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _check_strings(value: Any, limits: Limits) -> None:
    """Walk the parsed value (depth already bounded) for oversized or unsafe strings."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            if len(s) > limits.max_string_chars:
                raise InputTooLarge(
                    f"a string of {len(s)} characters; the limit is {limits.max_string_chars}"
                )
            bad = _BAD_CHARS.search(s)
            if bad:
                what = "a NUL character" if bad.group() == "\x00" else "a lone UTF-16 surrogate"
                raise UndecodableInput(f"a string holds {what} (escaped), which is not text")


def loads(raw: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse one event's bytes as JSON within ``limits``.

    Raises :class:`UndecodableInput` (not UTF-8, not JSON, duplicate keys, NaN, NUL or surrogate
    escapes), :class:`InputTooLarge` or :class:`InputTooDeep`. Error messages never quote the
    input's text: dead letters and logs must not copy what may be personal data.
    """
    if raw is None:
        raise UndecodableInput("empty message value (tombstone)")
    if len(raw) > limits.max_bytes:
        raise InputTooLarge(f"value has {len(raw)} bytes; the limit is {limits.max_bytes}")
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise UndecodableInput("value is UTF-16 (byte order mark); JSON events must be UTF-8")
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte order mark is harmless: accept it
    except UnicodeDecodeError as exc:
        raise UndecodableInput(f"value is not UTF-8: {exc.reason} at byte {exc.start}") from None
    if not text.strip():
        raise UndecodableInput("value is empty or only whitespace")
    depth = nesting_depth(text)
    if depth > limits.max_depth:
        raise InputTooDeep(f"JSON nests {depth} levels deep; the limit is {limits.max_depth}")

    def parse_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_int_digits:
            raise InputTooLarge(
                f"an integer of {len(digits.lstrip('-'))} digits; "
                f"the limit is {limits.max_int_digits}"
            )
        return int(digits)

    try:
        value = json.loads(
            text, object_pairs_hook=_pairs, parse_int=parse_int, parse_constant=_constant
        )
    except json.JSONDecodeError as exc:
        # exc.msg and the position only: str(exc) is fine too, but never exc.doc.
        raise UndecodableInput(
            f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:  # unreachable after the depth check; kept as a second fence
        raise InputTooDeep("JSON nests too deep to parse") from None
    _check_strings(value, limits)
    return value
