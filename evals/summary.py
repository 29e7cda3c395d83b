"""``sluice eval``: replay rows scored against labels, as the eval summary (FORMATS.md, section 3).

A model or prompt change is safe when the numbers that matter in production hold: are answers
valid, are fields right, does the confidence tell right from wrong, how precise is the auto lane at
the router's threshold, what does it cost, and what got worse against the current model. This
module computes exactly those from replay rows and label rows, and checks the gates a pull request
or a deploy sets on them. It is pure (rows in, a JSON-ready dict out), so it runs the same in a
test, in CI and on a laptop; reading files and printing are the CLI's business.

Definitions the format leaves open, decided here:

- **Duplicates.** Replay is at least once: for an event replayed twice the *last* row counts;
  ``run.duplicates`` says how many rows were dropped. ``run.missing`` counts labels with no row.
- **Schema valid** = the row has a record. Every dead letter counts as invalid, whatever its reason
  (a provider outage too): the question is "did this candidate produce a usable answer".
- **Per-field accuracy** is over rows with a record whose label has the field. Dead letters are not
  in it (they are in ``schema_valid``); nor are rejected reviews, which say the answer was wrong
  but not which field. ``line_items`` adds ``items``: item-level precision, recall and F1 and each
  item field's accuracy over matched items (micro-averaged over rows).
- **Scorable** (calibration, lanes) = a row with a record and a confidence whose label can decide
  correctness: it has a correct field, or it is a rejection (then incorrect).
- **Lanes** use the row's raw ``confidence`` at ``threshold`` (the given one, else the most common
  ``record.route.threshold``): the part of the router a threshold controls. ``requires_human`` and
  validation issues also send results to review; ``lanes_seen`` shows where rows really went.
- **Cost.** Per event over all rows: a row without usage made no model call and costs nothing.
  ``cost_usd_per_event`` is null unless every row with usage has a price (a partial sum would
  understate the cost). Latency percentiles are nearest-rank over ``usage.latency_ms``.
- **Baseline.** Compared on events present in both runs; each side's figures use the definitions
  above on those events, so the deltas compare like with like. ``regressions``: fields whose
  accuracy fell by more than ``regression_tolerance``. A dead letter in the candidate where the
  baseline was right is a flip (candidate value null). ``auto_precision``: each side at the given
  threshold, else at its own route threshold (what each would do in production).
- **Classes** list every allowed value of an enum field (seen or not), sorted, then ``(none)`` when
  a record left the field null.
- **Calibration** gets each scorable row's ``confidence_detail`` (``{"score": confidence}`` when a
  row has none); a ``ValueError`` from it (too few rows, one class) leaves ``calibrated`` null.
- **Gates** on a metric that was not measured fail with detail ``not measured``. ``ece`` and
  ``auroc`` are the raw score's (what the router reads); ``calibrated_ece``/``calibrated_auroc``
  the calibrated ones. See :data:`evals.gates.GATE_METRICS`.
- Figures are not rounded: the report rounds for display.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from evals.gates import Gate, check_gate, parse_gate
from evals.labels import merge
from evals.metrics import (
    Lane,
    auroc,
    auto_lane,
    ece,
    reliability,
    threshold_for_precision,
    wilson,
)
from evals.scoring import (
    ITEM_FIELDS,
    MONEY_TOLERANCE,
    FieldSpec,
    LineItemMatch,
    correct_fields,
    is_correct,
    match_line_items,
    rejected,
    scorable,
    specs_for,
)

FORMAT = "sluice.eval/1"
#: What a ``calibration`` callable gets: (confidence_detail, correct) per scorable row, and folds.
#: It returns each row's cross-validated probability and ``{method, folds, calibration}``.
Calibrate = Callable[[list[tuple[dict[str, Any], bool]], int], tuple[list[float], dict[str, Any]]]
#: The most points a lane curve has: enough to draw, small enough to read in JSON.
CURVE_POINTS = 50
#: A class that was predicted as null (a record without the field).
NO_CLASS = "(none)"
_LANES = ("auto", "review", "deadletter")


# --- rows and labels ---


def latest_rows(
    rows: Iterable[Mapping[str, Any]], flow: str | None = None
) -> tuple[dict[str, Mapping[str, Any]], int]:
    """The last row per event id (in input order of first appearance), and how many rows that
    dropped. A row of another flow is an error: one eval scores one flow."""
    latest: dict[str, Mapping[str, Any]] = {}
    total = 0
    for row in rows:
        total += 1
        row_flow = row.get("flow")
        if flow is not None and row_flow is not None and row_flow != flow:
            raise ValueError(f"{row.get('event_id')}: a {row_flow!r} row in a {flow!r} eval")
        latest[str(row["event_id"])] = row
    return latest, total - len(latest)


def _record(row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    record = row.get("record")
    return record if isinstance(record, Mapping) else None


def _confidence(row: Mapping[str, Any]) -> float | None:
    value = row.get("confidence")
    if value is None and (record := _record(row)) is not None:
        value = record.get("confidence")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class _Event:
    """One event's row scored against its label."""

    event_id: str
    row: Mapping[str, Any]
    label: Mapping[str, Any] | None
    record: Mapping[str, Any] | None
    confidence: float | None
    right: dict[str, bool] = field(default_factory=dict)
    """Field → right, for the fields the label has when the row has a record."""
    items: LineItemMatch | None = None
    correct: bool | None = None
    """Event-level correctness; None when the label cannot decide it."""

    @property
    def scorable(self) -> bool:
        return self.correct is not None and self.record is not None and self.confidence is not None


def _score(
    rows: Mapping[str, Mapping[str, Any]],
    labels: Mapping[str, Mapping[str, Any]],
    specs: Sequence[FieldSpec],
    flow: str,
    money_tolerance: Decimal | None,
) -> list[_Event]:
    events = []
    for event_id, row in rows.items():
        label = labels.get(event_id)
        record = _record(row)
        e = _Event(event_id, row, label, record, _confidence(row))
        if label is not None and record is not None and not rejected(label):
            fields = label["fields"]
            for spec in specs:
                if spec.name not in fields:
                    continue
                got = spec.value(record)
                e.right[spec.name] = spec.same(fields[spec.name], got)
                if spec.kind == "line_items":
                    expected = fields[spec.name]
                    tolerance = spec.tolerance if spec.tolerance is not None else MONEY_TOLERANCE
                    e.items = match_line_items(
                        expected if isinstance(expected, list) else [],
                        got if isinstance(got, list) else [],
                        tolerance,
                    )
        if scorable(label, flow) and label is not None:
            e.correct = is_correct(row, label, money_tolerance=money_tolerance)
        events.append(e)
    return events


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _interval(part: int, whole: int) -> list[float] | None:
    return list(wilson(part, whole)) if whole else None


# --- sections ---


def _schema_valid(events: Sequence[_Event]) -> dict[str, Any]:
    valid = sum(1 for e in events if e.record is not None)
    return {"rate": _rate(valid, len(events)), "valid": valid, "n": len(events)}


def _field_counts(events: Iterable[_Event], name: str) -> tuple[int, int]:
    judged = [e.right[name] for e in events if name in e.right]
    return sum(judged), len(judged)


def _items_section(events: Sequence[_Event]) -> dict[str, Any]:
    matches = [e.items for e in events if e.items is not None]
    expected = sum(m.expected for m in matches)
    read = sum(m.got for m in matches)
    matched = sum(m.matched for m in matches)
    precision, recall = _rate(matched, read), _rate(matched, expected)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision is not None and recall is not None and precision + recall > 0
        else (0.0 if precision is not None and recall is not None else None)
    )
    per_field = {}
    for name, _ in ITEM_FIELDS:
        right = sum(m.field_right.get(name, 0) for m in matches)
        per_field[name] = {"accuracy": _rate(right, matched), "correct": right, "n": matched}
    return {
        "expected": expected,
        "read": read,
        "matched": matched,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fields": per_field,
    }


def _fields(events: Sequence[_Event], specs: Sequence[FieldSpec]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        right, n = _field_counts(events, spec.name)
        entry: dict[str, Any] = {
            "accuracy": _rate(right, n),
            "correct": right,
            "n": n,
            "interval": _interval(right, n),
        }
        if spec.kind == "line_items":
            entry["items"] = _items_section(events)
        out[spec.name] = entry
    return out


def _class_name(value: Any) -> str:
    if value is None:
        return NO_CLASS
    return value if isinstance(value, str) else str(value)


def _classes(events: Sequence[_Event], specs: Sequence[FieldSpec]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.kind != "enum":
            continue
        pairs = [
            (_class_name(e.label["fields"][spec.name]), _class_name(spec.value(e.record)))
            for e in events
            if spec.name in e.right and e.label is not None and e.record is not None
        ]
        seen = {name for pair in pairs for name in pair}
        labels = sorted((set(spec.values) | seen) - {NO_CLASS})
        if NO_CLASS in seen:
            labels.append(NO_CLASS)
        index = {name: i for i, name in enumerate(labels)}
        confusion = [[0] * len(labels) for _ in labels]
        for expected, got in pairs:
            confusion[index[expected]][index[got]] += 1
        per_class = {}
        for name, i in index.items():
            if name == NO_CLASS:
                continue
            support = sum(confusion[i])
            predicted = sum(row[i] for row in confusion)
            per_class[name] = {
                "precision": _rate(confusion[i][i], predicted),
                "recall": _rate(confusion[i][i], support),
                "support": support,
            }
        out[spec.name] = {"labels": labels, "confusion": confusion, "per_class": per_class}
    return out


def _reliability(confidences: Sequence[float], correct: Sequence[bool]) -> dict[str, Any]:
    return {
        "ece": ece(confidences, correct),
        "auroc": auroc(confidences, correct),
        "bins": [asdict(b) for b in reliability(confidences, correct)],
    }


def _scored(events: Sequence[_Event]) -> tuple[list[_Event], list[float], list[bool]]:
    """The events calibration and lanes judge, their confidences and whether each was right."""
    scored = [e for e in events if e.scorable]
    return scored, [float(e.confidence or 0.0) for e in scored], [bool(e.correct) for e in scored]


def _calibration(
    events: Sequence[_Event], calibrate: Calibrate | None, method: str, folds: int
) -> dict[str, Any]:
    scored, confidences, correct = _scored(events)
    n = len(scored)
    section: dict[str, Any] = {
        "n": n,
        "positives": sum(correct),
        "raw": _reliability(confidences, correct) if n else None,
        "calibrated": None,
    }
    if calibrate is None or n == 0:
        return section
    pairs = []
    for e in scored:
        detail = e.row.get("confidence_detail")
        pairs.append((dict(detail) if isinstance(detail, Mapping) else {"score": e.confidence},
                      bool(e.correct)))  # fmt: skip
    try:
        probabilities, info = calibrate(pairs, folds)
    except ValueError:  # too few rows or one class: nothing can be fitted, so nothing is claimed
        return section
    if len(probabilities) != n:
        raise ValueError(f"calibration gave {len(probabilities)} probabilities for {n} rows")
    section["calibrated"] = {
        **_reliability(probabilities, correct),
        "method": info.get("method", method),
        "folds": info.get("folds", folds),
        "calibration": info.get("calibration"),
    }
    return section


def _route_threshold(events: Iterable[_Event]) -> float | None:
    """The most common threshold the rows' router used."""
    seen: Counter[float] = Counter()
    for e in events:
        route = e.record.get("route") if e.record is not None else None
        value = route.get("threshold") if isinstance(route, Mapping) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            seen[float(value)] += 1
    return seen.most_common(1)[0][0] if seen else None


def _lane(lane: Lane) -> dict[str, Any]:
    return {
        "threshold": lane.threshold,
        "auto": lane.auto,
        "auto_rate": _rate(lane.auto, lane.n),
        "auto_precision": lane.precision,
        "auto_precision_interval": list(lane.interval) if lane.auto else None,
    }


def _curve(confidences: Sequence[float], correct: Sequence[bool], points: int) -> list[Any]:
    thresholds = sorted(set(confidences))
    if len(thresholds) > points > 1:
        step = (len(thresholds) - 1) / (points - 1)
        thresholds = [thresholds[round(k * step)] for k in range(points)]
    curve = []
    for t in thresholds:
        lane = auto_lane(confidences, correct, t)
        curve.append(
            {
                "threshold": t,
                "auto": lane.auto,
                "auto_rate": lane.auto_rate,
                "auto_precision": lane.precision,
                "lower": lane.interval[0],
            }
        )
    return curve


def _lanes(
    events: Sequence[_Event], threshold: float | None, target: float, points: int
) -> dict[str, Any]:
    scored, confidences, correct = _scored(events)
    n = len(scored)
    section: dict[str, Any] = {
        "threshold": threshold,
        "n": n,
        "auto": None,
        "auto_rate": None,
        "auto_correct": None,
        "auto_precision": None,
        "auto_precision_interval": None,
        "target_precision": target,
        "for_target": None,
        "curve": [],
    }
    if threshold is not None:
        lane = auto_lane(confidences, correct, threshold)
        section.update(
            auto=lane.auto,
            auto_rate=_rate(lane.auto, n),
            auto_correct=lane.right,
            auto_precision=lane.precision,
            auto_precision_interval=list(lane.interval) if lane.auto else None,
        )
    if n:
        best = threshold_for_precision(confidences, correct, target)
        section["for_target"] = _lane(best) if best is not None else None
        section["curve"] = _curve(confidences, correct, points)
    return section


def _percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile: a value that occurred, never an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float | Decimal):
        return float(value)
    if isinstance(value, str):
        try:
            return float(Decimal(value))
        except ArithmeticError:
            return None
    return None


def _cost(events: Sequence[_Event]) -> dict[str, Any]:
    n = len(events)
    usages = [u for e in events if isinstance(u := e.row.get("usage"), Mapping)]

    def per_event(key: str) -> float | None:
        if not n or not usages:
            return None
        return sum(_number(u.get(key)) or 0.0 for u in usages) / n

    tokens = per_event("prompt_tokens")
    completion = per_event("completion_tokens")
    costs = [_number(u.get("cost_usd")) for u in usages]
    priced = bool(costs) and all(c is not None for c in costs)
    latencies = [v for u in usages if (v := _number(u.get("latency_ms"))) is not None]
    p50, p95 = _percentile(latencies, 50), _percentile(latencies, 95)
    return {
        "events": n,
        "tokens_per_event": None if tokens is None else tokens + (completion or 0.0),
        "cost_usd_per_event": sum(c or 0.0 for c in costs) / n if priced and n else None,
        "latency_ms_p50": None if p50 is None else int(p50) if p50.is_integer() else p50,
        "latency_ms_p95": None if p95 is None else int(p95) if p95.is_integer() else p95,
        "attempts_per_event": per_event("attempts"),
    }


def _auto_precision(events: Sequence[_Event], threshold: float | None) -> float | None:
    if threshold is None:
        return None
    scored = [e for e in events if e.scorable]
    confidences = [e.confidence for e in scored if e.confidence is not None]
    return auto_lane(confidences, [bool(e.correct) for e in scored], threshold).precision


def _delta(baseline: float | None, candidate: float | None) -> dict[str, Any]:
    delta = candidate - baseline if baseline is not None and candidate is not None else None
    return {"baseline": baseline, "candidate": candidate, "delta": delta}


def _baseline(
    candidate: Sequence[_Event],
    base: Sequence[_Event],
    specs: Sequence[FieldSpec],
    *,
    threshold: float | None,
    tolerance: float,
    file: str | None,
) -> dict[str, Any]:
    base_by_id = {e.event_id: e for e in base}
    cand = [e for e in candidate if e.event_id in base_by_id]
    old = [base_by_id[e.event_id] for e in cand]
    fields = {}
    regressions = []
    for spec in specs:
        c_right, c_n = _field_counts(cand, spec.name)
        b_right, b_n = _field_counts(old, spec.name)
        entry = _delta(_rate(b_right, b_n), _rate(c_right, c_n))
        fields[spec.name] = entry
        if entry["delta"] is not None and entry["delta"] < -tolerance:
            regressions.append({"field": spec.name, **entry})
    flipped = []
    lane_changes = []
    for c, b in zip(cand, old, strict=True):
        label = c.label
        if label is not None and not rejected(label) and b.record is not None:
            for spec in specs:
                if b.right.get(spec.name) and not c.right.get(spec.name):
                    flipped.append(
                        {
                            "event_id": c.event_id,
                            "field": spec.name,
                            "baseline": spec.value(b.record),
                            "candidate": spec.value(c.record) if c.record is not None else None,
                            "expected": label["fields"][spec.name],
                        }
                    )
        if b.row.get("lane") != c.row.get("lane"):
            lane_changes.append(
                {
                    "event_id": c.event_id,
                    "baseline": b.row.get("lane"),
                    "candidate": c.row.get("lane"),
                    "correct": c.correct,
                }
            )
    return {
        "file": file,
        "matched": len(cand),
        "fields": fields,
        "schema_valid": _delta(_schema_valid(old)["rate"], _schema_valid(cand)["rate"]),
        "auto_precision": _delta(
            _auto_precision(old, threshold if threshold is not None else _route_threshold(old)),
            _auto_precision(cand, threshold if threshold is not None else _route_threshold(cand)),
        ),
        "regressions": regressions,
        "flipped": flipped,
        "lane_changes": lane_changes,
    }


# --- the summary ---


def evaluate(
    rows: Iterable[Mapping[str, Any]],
    labels: Iterable[Mapping[str, Any]],
    *,
    flow: str,
    threshold: float | None = None,
    target_precision: float = 0.95,
    baseline: Iterable[Mapping[str, Any]] | None = None,
    gates: Iterable[str | Gate] | None = None,
    calibration: Calibrate | None = None,
    calibration_method: str = "logistic",
    folds: int = 5,
    file: str | None = None,
    baseline_file: str | None = None,
    regression_tolerance: float = 0.0,
    money_tolerance: float | str | Decimal | None = None,
    curve_points: int = CURVE_POINTS,
) -> dict[str, Any]:
    """The eval summary of replay ``rows`` of ``flow`` against ``labels`` (FORMATS.md §3).

    ``labels`` may mix golden and reviewed rows and other flows' rows: they are merged
    (:func:`evals.labels.merge`) and filtered to ``flow``. ``calibration`` is a
    :data:`Calibrate` callable; its ``info`` names the method, else ``calibration_method``.
    ``regression_tolerance``: a field regresses when its accuracy falls by more than this.
    ``money_tolerance`` overrides the money fields' tolerance (default 0.01).
    """
    if isinstance(gates, str):
        gates = [gates]
    parsed = [g if isinstance(g, Gate) else parse_gate(g) for g in gates or ()]
    by_id, duplicates = latest_rows(rows, flow)
    label_by_id = {
        str(label["event_id"]): label for label in merge(labels) if label.get("flow") == flow
    }
    label_fields = {f for label in label_by_id.values() for f in (label.get("fields") or {})}
    tolerance = None if money_tolerance is None else Decimal(str(money_tolerance))
    specs = [s for s in specs_for(flow, label_fields, money_tolerance=tolerance)
             if s.name in label_fields]  # fmt: skip
    events = _score(by_id, label_by_id, specs, flow, tolerance)
    lane_threshold = threshold if threshold is not None else _route_threshold(events)

    def candidate_of(key: str) -> list[str]:
        values = set()
        for row in by_id.values():
            value = (row.get("candidate") or {}).get(key)
            if value is None and (record := _record(row)) is not None:
                value = (record.get("agent") or {}).get(key)
            if value is not None:
                values.add(str(value))
        return sorted(values)

    lanes_seen = Counter({lane: 0 for lane in _LANES})
    lanes_seen.update(str(row["lane"]) for row in by_id.values() if row.get("lane") is not None)
    summary: dict[str, Any] = {
        "format": FORMAT,
        "flow": flow,
        "run": {
            "file": file,
            "events": len(by_id),
            "labelled": sum(1 for e in events if e.label is not None),
            "models": candidate_of("model"),
            "prompt_versions": candidate_of("prompt_version"),
            "duplicates": duplicates,
            "missing": sum(1 for event_id in label_by_id if event_id not in by_id),
        },
        "schema_valid": _schema_valid(events),
        "lanes_seen": dict(lanes_seen),
        "correct_fields": correct_fields(flow, label_fields),
        "fields": _fields(events, specs),
        "classes": _classes(events, specs),
        "calibration": _calibration(events, calibration, calibration_method, folds),
        "lanes": _lanes(events, lane_threshold, target_precision, curve_points),
        "cost": _cost(events),
        "baseline": None,
    }
    if baseline is not None:
        base_by_id, _ = latest_rows(baseline, flow)
        base_events = _score(base_by_id, label_by_id, specs, flow, tolerance)
        summary["baseline"] = _baseline(
            events,
            base_events,
            specs,
            threshold=threshold,
            tolerance=regression_tolerance,
            file=baseline_file,
        )
    results = [check_gate(summary, g) for g in parsed]
    summary["gates"] = results
    summary["passed"] = all(r["passed"] for r in results)
    return summary
