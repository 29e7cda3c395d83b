"""Untrusted JSON within explicit limits: every breach is an InputError with its own reason."""

from __future__ import annotations

import json

import pytest

from schemas import jsonlimits
from schemas.errors import InputError, InputTooDeep, InputTooLarge, UndecodableInput
from schemas.jsonlimits import Limits, nesting_depth

SMALL = Limits(max_bytes=4096, max_depth=8, max_string_chars=100, max_int_digits=10)


@pytest.mark.parametrize(
    ("raw", "error", "reason", "message"),
    [
        (b"[" * 1000 + b"]" * 1000, InputTooDeep, "input_too_deep", "1000 levels"),
        (b'{"a": ' + b"[" * 9 + b"]" * 9 + b"}", InputTooDeep, "input_too_deep", "10 levels"),
        (b"x" * 5000, InputTooLarge, "input_too_large", "5000 bytes"),
        (b'{"n": 12345678901}', InputTooLarge, "input_too_large", "11 digits"),
        (b'{"n": -12345678901}', InputTooLarge, "input_too_large", "11 digits"),
        (json.dumps({"s": "y" * 101}).encode(), InputTooLarge, "input_too_large", "101 char"),
        (json.dumps({"y" * 101: 1}).encode(), InputTooLarge, "input_too_large", "101 char"),
        (b'{"a": 1, "a": 2}', UndecodableInput, "poison_input", "duplicate key"),
        (b'{"a": NaN}', UndecodableInput, "poison_input", "NaN is not JSON"),
        (b'{"a": Infinity}', UndecodableInput, "poison_input", "Infinity is not JSON"),
        (b'{"a": "\\u0000"}', UndecodableInput, "poison_input", "NUL"),
        (b'{"a": "\\ud800"}', UndecodableInput, "poison_input", "surrogate"),
        (b"\xff\xfe{\x00}\x00", UndecodableInput, "poison_input", "UTF-16"),
        (b"\xc3\x28", UndecodableInput, "poison_input", "not UTF-8"),
        (b"", UndecodableInput, "poison_input", "empty"),
        (b" \n\t ", UndecodableInput, "poison_input", "empty"),
        (None, UndecodableInput, "poison_input", "tombstone"),
        (b'{"a": 1', UndecodableInput, "poison_input", "not JSON"),
    ],
)
def test_every_breach_is_an_input_error_with_its_reason(
    raw: bytes | None, error: type[InputError], reason: str, message: str
) -> None:
    with pytest.raises(error, match=message) as info:
        jsonlimits.loads(raw, SMALL)
    assert info.value.reason == reason
    assert info.value.retriable is False
    assert info.value.__cause__ is None  # nothing chained that could quote the input


def test_depth_ignores_brackets_inside_strings() -> None:
    text = json.dumps({"a": "[[[[[[[[[[[[[[[[", "b": ["]]]]", {"c": "{{{{"}]})
    assert nesting_depth(text) == 3
    assert jsonlimits.loads(text.encode(), SMALL)["b"][1]["c"] == "{{{{"


def test_escaped_quotes_do_not_end_a_string() -> None:
    text = r'{"a": "x\"[[[[[[[[[[[[[[[[[\\", "b": 1}'
    assert nesting_depth(text) == 1
    assert jsonlimits.loads(text.encode(), SMALL)["b"] == 1


def test_within_limits_parses_and_accepts_a_utf8_bom() -> None:
    assert jsonlimits.loads(b'\xef\xbb\xbf{"n": 1234567890, "s": "\\u00e9"}', SMALL) == {
        "n": 1234567890,
        "s": "é",
    }


def test_messages_never_quote_the_value() -> None:
    secret = "hunter2-SECRET"
    for raw in (
        f'{{"a": "{secret}", "a": 1}}'.encode(),  # duplicate key (the key, not the value)
        f'{{"a": "{secret}\\u0000"}}'.encode(),
        f'{{"a": "{secret}"'.encode(),
        f'{{"a": "{secret * 20}"}}'.encode(),
    ):
        with pytest.raises(InputError) as info:
            jsonlimits.loads(raw, SMALL)
        assert secret not in str(info.value)


WIDE = Limits(max_bytes=4096, max_depth=8, max_string_chars=10_000, max_int_digits=10)


def exactly(size: int, char: str = "é") -> bytes:
    """A JSON object of exactly ``size`` bytes, its one string mostly of ``char``."""
    head, tail = b'{"s": "', b'"}'
    room = size - len(head) - len(tail)
    wide = char.encode()
    body = wide * (room // len(wide)) + b"x" * (room % len(wide))
    raw = head + body + tail
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("char", ["x", "é", "€", "😀"])
def test_the_size_limit_counts_bytes_and_includes_the_limit(char: str) -> None:
    at, over = exactly(4096, char), exactly(4097, char)
    assert jsonlimits.loads(at, WIDE)["s"].startswith(char)
    with pytest.raises(InputTooLarge, match="4097 bytes; the limit is 4096"):
        jsonlimits.loads(over, WIDE)
    if char != "x":
        # Fewer characters than bytes: a limit counted in characters would let it through.
        assert len(over.decode()) <= 4096


def test_the_depth_limit_includes_the_limit() -> None:
    at = b"[" * 8 + b"]" * 8
    assert nesting_depth(at.decode()) == 8
    assert jsonlimits.loads(at, WIDE) == [[[[[[[[]]]]]]]]
    nested = b'{"a": ' + b"[" * 7 + b"]" * 7 + b"}"  # 8 levels with the object
    assert jsonlimits.loads(nested, WIDE) == {"a": [[[[[[[]]]]]]]}
    with pytest.raises(InputTooDeep, match="9 levels deep; the limit is 8"):
        jsonlimits.loads(b"[" * 9 + b"]" * 9, WIDE)
    with pytest.raises(InputTooDeep, match="9 levels deep; the limit is 8"):
        jsonlimits.loads(b'{"a": ' + b"[" * 8 + b"]" * 8 + b"}", WIDE)
