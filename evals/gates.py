"""Gates on an eval summary: the conditions a pull request or a deploy sets on ``sluice eval``.

A gate is ``metric op bound`` (``auto_precision>=0.95``), ``field:NAME op bound`` or
``no_regression:NAME``; :func:`parse_gate` reads one from its text and :func:`check_gate` checks it
against a summary made by :func:`evals.summary.evaluate`, giving ``{name, passed, detail}``.
:data:`GATE_METRICS` lists what a gate may name. A gate on a metric that was not measured fails
with detail ``not measured``; ``ece`` and ``auroc`` are the raw score's (what the router reads),
``calibrated_ece``/``calibrated_auroc`` the calibrated ones.

Kept apart from the summary so that reading and checking gates needs nothing but the summary's
JSON shape (FORMATS.md, section 3): this module imports nothing from :mod:`evals`.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_GATE = re.compile(
    r"^\s*(?P<metric>[a-z_0-9]+)\s*(?::\s*(?P<field>[\w.\-]+)\s*)?"
    r"(?:(?P<op>>=|<=|==|!=|>|<)\s*(?P<bound>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*)?$"
)
#: Metrics a gate may name, and where each is in the summary: (value, "k of n" or None).
_METRICS: dict[str, Callable[[Mapping[str, Any]], tuple[Any, str | None]]] = {
    "schema_valid": lambda s: (
        s["schema_valid"]["rate"],
        f"{s['schema_valid']['valid']} of {s['schema_valid']['n']}",
    ),
    "auto_precision": lambda s: (
        s["lanes"]["auto_precision"],
        f"{s['lanes']['auto_correct']} of {s['lanes']['auto']}",
    ),
    "auto_precision_lower": lambda s: (
        (s["lanes"]["auto_precision_interval"] or [None])[0],
        f"{s['lanes']['auto_correct']} of {s['lanes']['auto']}",
    ),
    "auto_rate": lambda s: (s["lanes"]["auto_rate"], f"{s['lanes']['auto']} of {s['lanes']['n']}"),
    "ece": lambda s: ((s["calibration"]["raw"] or {}).get("ece"), None),
    "auroc": lambda s: ((s["calibration"]["raw"] or {}).get("auroc"), None),
    "calibrated_ece": lambda s: ((s["calibration"]["calibrated"] or {}).get("ece"), None),
    "calibrated_auroc": lambda s: ((s["calibration"]["calibrated"] or {}).get("auroc"), None),
    "regressions": lambda s: (
        None if s["baseline"] is None else len(s["baseline"]["regressions"]),
        None
        if s["baseline"] is None
        else ", ".join(r["field"] for r in s["baseline"]["regressions"]) or None,
    ),
    "flipped": lambda s: (None if s["baseline"] is None else len(s["baseline"]["flipped"]), None),
    "tokens_per_event": lambda s: (s["cost"]["tokens_per_event"], None),
    "cost_usd_per_event": lambda s: (s["cost"]["cost_usd_per_event"], None),
    "latency_ms_p50": lambda s: (s["cost"]["latency_ms_p50"], None),
    "latency_ms_p95": lambda s: (s["cost"]["latency_ms_p95"], None),
    "attempts_per_event": lambda s: (s["cost"]["attempts_per_event"], None),
}
GATE_METRICS = (*_METRICS, "field:<name>", "no_regression:<name>")


@dataclass(frozen=True)
class Gate:
    """One condition on the summary: ``metric op bound``, ``field:NAME op bound`` or
    ``no_regression:NAME`` (the field is not among the baseline regressions)."""

    metric: str
    op: str | None = None
    bound: float | None = None
    field: str | None = None
    bound_text: str = ""

    @property
    def name(self) -> str:
        subject = f"{self.metric}:{self.field}" if self.field else self.metric
        return subject if self.op is None else f"{subject} {self.op} {self.bound_text}"


def parse_gate(text: str) -> Gate:
    """A gate from its text (spaces optional); a gate that names nothing known is an error, so a
    typo cannot make a gate that never fails."""
    m = _GATE.match(text)
    if m is None:
        raise ValueError(f"gate {text!r}: expected METRIC OP NUMBER, e.g. auto_precision>=0.95")
    metric, name, op, bound = m["metric"], m["field"], m["op"], m["bound"]
    if metric == "no_regression":
        if name is None or op is not None:
            raise ValueError(f"gate {text!r}: write no_regression:FIELD")
        return Gate(metric, field=name)
    if op is None:
        raise ValueError(f"gate {text!r}: missing a comparison such as >= 0.9")
    if metric == "field":
        if name is None:
            raise ValueError(f"gate {text!r}: write field:NAME{op}{bound}")
    elif name is not None or metric not in _METRICS:
        known = ", ".join(GATE_METRICS)
        raise ValueError(f"gate {text!r}: unknown metric {metric!r} (known: {known})")
    return Gate(metric, op, float(bound), name, bound)


#: Gate metrics that count things: shown as whole numbers.
_COUNTS = frozenset({"regressions", "flipped"})


def _fmt(value: float, op: str, bound: float) -> str:
    """Two decimals, or four when two would seem to contradict the verdict (0.949 as 0.95)."""
    text = f"{value:.2f}"
    if _OPS[op](float(text), bound) != _OPS[op](value, bound):
        text = f"{value:.4f}"
    return text


def check_gate(summary: Mapping[str, Any], gate: Gate) -> dict[str, Any]:
    """``{name, passed, detail}`` of one gate on a summary."""
    if gate.metric == "no_regression":
        baseline = summary.get("baseline")
        entry = (baseline or {}).get("fields", {}).get(gate.field)
        if baseline is None or entry is None or entry["delta"] is None:
            return {"name": gate.name, "passed": False, "detail": "not measured"}
        regressed = any(r["field"] == gate.field for r in baseline["regressions"])
        detail = f"{entry['baseline']:.2f} -> {entry['candidate']:.2f} ({entry['delta']:+.2f})"
        return {"name": gate.name, "passed": not regressed, "detail": detail}
    if gate.metric == "field":
        entry = summary["fields"].get(gate.field) or {}
        value: Any = entry.get("accuracy")
        counts: str | None = f"{entry.get('correct')} of {entry.get('n')}"
    else:
        value, counts = _METRICS[gate.metric](summary)
    if value is None or gate.op is None or gate.bound is None:
        return {"name": gate.name, "passed": False, "detail": "not measured"}
    passed = _OPS[gate.op](float(value), gate.bound)
    detail = str(value) if gate.metric in _COUNTS else _fmt(float(value), gate.op, gate.bound)
    if counts:
        detail += f" ({counts})"
    return {"name": gate.name, "passed": passed, "detail": detail}
