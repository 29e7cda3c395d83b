"""The eval report on synthetic summaries: which files it writes, what its pages say, how it
formats numbers, and that nothing from the data can break out of its HTML or Markdown."""

from __future__ import annotations

import copy
import json
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from evals.report import MAX_ROWS, write_report

HOSTILE_ID = "<script>alert(1)</script>"
PIPE_VALUE = "high|urgent"


def _bins(pairs: list[tuple[int, float, float]]) -> list[dict[str, Any]]:
    """Ten equal-width bins; ``pairs`` gives (bin index, mean confidence, accuracy), count 5 + i."""
    out = [
        {"low": i / 10, "high": (i + 1) / 10, "count": 0, "confidence": 0.0, "accuracy": 0.0}
        for i in range(10)
    ]
    for i, confidence, accuracy in pairs:
        out[i].update(count=5 + i, confidence=confidence, accuracy=accuracy)
    return out


def full_summary() -> dict[str, Any]:
    """A tickets run with calibration, a baseline with many flips and a failing gate."""
    labels = ["account", "billing", "other", "shipping", "technical"]
    flipped = [
        {"event_id": HOSTILE_ID, "field": "priority", "baseline": "high", "candidate": PIPE_VALUE,
         "expected": "high"},
        {"event_id": "ev-tk-nl", "field": "category", "baseline": "other",
         "candidate": "line one\nline two", "expected": "other"},
    ] + [
        {"event_id": f"ev-tk-{i:03d}", "field": "team", "baseline": "billing",
         "candidate": "logistics", "expected": "logistics"}
        for i in range(60)
    ]  # fmt: skip
    return {
        "format": "sluice.eval/1",
        "flow": "tickets",
        "run": {"file": "run.jsonl", "events": 60, "labelled": 58,
                "models": ["smollm2-135m"], "prompt_versions": ["ticket_triage.v3"]},
        "schema_valid": {"rate": 56 / 60, "valid": 56, "n": 60},
        "lanes_seen": {"auto": 3, "review": 53, "deadletter": 4},
        "correct_fields": ["category", "priority", "team", "requires_human"],
        "fields": {
            "category": {"accuracy": 0.8, "correct": 44, "n": 55, "interval": [0.68, 0.88]},
            "priority": {"accuracy": 0.6, "correct": 33, "n": 55, "interval": [0.467, 0.72]},
            "sentiment": {"accuracy": None, "correct": 0, "n": 0, "interval": None},
        },
        "classes": {
            "category": {
                "labels": labels,
                "confusion": [[5, 1, 0, 0, 0], [1, 9, 1, 0, 1], [0, 0, 4, 1, 0],
                              [0, 0, 1, 10, 0], [1, 0, 0, 0, 16]],
                "per_class": {
                    "billing": {"precision": 0.9, "recall": 0.75, "support": 12},
                    "other": {"precision": None, "recall": 0.0, "support": 5},
                },
            },
            # the same file-name-safe form as "category": must not overwrite its plot
            "category?": {"labels": ["a", "b"], "confusion": [[1, 0], [0, 1]], "per_class": {}},
        },
        "calibration": {
            "n": 55, "positives": 20,
            "raw": {"ece": 0.31, "auroc": 0.62,
                    "bins": _bins([(3, 0.35, 0.2), (6, 0.64, 0.3), (9, 0.93, 0.5)])},
            "calibrated": {"ece": 0.0804, "auroc": 0.6449,
                           "bins": _bins([(2, 0.25, 0.2), (3, 0.36, 0.3), (5, 0.52, 0.5)]),
                           "method": "logistic", "folds": 5,
                           "calibration": "ticket_triage.v3.calibration.json"},
        },
        "lanes": {
            "threshold": 0.8, "n": 55, "auto": 3, "auto_rate": 3 / 55, "auto_correct": 3,
            "auto_precision": 1.0, "auto_precision_interval": [0.4385, 1.0],
            "target_precision": 0.95,
            "for_target": {"threshold": 0.85, "auto": 2, "auto_rate": 2 / 55,
                           "auto_precision": 1.0, "auto_precision_interval": [0.342, 1.0]},
            "curve": [  # 0.0 .. 0.75: the lane shrinks and grows more precise
                {"threshold": t / 20, "auto": 55 - 3 * t, "auto_rate": (55 - 3 * t) / 55,
                 "auto_precision": 0.36 + 0.04 * t, "lower": 0.24 + 0.04 * t}
                for t in range(16)
            ] + [
                {"threshold": 0.8, "auto": 3, "auto_rate": 3 / 55, "auto_precision": 1.0,
                 "lower": 0.4385},
                {"threshold": 0.85, "auto": 2, "auto_rate": 2 / 55, "auto_precision": 1.0,
                 "lower": 0.342},
                {"threshold": 0.99, "auto": 0, "auto_rate": 0.0, "auto_precision": None,
                 "lower": None},
            ],
        },
        "cost": {"events": 60, "tokens_per_event": 640.5, "cost_usd_per_event": None,
                 "latency_ms_p50": 2100, "latency_ms_p95": 5400, "attempts_per_event": 1.2},
        "baseline": {
            "file": "baseline.jsonl", "matched": 58,
            "fields": {"category": {"baseline": 0.82, "candidate": 0.8, "delta": -0.02},
                       "team": {"baseline": 0.7, "candidate": 0.75, "delta": 0.05}},
            "schema_valid": {"baseline": 0.95, "candidate": 56 / 60, "delta": 56 / 60 - 0.95},
            "auto_precision": {"baseline": 1.0, "candidate": 1.0, "delta": 0.0},
            "regressions": [{"field": "category", "baseline": 0.82, "candidate": 0.8,
                             "delta": -0.02}],
            "flipped": flipped,
            "lane_changes": [{"event_id": HOSTILE_ID, "baseline": "review", "candidate": "auto",
                              "correct": False}],
        },
        "gates": [
            {"name": "auto_precision >= 0.95", "passed": True, "detail": "1.00 (3 of 3)"},
            {"name": "no regression > 1 pp", "passed": False, "detail": "category -2.0 pp"},
        ],
        "passed": False,
    }  # fmt: skip


def minimal_summary() -> dict[str, Any]:
    """A run of nothing labelled: no calibration, no baseline, no classes, no curve, no gates."""
    return {
        "format": "sluice.eval/1",
        "flow": "invoices",
        "run": {"file": "empty.jsonl", "events": 0, "labelled": 0, "models": [],
                "prompt_versions": []},
        "schema_valid": {"rate": None, "valid": 0, "n": 0},
        "lanes_seen": {},
        "correct_fields": [],
        "fields": {},
        "classes": {},
        "calibration": None,
        "lanes": {"threshold": 0.8, "n": 0, "auto": 0, "auto_rate": None, "auto_correct": 0,
                  "auto_precision": None, "auto_precision_interval": None,
                  "target_precision": None, "for_target": None, "curve": []},
        "cost": None,
        "baseline": None,
        "gates": [],
        "passed": True,
    }  # fmt: skip


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def text_of(html: str) -> str:
    """The page's text without tags or entities, to read numbers as a person would."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("report") / "out"  # does not exist yet
    return write_report([full_summary(), minimal_summary()], directory)


@pytest.fixture(scope="module")
def page(report: Path) -> str:
    return report.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def markdown(report: Path) -> str:
    return (report.parent / "report.md").read_text(encoding="utf-8")


def test_writes_the_pages_the_data_and_the_plots_that_have_data(report: Path) -> None:
    assert report.name == "index.html"
    files = sorted(p.name for p in report.parent.iterdir())
    assert files == [
        "index.html",
        "report.md",
        "summary.json",
        "tickets-confusion-category-2.png",
        "tickets-confusion-category.png",
        "tickets-precision-vs-auto-rate.png",
        "tickets-reliability.png",
    ]  # and nothing for invoices: it has no calibration, no curve and no classes
    assert json.loads((report.parent / "summary.json").read_text()) == [
        full_summary(),
        minimal_summary(),
    ]


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("tickets-reliability.png", (640, 640)),
        ("tickets-precision-vs-auto-rate.png", (640, 480)),
        ("tickets-confusion-category.png", (720, 640)),
    ],
)
def test_plots_are_pngs_of_a_fixed_size(report: Path, name: str, size: tuple[int, int]) -> None:
    path = report.parent / name
    assert png_size(path) == size
    assert path.stat().st_size > 10_000  # something drawn, not an empty canvas
    assert b"Software" not in path.read_bytes()  # no matplotlib version stamped in


def test_pages_reference_the_plots_relatively(report: Path, page: str, markdown: str) -> None:
    for name in ("tickets-reliability.png", "tickets-precision-vs-auto-rate.png",
                 "tickets-confusion-category.png", "tickets-confusion-category-2.png"):  # fmt: skip
        assert f'<img src="{name}"' in page
        assert f"]({name})" in markdown
    assert "invoices-" not in page
    assert str(report.parent) not in page


def test_plots_are_deterministic(report: Path, tmp_path: Path) -> None:
    again = write_report([full_summary()], tmp_path)
    for name in ("tickets-reliability.png", "tickets-confusion-category.png"):
        assert (again.parent / name).read_bytes() == (report.parent / name).read_bytes()


def test_headline_numbers_are_formatted_consistently(page: str) -> None:
    text = text_of(page)
    for expected in [
        "Events 60",
        "Labelled 58",
        "Schema-valid 93.3% (56 of 60)",
        "Auto rate at threshold 0.800 5.5% (3 of 55)",
        "Auto precision at threshold 0.800 100.0% (95% CI 43.9%–100.0%; 3 of 3 right)",
        "Threshold for 95.0% precision 0.850 (auto rate 3.6%, precision 100.0%, "
        "95% CI 34.2%–100.0%)",
        "AUROC 0.620",
        "ECE (raw → calibrated) 0.310 → 0.080 (logistic, 5-fold cross-validated)",
        "Gates FAIL (1 of 2 gates failed)",
    ]:
        assert expected in text, expected
    # the tables: intervals, n/a for null, percentage points for deltas
    assert "category 80.0% 68.0%–88.0% 44 55 yes" in text
    assert "sentiment n/a n/a 0 0 no" in text
    assert "other n/a 0.0% 5" in text
    assert "Cost per event n/a" in text
    assert "Latency p95 5,400 ms" in text
    assert "category 82.0% 80.0% -2.0 pp REGRESSION" in text
    assert "team 70.0% 75.0% +5.0 pp" in text
    assert "auto precision 100.0% 100.0% +0.0 pp" in text


def test_a_failing_gate_fails_the_report(page: str, markdown: str) -> None:
    assert 'class="banner fail"' in page
    assert "FAIL — 1 of 2 flows passed" in page
    assert 'class="banner pass"' in page  # the invoices flow on its own passes
    assert '<tr class="bad"><td>no regression &gt; 1 pp</td><td>FAIL</td>' in page
    assert "> **FAIL** — 1 of 2 flows passed" in markdown


def test_passing_gates_pass_the_report(tmp_path: Path) -> None:
    summary = full_summary()
    summary["gates"][1]["passed"] = True
    summary["passed"] = True
    page = write_report([summary], tmp_path).read_text()
    assert "PASS — 1 of 1 flow passed" in page
    assert "banner fail" not in page
    assert "Gates PASS (2 gates passed)" in text_of(page)


def test_a_failed_gate_fails_even_if_passed_says_otherwise(tmp_path: Path) -> None:
    summary = full_summary()
    summary["passed"] = True  # inconsistent: the gate list still has a failure
    page = write_report([summary], tmp_path).read_text()
    assert "FAIL — 0 of 1 flow passed" in page


def test_regressions_are_highlighted(page: str) -> None:
    assert re.search(r'<tr class="bad"><td>category</td><td>82\.0%</td>', page)
    assert re.search(r"<tr><td>team</td><td>70\.0%</td>", page)


def test_long_lists_are_capped_and_counted(page: str, markdown: str) -> None:
    flipped = len(full_summary()["baseline"]["flipped"])
    assert "Flipped answers (62)" in page
    assert page.count("<td>team</td><td>billing</td><td>logistics</td>") == MAX_ROWS - 2
    assert f"… and {flipped - MAX_ROWS} more" in page
    assert f"… and {flipped - MAX_ROWS} more" in markdown


def test_data_is_escaped_in_html(page: str) -> None:
    assert HOSTILE_ID not in page
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert f"<td>{PIPE_VALUE}</td>" in page  # nothing to escape in HTML, but intact


def test_data_is_escaped_in_markdown(markdown: str) -> None:
    assert HOSTILE_ID not in markdown
    assert "<script" not in markdown
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in markdown
    assert "high\\|urgent" in markdown
    assert PIPE_VALUE not in markdown
    assert "line one<br>line two" in markdown
    # every table row keeps its column count: no cell leaked a | or a newline
    for table in re.findall(r"(?m)(?:^\|.*\|\n)+", markdown):
        rows = table.splitlines()
        widths = {len(re.findall(r"(?<!\\)\|", row)) for row in rows}
        assert len(widths) == 1, rows


def test_hostile_names_stay_inside_the_directory(tmp_path: Path) -> None:
    summary = minimal_summary()
    summary["flow"] = "../../<b>evil</b>"
    # not math (an unparsable formula would raise), and a script the plot font lacks (a warning,
    # an error under pytest's filterwarnings)
    labels = ["$\\undefined{$", "日本語"]
    summary["classes"] = {"../x": {"labels": labels, "confusion": [[1, 2], [0, 3]]}}
    index = write_report(summary, tmp_path / "out", title="<i>Title</i>")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "b_evil_b-confusion-x.png",
        "index.html",
        "report.md",
        "summary.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    page = index.read_text()
    assert "<i>" not in page
    assert "<b>" not in page
    assert "&lt;i&gt;Title&lt;/i&gt;" in page


def test_the_minimal_summary_reads_not_measured(tmp_path: Path) -> None:
    index = write_report([minimal_summary()], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html", "report.md", "summary.json"]
    text = text_of(index.read_text())
    for expected in [
        "Events 0",
        "Schema-valid n/a",
        "Auto rate at threshold 0.800 n/a",
        "Auto precision at threshold 0.800 n/a (nothing reaches the threshold)",
        "Threshold for target precision n/a (no target set)",
        "AUROC not measured",
        "ECE (raw → calibrated) not measured",
        "Gates PASS (no gates)",
        "Accuracy per field not measured",
        "Classes not measured",
        "Calibration not measured",
        "Cost and latency per event not measured",
        "Against the baseline not measured (no baseline)",
        "PASS — 1 of 1 flow passed",
    ]:
        assert expected in text, expected


def test_sections_may_be_missing_altogether(tmp_path: Path) -> None:
    index = write_report([{"flow": "bare"}], tmp_path)
    text = text_of(index.read_text())
    assert "Events n/a" in text
    assert "Auto rate not measured" in text
    assert "Threshold for target precision not measured" in text


def test_no_target_reached_and_no_calibrated_score(tmp_path: Path) -> None:
    summary = full_summary()
    summary["lanes"]["for_target"] = None
    summary["calibration"]["calibrated"] = None
    summary["classes"]["category"]["confusion"] = [[0] * 5] * 5  # nothing to draw
    index = write_report([summary], tmp_path)
    text = text_of(index.read_text())
    assert "Threshold for 95.0% precision none reaches it" in text
    assert "ECE (raw → calibrated) 0.310 (not calibrated)" in text
    assert not (tmp_path / "tickets-confusion-category.png").exists()
    assert (tmp_path / "tickets-reliability.png").exists()  # raw bins alone are drawn


def test_a_plot_without_data_replaces_an_old_one(tmp_path: Path) -> None:
    write_report([full_summary()], tmp_path)
    assert (tmp_path / "tickets-reliability.png").exists()
    summary = copy.deepcopy(full_summary())
    summary["calibration"] = None
    write_report([summary], tmp_path)
    assert not (tmp_path / "tickets-reliability.png").exists()


def test_needs_a_summary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path)
