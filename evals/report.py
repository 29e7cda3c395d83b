"""The eval report: one directory a person can open, attach to a pull request, or diff.

:func:`write_report` turns one or more eval summaries (``sluice.eval/1``, one per flow; the shape
is documented in ``evals/FORMATS.md`` section 3) into:

- ``index.html`` — self-contained (inline CSS, no scripts), images referenced relatively;
- ``report.md`` — GitHub-flavoured Markdown with the same content and image links;
- ``summary.json`` — the summaries as given, indented;
- PNG plots per flow (:mod:`evals.plots`), each written only when there is data to draw:
  ``<flow>-reliability.png``, ``<flow>-precision-vs-auto-rate.png`` and
  ``<flow>-confusion-<field>.png`` per classified field (``<flow>`` and ``<field>`` reduced to
  file-name-safe characters).

Every string that comes from the data (flow names, event ids, field values, labels, file names)
is escaped for the format it lands in, and any section may be null or missing: it then reads
"not measured" or "n/a". The HTML and the Markdown are rendered from one list of blocks, so they
cannot drift apart.

Numbers are formatted one way everywhere: rates as percentages with one decimal (``93.3%``),
differences of rates in percentage points (``-2.0 pp``), ECE, AUROC and thresholds with three
decimals, ``n/a`` for null.
"""

from __future__ import annotations

import html
import json
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from evals.formatting import (
    NA,
    NOT_MEASURED,
    _count,
    _int,
    _interval,
    _label,
    _list,
    _map,
    _num,
    _of,
    _opt_map,
    _plural,
    _points,
    _slug,
    _unique,
    _value,
    _yes_no,
    pct,
    score,
)
from evals.plots import _draw, _Plots

__all__ = ["MAX_ROWS", "write_report"]

#: Longest list (flipped answers, lane changes) shown in full; the rest are counted.
MAX_ROWS = 50


# -- the document: blocks rendered both to HTML and to Markdown ---------------------------------


@dataclass(frozen=True)
class _Heading:
    level: int
    text: str
    anchor: str | None = None


@dataclass(frozen=True)
class _Text:
    text: str


@dataclass(frozen=True)
class _Banner:
    passed: bool
    text: str


@dataclass(frozen=True)
class _Image:
    file: str
    alt: str


@dataclass
class _Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    #: Per row: "good", "bad" or None; only styles the HTML (the text says the same thing).
    marks: list[str | None] = field(default_factory=list)
    #: Rows left out (beyond MAX_ROWS).
    more: int = 0

    def add(self, *cells: str, mark: str | None = None) -> None:
        self.rows.append(list(cells))
        self.marks.append(mark)


_Block: TypeAlias = _Heading | _Text | _Banner | _Image | _Table


def _capped(table: _Table, rows: list[tuple[list[str], str | None]]) -> _Table:
    for cells, mark in rows[:MAX_ROWS]:
        table.add(*cells, mark=mark)
    table.more = max(0, len(rows) - MAX_ROWS)
    return table


# -- what a flow's section says -------------------------------------------------------------------


def _gates(summary: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [gate for gate in _list(summary.get("gates")) if isinstance(gate, Mapping)]


def _flow_passed(summary: Mapping[str, Any]) -> bool:
    """The flow's verdict: its ``passed``, and no gate that says otherwise (when ``passed`` is
    missing, the gates alone decide)."""
    gates_ok = all(gate.get("passed") is True for gate in _gates(summary))
    passed = summary.get("passed")
    return gates_ok and passed is not False


def _gate_detail(summary: Mapping[str, Any]) -> str:
    gates = _gates(summary)
    if not gates:
        return "no gates"
    failed = sum(1 for gate in gates if gate.get("passed") is not True)
    if failed:
        return f"{failed} of {len(gates)} gates failed"
    return f"{_plural(len(gates), 'gate')} passed"


def _gate_verdict(summary: Mapping[str, Any]) -> str:
    return f"{'PASS' if _flow_passed(summary) else 'FAIL'} ({_gate_detail(summary)})"


def _ece_line(calibration: Mapping[str, Any] | None) -> str:
    if calibration is None:
        return NOT_MEASURED
    raw = _map(calibration.get("raw"))
    calibrated = _opt_map(calibration.get("calibrated"))
    if calibrated is None:
        return f"{score(raw.get('ece'))} (not calibrated)"
    how = [str(calibrated["method"])] if isinstance(calibrated.get("method"), str) else []
    if _int(calibrated.get("folds")) is not None:
        how.append(f"{_count(calibrated['folds'])}-fold cross-validated")
    suffix = f" ({', '.join(how)})" if how else ""
    return f"{score(raw.get('ece'))} → {score(calibrated.get('ece'))}{suffix}"


def _precision_line(lane: Mapping[str, Any]) -> str:
    precision = pct(lane.get("auto_precision"))
    if precision == NA:
        return f"{NA} (nothing reaches the threshold)" if _int(lane.get("auto")) == 0 else NA
    ci = _interval(lane.get("auto_precision_interval"))
    right, auto = _int(lane.get("auto_correct")), _int(lane.get("auto"))
    tally = f"; {right} of {auto} right" if right is not None and auto is not None else ""
    return f"{precision} (95% CI {ci}{tally})"


def _target_line(lanes: Mapping[str, Any] | None) -> tuple[str, str]:
    """(row name, value) of the threshold that reaches the target precision."""
    if lanes is None:
        return "Threshold for target precision", NOT_MEASURED
    target = _num(lanes.get("target_precision"))
    if target is None:
        return "Threshold for target precision", f"{NA} (no target set)"
    name = f"Threshold for {pct(target)} precision"
    found = _opt_map(lanes.get("for_target"))
    if found is None:
        return name, "none reaches it"
    return name, (
        f"{score(found.get('threshold'))} (auto rate {pct(found.get('auto_rate'))}, "
        f"precision {pct(found.get('auto_precision'))}, "
        f"95% CI {_interval(found.get('auto_precision_interval'))})"
    )


def _headline(summary: Mapping[str, Any]) -> _Table:
    run = _map(summary.get("run"))
    valid = _map(summary.get("schema_valid"))
    lanes = _opt_map(summary.get("lanes"))
    calibration = _opt_map(summary.get("calibration"))
    table = _Table(["Metric", "Value"])
    table.add("Events", _count(run.get("events")))
    table.add("Labelled", _count(run.get("labelled")))
    rate = pct(valid.get("rate"))
    table.add(
        "Schema-valid", rate + (_of(valid.get("valid"), valid.get("n")) if rate != NA else "")
    )
    if lanes is None:
        table.add("Auto rate", NOT_MEASURED)
        table.add("Auto precision", NOT_MEASURED)
    else:
        at = f" at threshold {score(lanes.get('threshold'))}"
        auto_rate = pct(lanes.get("auto_rate"))
        table.add(
            "Auto rate" + at,
            auto_rate + (_of(lanes.get("auto"), lanes.get("n")) if auto_rate != NA else ""),
        )
        table.add("Auto precision" + at, _precision_line(lanes))
    table.add(*_target_line(lanes))
    raw = _map(_map(calibration).get("raw"))
    table.add("AUROC", score(raw.get("auroc")) if calibration is not None else NOT_MEASURED)
    table.add("ECE (raw → calibrated)", _ece_line(calibration))
    table.add("Gates", _gate_verdict(summary), mark="good" if _flow_passed(summary) else "bad")
    return table


def _fields_blocks(summary: Mapping[str, Any]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Accuracy per field")]
    fields = _map(summary.get("fields"))
    deciding = {name for name in _list(summary.get("correct_fields")) if isinstance(name, str)}
    if not fields:
        return [*blocks, _Text(NOT_MEASURED)]
    table = _Table(["Field", "Accuracy", "95% CI", "Correct", "Scored", "Decides correctness"])
    for name, stats in fields.items():
        stats = _map(stats)
        table.add(
            _label(name),
            pct(stats.get("accuracy")),
            _interval(stats.get("interval")),
            _count(stats.get("correct")),
            _count(stats.get("n")),
            "yes" if name in deciding else "no",
        )
    return [*blocks, table]


def _classes_blocks(summary: Mapping[str, Any], images: Mapping[str, str]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Classes")]
    classes = _map(summary.get("classes"))
    if not classes:
        return [*blocks, _Text(NOT_MEASURED)]
    for name, spec in classes.items():
        spec = _map(spec)
        blocks.append(_Heading(4, f"Field: {_label(name)}"))
        per_class = _map(spec.get("per_class"))
        order = [label for label in _list(spec.get("labels")) if label in per_class]
        order += [label for label in per_class if label not in order]
        if order:
            table = _Table(["Label", "Precision", "Recall", "Support"])
            for label in order:
                stats = _map(per_class[label])
                table.add(
                    _label(label),
                    pct(stats.get("precision")),
                    pct(stats.get("recall")),
                    _count(stats.get("support")),
                )
            blocks.append(table)
        else:
            blocks.append(_Text(f"Per-class precision and recall: {NOT_MEASURED}"))
        if name in images:
            blocks.append(_Image(images[name], f"Confusion matrix of {_label(name)}"))
    return blocks


def _calibration_blocks(summary: Mapping[str, Any], image: str | None) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Calibration")]
    calibration = _opt_map(summary.get("calibration"))
    if calibration is None:
        return [*blocks, _Text(NOT_MEASURED)]
    blocks.append(
        _Text(
            f"{_count(calibration.get('n'))} scored events, "
            f"{_count(calibration.get('positives'))} of them correct."
        )
    )
    table = _Table(["Score", "ECE", "AUROC", "Method", "Folds", "Calibration file"])
    raw = _map(calibration.get("raw"))
    table.add("raw", score(raw.get("ece")), score(raw.get("auroc")), NA, NA, NA)
    calibrated = _opt_map(calibration.get("calibrated"))
    if calibrated is None:
        table.add("calibrated", "not calibrated", NA, NA, NA, NA)
    else:
        table.add(
            "calibrated",
            score(calibrated.get("ece")),
            score(calibrated.get("auroc")),
            _label(calibrated.get("method")),
            _count(calibrated.get("folds")),
            _label(calibrated.get("calibration")),
        )
    blocks.append(table)
    if image:
        blocks.append(_Image(image, "Reliability diagram"))
    return blocks


def _lanes_blocks(summary: Mapping[str, Any], image: str | None) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Lanes")]
    seen = _map(summary.get("lanes_seen"))
    counts = {name: _int(n) for name, n in seen.items()}
    total = sum(n for n in counts.values() if n is not None)
    if counts:
        table = _Table(["Lane", "Events", "Share"])
        for name, n in counts.items():
            share = pct(n / total) if n is not None and total else NA
            table.add(_label(name), _count(n), share)
        blocks.append(table)
    else:
        blocks.append(_Text(f"Lanes seen in the run: {NOT_MEASURED}"))
    lanes = _opt_map(summary.get("lanes"))
    if lanes is None:
        return [*blocks, _Text(f"Auto lane on labelled events: {NOT_MEASURED}")]
    table = _Table(["Auto lane", "Threshold", "Auto", "Right", "Auto rate", "Precision", "95% CI"])
    table.add(
        f"current (of {_count(lanes.get('n'))} scored)",
        score(lanes.get("threshold")),
        _count(lanes.get("auto")),
        _count(lanes.get("auto_correct")),
        pct(lanes.get("auto_rate")),
        pct(lanes.get("auto_precision")),
        _interval(lanes.get("auto_precision_interval")),
    )
    target = _num(lanes.get("target_precision"))
    found = _opt_map(lanes.get("for_target"))
    if target is not None and found is None:
        table.add(f"for {pct(target)} precision", "none reaches it", NA, NA, NA, NA, NA)
    elif target is not None and found is not None:
        auto, precision = _num(found.get("auto")), _num(found.get("auto_precision"))
        right = _count(found.get("auto_correct"))  # not in sluice.eval/1: derived if missing
        if right == NA and auto is not None and precision is not None:
            right = _count(round(auto * precision))
        table.add(
            f"for {pct(target)} precision",
            score(found.get("threshold")),
            _count(found.get("auto")),
            right,
            pct(found.get("auto_rate")),
            pct(found.get("auto_precision")),
            _interval(found.get("auto_precision_interval")),
        )
    blocks.append(table)
    if image:
        blocks.append(_Image(image, "Auto-lane precision against auto rate"))
    return blocks


def _cost_blocks(summary: Mapping[str, Any]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Cost and latency per event")]
    cost = _opt_map(summary.get("cost"))
    if cost is None:
        return [*blocks, _Text(NOT_MEASURED)]

    def unit(value: Any, spec: str, suffix: str = "", prefix: str = "") -> str:
        number = _num(value)
        return NA if number is None else f"{prefix}{number:{spec}}{suffix}"

    table = _Table(["Metric", "Value"])
    table.add("Events", _count(cost.get("events")))
    table.add("Tokens per event", unit(cost.get("tokens_per_event"), ",.1f"))
    table.add("Cost per event", unit(cost.get("cost_usd_per_event"), ".6f", prefix="$"))
    table.add("Latency p50", unit(cost.get("latency_ms_p50"), ",.0f", " ms"))
    table.add("Latency p95", unit(cost.get("latency_ms_p95"), ",.0f", " ms"))
    table.add("Attempts per event", unit(cost.get("attempts_per_event"), ".2f"))
    return [*blocks, table]


def _baseline_blocks(summary: Mapping[str, Any]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Against the baseline")]
    baseline = _opt_map(summary.get("baseline"))
    if baseline is None:
        return [*blocks, _Text(f"{NOT_MEASURED} (no baseline)")]
    regressions = [r for r in _list(baseline.get("regressions")) if isinstance(r, Mapping)]
    regressed = {r.get("field") for r in regressions}
    blocks.append(
        _Text(
            f"Baseline {_label(baseline.get('file'))}: {_count(baseline.get('matched'))} events "
            f"matched, {_plural(len(regressions), 'regression')}."
        )
    )

    deltas = _Table(["Metric", "Baseline", "Candidate", "Change", "Regression"])
    shown: set[Any] = set()

    def delta_row(name: str, key: Any, stats: Mapping[str, Any]) -> None:
        shown.add(key)
        bad = key in regressed
        deltas.add(
            name,
            pct(stats.get("baseline")),
            pct(stats.get("candidate")),
            _points(stats.get("delta")),
            "REGRESSION" if bad else "",
            mark="bad" if bad else None,
        )

    for name, stats in _map(baseline.get("fields")).items():
        delta_row(_label(name), name, _map(stats))
    for key, name in (("schema_valid", "schema-valid rate"), ("auto_precision", "auto precision")):
        if _opt_map(baseline.get(key)) is not None:
            delta_row(name, key, _map(baseline.get(key)))
    for regression in regressions:  # a regression on something not listed above
        if regression.get("field") not in shown:
            delta_row(_label(regression.get("field")), regression.get("field"), regression)
    blocks.append(deltas if deltas.rows else _Text(f"Field accuracy changes: {NOT_MEASURED}"))

    flipped = [f for f in _list(baseline.get("flipped")) if isinstance(f, Mapping)]
    blocks.append(_Heading(4, f"Flipped answers ({len(flipped)})"))
    if flipped:
        rows = []
        for flip in flipped:
            known = "expected" in flip
            fixed = known and flip.get("candidate") == flip.get("expected")
            broke = known and flip.get("baseline") == flip.get("expected")
            now = "fixed" if fixed else "broken" if broke else "still wrong" if known else NA
            cells = [
                _label(flip.get("event_id")),
                _label(flip.get("field")),
                _value(flip.get("baseline")),
                _value(flip.get("candidate")),
                _value(flip.get("expected")) if known else NA,
                now,
            ]
            rows.append((cells, "good" if fixed else "bad" if broke else None))
        table = _Table(["Event", "Field", "Baseline", "Candidate", "Expected", "Now"])
        blocks.append(_capped(table, rows))
    else:
        blocks.append(_Text("none"))

    changes = [c for c in _list(baseline.get("lane_changes")) if isinstance(c, Mapping)]
    blocks.append(_Heading(4, f"Lane changes ({len(changes)})"))
    if changes:
        rows = []
        for change in changes:
            right = change.get("correct")
            mark: str | None = None
            if change.get("candidate") == "auto":  # newly automatic: right or wrong matters
                mark = "good" if right is True else "bad" if right is False else None
            cells = [
                _label(change.get("event_id")),
                _label(change.get("baseline")),
                _label(change.get("candidate")),
                _yes_no(right),
            ]
            rows.append((cells, mark))
        table = _Table(["Event", "Baseline lane", "Candidate lane", "Correct"])
        blocks.append(_capped(table, rows))
    else:
        blocks.append(_Text("none"))
    return blocks


def _gates_blocks(summary: Mapping[str, Any]) -> list[_Block]:
    blocks: list[_Block] = [_Heading(3, "Gates")]
    passed = _flow_passed(summary)
    blocks.append(_Banner(passed, _gate_detail(summary)))
    gates = _gates(summary)
    if gates:
        table = _Table(["Gate", "Result", "Detail"])
        for gate in gates:
            ok = gate.get("passed") is True
            table.add(
                _label(gate.get("name")),
                "PASS" if ok else "FAIL",
                _label(gate.get("detail")) if gate.get("detail") is not None else "",
                mark="good" if ok else "bad",
            )
        blocks.append(table)
    return blocks


def _run_line(summary: Mapping[str, Any]) -> str:
    run = _map(summary.get("run"))

    def names(value: Any) -> str:
        items = [_label(item) for item in _list(value)]
        return ", ".join(items) if items else NA

    return (
        f"Run {_label(run.get('file'))} · models: {names(run.get('models'))} · "
        f"prompt versions: {names(run.get('prompt_versions'))} · "
        f"format {_label(summary.get('format'))}"
    )


def _flow_blocks(summary: Mapping[str, Any], anchor: str, plots: _Plots) -> list[_Block]:
    return [
        _Heading(2, f"Flow: {_label(summary.get('flow'))}", anchor),
        _Text(_run_line(summary)),
        _headline(summary),
        *_fields_blocks(summary),
        *_classes_blocks(summary, plots.confusion),
        *_calibration_blocks(summary, plots.reliability),
        *_lanes_blocks(summary, plots.curve),
        *_cost_blocks(summary),
        *_baseline_blocks(summary),
        *_gates_blocks(summary),
    ]


def _overview(summaries: Sequence[Mapping[str, Any]]) -> list[_Block]:
    passed = sum(1 for summary in summaries if _flow_passed(summary))
    everything = passed == len(summaries)
    banner = _Banner(everything, f"{passed} of {_plural(len(summaries), 'flow')} passed")
    table = _Table(
        ["Flow", "Events", "Schema-valid", "Auto rate", "Auto precision", "AUROC", "ECE", "Gates"]
    )
    for summary in summaries:
        lanes = _map(summary.get("lanes"))
        raw = _map(_map(summary.get("calibration")).get("raw"))
        table.add(
            _label(summary.get("flow")),
            _count(_map(summary.get("run")).get("events")),
            pct(_map(summary.get("schema_valid")).get("rate")),
            pct(lanes.get("auto_rate")),
            pct(lanes.get("auto_precision")),
            score(raw.get("auroc")),
            score(raw.get("ece")),
            "PASS" if _flow_passed(summary) else "FAIL",
            mark="good" if _flow_passed(summary) else "bad",
        )
    return [banner, table]


# -- rendering ------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;
background:#fff;margin:0}
main{max-width:1040px;margin:0 auto;padding:24px}
h1{font-size:1.7em;margin:0 0 .4em}h2{margin-top:2em;padding-top:.6em;border-top:2px solid #d0d7de}
h3{margin-top:1.6em}h4{margin:1.2em 0 .4em}
table{border-collapse:collapse;margin:.6em 0 1em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;vertical-align:top;
overflow-wrap:anywhere}
th{background:#f6f8fa}tr.bad td{background:#ffebe9}tr.good td{background:#dafbe1}
.banner{font-weight:700;font-size:1.15em;padding:10px 14px;border-radius:6px;margin:.8em 0}
.banner.pass{background:#dafbe1;color:#116329;border:1px solid #4ac26b}
.banner.fail{background:#ffebe9;color:#a40e26;border:1px solid #ff8182}
.more{color:#59636e;font-style:italic}
figure{margin:.6em 0 1.2em}img{max-width:100%;height:auto;border:1px solid #d0d7de}
"""

_NEWLINES = re.compile(r"\r\n|\r|\n")
#: Markdown punctuation that could start emphasis, code, links, tables, strike-through or math.
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~$#])")


def _md(text: str, *, cell: bool = False) -> str:
    """``text`` as literal GitHub Markdown: HTML-escaped, punctuation backslash-escaped, and on
    one line (newlines become ``<br>`` in table cells, spaces elsewhere)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _NEWLINES.sub("<br>" if cell else " ", text)


def _href(file: str) -> str:
    return urllib.parse.quote(file)


def _more(n: int) -> str:
    return f"… and {n} more (see summary.json)"


def _to_markdown(title: str, blocks: Iterable[_Block]) -> str:
    out = [f"# {_md(title)}", ""]
    for block in blocks:
        if isinstance(block, _Heading):
            out += ["#" * block.level + " " + _md(block.text), ""]
        elif isinstance(block, _Text):
            out += [_md(block.text), ""]
        elif isinstance(block, _Banner):
            out += [f"> **{'PASS' if block.passed else 'FAIL'}** — {_md(block.text)}", ""]
        elif isinstance(block, _Image):
            out += [f"![{_md(block.alt)}]({_href(block.file)})", ""]
        else:
            out.append("| " + " | ".join(_md(h, cell=True) for h in block.headers) + " |")
            out.append("|" + "---|" * len(block.headers))
            for row in block.rows:
                out.append("| " + " | ".join(_md(c, cell=True) or " " for c in row) + " |")
            if block.more:
                out += ["", f"*{_md(_more(block.more))}*"]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def _to_html(title: str, blocks: Iterable[_Block]) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
        f"<h1>{e(title)}</h1>",
    ]
    for block in blocks:
        if isinstance(block, _Heading):
            anchor = f' id="{e(block.anchor)}"' if block.anchor else ""
            out.append(f"<h{block.level}{anchor}>{e(block.text)}</h{block.level}>")
        elif isinstance(block, _Text):
            out.append(f"<p>{e(block.text)}</p>")
        elif isinstance(block, _Banner):
            verdict = "PASS" if block.passed else "FAIL"
            css = "pass" if block.passed else "fail"
            out.append(f'<div class="banner {css}" role="status">{verdict} — {e(block.text)}</div>')
        elif isinstance(block, _Image):
            out.append(
                f'<figure><img src="{e(_href(block.file))}" alt="{e(block.alt)}">'
                f"<figcaption>{e(block.alt)}</figcaption></figure>"
            )
        else:
            out.append("<table>")
            out.append("<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in block.headers))
            out.append("</tr></thead><tbody>")
            for row, mark in zip(block.rows, block.marks, strict=True):
                css = f' class="{mark}"' if mark in ("good", "bad") else ""
                out.append(f"<tr{css}>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
            if block.more:
                out.append(f'<p class="more">{e(_more(block.more))}</p>')
    out += ["</main>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


# -- the entry point ------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """For summary.json: mappings and sequences that are not dicts and lists, anything else as
    text."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return list(value)
    return str(value)


def write_report(
    summaries: Iterable[Mapping[str, Any]] | Mapping[str, Any],
    directory: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Write the report of ``summaries`` (``sluice.eval/1`` dicts, one per flow; a single dict is
    taken as a list of one) into ``directory``, creating it; return the path of its index.html.

    Writes ``index.html``, ``report.md``, ``summary.json`` and the plots that have data (see the
    module docstring); files of the same names are replaced.
    """
    items = [summaries] if isinstance(summaries, Mapping) else list(summaries)
    if not items:
        raise ValueError("write_report needs at least one eval summary")
    for item in items:
        if not isinstance(item, Mapping):
            raise TypeError(f"an eval summary must be a mapping, not {type(item).__name__}")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    flows = [_label(item.get("flow")) for item in items]
    heading = title if title is not None else "Sluice eval report: " + ", ".join(flows)

    blocks: list[_Block] = _overview(items)
    taken: set[str] = set()
    for item, flow in zip(items, flows, strict=True):
        slug = _unique(_slug(flow, "flow"), taken)
        blocks += _flow_blocks(item, f"flow-{slug}", _draw(out, item, slug, flow))

    (out / "summary.json").write_text(
        json.dumps(items, indent=2, ensure_ascii=False, default=_jsonable) + "\n", encoding="utf-8"
    )
    (out / "report.md").write_text(_to_markdown(heading, blocks), encoding="utf-8")
    index = out / "index.html"
    index.write_text(_to_html(heading, blocks), encoding="utf-8")
    return index
