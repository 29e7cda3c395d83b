"""The eval report's plots: a reliability diagram, auto-lane precision against auto rate, and a
confusion matrix per classified field, as PNG files next to the report (:mod:`evals.report`).

Kept apart from the HTML and Markdown because this is the only part that needs matplotlib, and
only when a plot is drawn (it is imported lazily). It draws with ``matplotlib.figure.Figure``, not
pyplot: no global figure registry, no interactive backend to select, nothing to close; ``savefig``
to a ``.png`` renders with Agg. The PNGs are deterministic: a fixed resolution and size
(:data:`DPI` and the ``*_SIZE`` constants) and no software version in their metadata, so the same
summary gives the same bytes and a report can be diffed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evals.formatting import (
    _cut,
    _int,
    _label,
    _list,
    _map,
    _num,
    _opt_map,
    _slug,
    _unique,
    pct,
    score,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: Plots are rendered at this resolution and these sizes (inches), so their pixel size is fixed.
DPI = 100
RELIABILITY_SIZE = (6.4, 6.4)
CURVE_SIZE = (6.4, 4.8)
CONFUSION_SIZE = (7.2, 6.4)
#: Longest data string shown on a plot axis before it is cut.
MAX_TICK_LABEL = 20

# Colour-blind safe (Okabe-Ito).
_BLUE, _ORANGE, _GREEN, _RED, _GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#888888"


@dataclass(frozen=True)
class _Plots:
    """The files of a flow's plots (names relative to the report); None for a plot not drawn."""

    reliability: str | None
    curve: str | None
    confusion: Mapping[str, str]


def _figure(size: tuple[float, float]) -> Figure:
    # matplotlib.figure.Figure without pyplot: no global figure registry, no interactive backend;
    # savefig to a .png renders with Agg.
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI)


def _save(fig: Figure, path: Path) -> None:
    with warnings.catch_warnings():
        # A label in a script DejaVu Sans lacks draws as boxes; that is no reason to warn.
        warnings.filterwarnings(
            "ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning
        )
        fig.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()


def _title(ax: Axes, text: str) -> None:
    ax.set_title(_cut(text, 70), fontsize=11, parse_math=False)


def _bins(part: Mapping[str, Any] | None) -> list[tuple[float, float, int, float, float]]:
    """(low, high, count, mean confidence, accuracy) of the non-empty, well-formed bins."""
    out = []
    for item in _list(_map(part).get("bins")):
        item = _map(item)
        values = [_num(item.get(key)) for key in ("low", "high", "confidence", "accuracy")]
        n = _int(item.get("count"))
        low, high, confidence, accuracy = values
        if not n or n <= 0 or low is None or high is None or high <= low:
            continue
        if confidence is not None and accuracy is not None:
            out.append((low, high, n, confidence, accuracy))
    return out


def _plot_reliability(calibration: Mapping[str, Any] | None, flow: str, path: Path) -> bool:
    if calibration is None:
        return False
    raw = _opt_map(calibration.get("raw"))
    calibrated = _opt_map(calibration.get("calibrated"))
    series = [
        (name, part, _bins(part), colour)
        for name, part, colour in (("raw", raw, _BLUE), ("calibrated", calibrated, _ORANGE))
        if part is not None
    ]
    drawn = [s for s in series if s[2]]
    if not drawn:
        return False
    fig = _figure(RELIABILITY_SIZE)
    grid = fig.add_gridspec(
        2, 1, height_ratios=(3, 1), hspace=0.06, left=0.12, right=0.97, top=0.93, bottom=0.09
    )
    ax = fig.add_subplot(grid[0])
    bars = fig.add_subplot(grid[1], sharex=ax)
    ax.plot([0, 1], [0, 1], linestyle="--", color=_GREY, linewidth=1, label="perfect calibration")
    for name, part, bins, colour in series:
        label = f"{name} (ECE {score(_map(part).get('ece'))})"
        if not bins:  # an ECE without bins: in the legend only
            ax.plot([], [], linestyle="none", label=f"{label}, no bins")
            continue
        ax.plot(
            [b[3] for b in bins], [b[4] for b in bins],
            marker="o", color=colour, linewidth=1.5, label=label,
        )  # fmt: skip
        share = 1 / len(drawn)
        slot = [s[0] for s in drawn].index(name)
        lefts = [b[0] + (b[1] - b[0]) * share * slot for b in bins]
        widths = [(b[1] - b[0]) * share * 0.9 for b in bins]
        rects = bars.bar(
            lefts, [b[2] for b in bins], width=widths, align="edge", color=colour, alpha=0.8
        )
        if len(bins) <= 20:
            bars.bar_label(rects, labels=[str(b[2]) for b in bins], fontsize=6, padding=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (share correct)")
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    _title(ax, f"{flow}: reliability")
    top = max(b[2] for s in drawn for b in s[2])
    bars.set_ylim(0, top * 1.3)
    bars.set_xlabel("confidence (bin mean)")
    bars.set_ylabel("events")
    _save(fig, path)
    return True


def _plot_curve(lanes: Mapping[str, Any] | None, flow: str, path: Path) -> bool:
    if lanes is None:
        return False
    from matplotlib.ticker import PercentFormatter

    curve_points: list[tuple[float, float, float | None, float | None]] = []
    for item in _list(lanes.get("curve")):
        item = _map(item)
        rate, precision = _num(item.get("auto_rate")), _num(item.get("auto_precision"))
        if rate is not None and precision is not None:
            curve_points.append(
                (rate, precision, _num(item.get("lower")), _num(item.get("threshold")))
            )
    if not curve_points:
        return False
    curve_points.sort(key=lambda p: (p[0], -(p[3] or 0.0)))
    fig = _figure(CURVE_SIZE)
    fig.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.11)
    ax = fig.add_subplot()
    ax.plot(
        [p[0] for p in curve_points], [p[1] for p in curve_points],
        marker=".", color=_BLUE, linewidth=1.5, label="auto precision",
    )  # fmt: skip
    lower = [(p[0], p[2]) for p in curve_points if p[2] is not None]
    if lower:
        ax.plot(
            [p[0] for p in lower], [p[1] for p in lower],
            linestyle="--", color=_BLUE, alpha=0.6, label="lower bound (95% Wilson)",
        )  # fmt: skip
    step = max(1, math.ceil(len(curve_points) / 6))
    for rate, precision, _, threshold in curve_points[::step]:
        if threshold is not None:
            ax.annotate(
                f"{threshold:.2f}", (rate, precision), textcoords="offset points",
                xytext=(-24 if rate > 0.9 else 3, 4), fontsize=7, color=_GREY,
            )  # fmt: skip
    lows = [p[1] for p in curve_points] + [p[1] for p in lower]
    target = _num(lanes.get("target_precision"))
    if target is not None:
        ax.axhline(
            target, color=_GREEN, linestyle=":", linewidth=1.5, label=f"target {pct(target)}"
        )
        lows.append(target)
    marks = (
        ("current threshold", lanes, _RED, "o"),
        ("threshold for target", _opt_map(lanes.get("for_target")), _ORANGE, "s"),
    )
    for name, lane, colour, marker in marks:
        if lane is None:
            continue
        rate, precision = _num(lane.get("auto_rate")), _num(lane.get("auto_precision"))
        label = f"{name} {score(lane.get('threshold'))}"
        if rate is not None and precision is not None:
            ax.plot(
                [rate], [precision], marker=marker, markersize=10, markerfacecolor="none",
                markeredgewidth=2, color=colour, linestyle="none", label=label,
            )  # fmt: skip
        elif rate is not None:
            ax.axvline(rate, color=colour, linestyle="-.", linewidth=1, label=f"{label} (no auto)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(max(0.0, min(lows) - 0.05), 1.02)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("auto rate (share of scored events sent to auto)")
    ax.set_ylabel("auto-lane precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    _title(ax, f"{flow}: precision vs auto rate (labels: thresholds)")
    _save(fig, path)
    return True


def _plot_confusion(spec: Mapping[str, Any], flow: str, name: str, path: Path) -> bool:
    labels = [_label(label) for label in _list(spec.get("labels"))]
    matrix = [
        [max(0, _int(cell) or 0) for cell in _list(row)] for row in _list(spec.get("confusion"))
    ]
    size = max([len(labels), len(matrix), *(len(row) for row in matrix)])
    grid = [[0] * size for _ in range(size)]
    for i, row in enumerate(matrix):
        for j, cell in enumerate(row):
            grid[i][j] = cell
    total = sum(map(sum, grid))
    if size == 0 or total == 0:
        return False
    names = [_cut(label, MAX_TICK_LABEL) for label in labels]
    names += [f"#{i}" for i in range(len(names), size)]  # cells beyond the labels given
    fig = _figure(CONFUSION_SIZE)
    fig.subplots_adjust(left=0.24, right=0.96, top=0.92, bottom=0.24)
    ax = fig.add_subplot()
    image = ax.imshow(grid, cmap="Blues", vmin=0, interpolation="nearest", aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
    fontsize = max(4.0, min(9.0, 180 / size))
    ax.set_xticks(
        range(size), labels=names, rotation=45, ha="right", rotation_mode="anchor",
        fontsize=fontsize, parse_math=False,
    )  # fmt: skip
    ax.set_yticks(range(size), labels=names, fontsize=fontsize, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if size <= 30:
        peak = max(map(max, grid))
        for i in range(size):
            for j in range(size):
                ax.text(
                    j, i, str(grid[i][j]), ha="center", va="center", fontsize=fontsize,
                    color="white" if grid[i][j] > peak / 2 else "black",
                )  # fmt: skip
    _title(ax, f"{flow}: {name} (true vs predicted, n={total})")
    _save(fig, path)
    return True


def _draw(
    directory: Path, summary: Mapping[str, Any], slug: str, flow: str
) -> _Plots:  # fmt: skip
    """Draw the flow's plots; a plot with nothing to draw is skipped and an old file of that name
    (from an earlier report in the same directory) is removed, so the directory matches the page.
    """

    def keep(drawn: bool, file: str) -> str | None:
        if not drawn:
            (directory / file).unlink(missing_ok=True)
            return None
        return file

    file = f"{slug}-reliability.png"
    reliability = keep(
        _plot_reliability(_opt_map(summary.get("calibration")), flow, directory / file), file
    )
    file = f"{slug}-precision-vs-auto-rate.png"
    curve = keep(_plot_curve(_opt_map(summary.get("lanes")), flow, directory / file), file)
    confusion: dict[str, str] = {}
    taken: set[str] = set()
    for name, spec in _map(summary.get("classes")).items():
        label = _label(name)
        file = f"{slug}-confusion-{_unique(_slug(label, 'field'), taken)}.png"
        if keep(_plot_confusion(_map(spec), flow, label, directory / file), file):
            confusion[name] = file
    return _Plots(reliability, curve, confusion)
