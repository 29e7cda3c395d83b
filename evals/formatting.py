"""Reading and formatting the values of an eval summary, for the report's text and its plots.

Shared by :mod:`evals.report` (the HTML and the Markdown) and :mod:`evals.plots` (the PNGs), so a
number reads the same in a table and on a plot, and neither of those modules imports the other.
The readers tolerate nulls, missing keys and odd types. The formatters give ``n/a`` for null,
rates as percentages with one decimal (``93.3%``), differences of rates in percentage points
(``-2.0 pp``), and ECE, AUROC and thresholds with three decimals. Strings from the data are cut at
:data:`MAX_TEXT` characters; :func:`_slug` and :func:`_unique` make file names of them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Longest data string shown in a table cell before it is cut.
MAX_TEXT = 200

NA = "n/a"
NOT_MEASURED = "not measured"


# -- reading the summary: tolerant of nulls, missing keys and odd types --------------------------


def _opt_map(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    return []


def _num(value: Any) -> float | None:
    """A finite number, or None (bools, strings and NaN are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None and number == int(number) else None


# -- formatting -----------------------------------------------------------------------------------


def pct(value: Any) -> str:
    """A rate in [0, 1] as a percentage with one decimal: ``0.9333`` -> ``93.3%``."""
    number = _num(value)
    return NA if number is None else f"{number * 100:.1f}%"


def score(value: Any) -> str:
    """ECE, AUROC or a threshold with three decimals."""
    number = _num(value)
    return NA if number is None else f"{number:.3f}"


def _points(value: Any) -> str:
    """A difference of two rates in percentage points, signed: ``-0.02`` -> ``-2.0 pp``."""
    number = _num(value)
    if number is None:
        return NA
    shown = round(number * 100, 1)
    return f"{0.0 if shown == 0 else shown:+.1f} pp"  # no "-0.0"


def _count(value: Any) -> str:
    number = _int(value)
    if number is not None:
        return str(number)
    other = _num(value)
    return NA if other is None else f"{other:g}"


def _interval(value: Any) -> str:
    """A 95 % interval of a rate: ``68.0%–88.0%``."""
    bounds = _list(value)
    if len(bounds) != 2 or _num(bounds[0]) is None or _num(bounds[1]) is None:
        return NA
    return f"{pct(bounds[0])}–{pct(bounds[1])}"


def _of(part: Any, whole: Any) -> str:
    """``(3 of 55)``, or nothing when either count is unknown."""
    if _int(part) is None or _int(whole) is None:
        return ""
    return f" ({_count(part)} of {_count(whole)})"


def _cut(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _label(value: Any) -> str:
    """A name from the data (flow, event id, label): strings as they are, null as n/a."""
    if value is None:
        return NA
    if isinstance(value, str):
        return _cut(value)
    return _value(value)


def _value(value: Any) -> str:
    """A field's value: strings as they are, anything else as JSON (so null reads ``null``)."""
    if isinstance(value, str):
        return _cut(value)
    try:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except ValueError:  # a circular structure
        text = repr(value)
    return _cut(text)


def _yes_no(value: Any) -> str:
    return "yes" if value is True else "no" if value is False else NA


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _slug(text: str, fallback: str) -> str:
    """A file-name-safe form of ``text``: no separators, no leading dot, bounded length."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:60]
    return slug or fallback


def _unique(slug: str, taken: set[str]) -> str:
    candidate, n = slug, 1
    while candidate.lower() in taken:  # case-insensitive file systems
        n += 1
        candidate = f"{slug}-{n}"
    taken.add(candidate.lower())
    return candidate
