"""``sluice eval`` and ``sluice calibrate`` on files, as a user runs them (no Kafka: rows and
labels are files). A gate that fails must fail the command; a calibration is written next to the
prompt with its version, and a refit bumps it."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents.calibration import Calibration
from streams import logconfig
from streams.cli import main

TRUE = {"category": "billing", "priority": "high", "team": "billing", "requires_human": False}


def row(i: int, confidence: float, right: bool, *, model: str = "m1") -> dict[str, Any]:
    fields = TRUE if right else {**TRUE, "category": "technical", "team": "tech_support"}
    return {
        "format": "sluice.replay/1",
        "event_id": f"e{i}",
        "flow": "tickets",
        "candidate": {"model": model, "prompt_version": "ticket_triage.v3", "base_url": None},
        "lane": "auto" if confidence >= 0.8 else "review",
        "reason": "",
        "record": {
            "event_id": f"e{i}",
            **fields,
            "sentiment": "neutral",
            "route": {"lane": "auto", "reason": "", "threshold": 0.8},
        },
        "deadletter": None,
        "confidence": confidence,
        "confidence_detail": {
            "score": confidence,
            "self_rated": confidence,
            "logprob": None,
            "validation": 1.0,
            "method": "m",
        },  # fmt: skip
        "usage": {
            "attempts": 1,
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "latency_ms": 50 + i,
            "cost_usd": None,
        },  # fmt: skip
    }


def write(path: Path, lines: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return str(path)


@pytest.fixture(autouse=True)
def _logging() -> Iterator[None]:
    """The commands configure logging at WARNING for the process; later tests log at INFO."""
    yield
    logconfig.configure("info", "console")


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    """80 over-confident answers: the score says 0.6–1.0, about half are right."""
    rng = random.Random(7)
    rows, labels = [], []
    for i in range(80):
        confidence = round(0.6 + 0.4 * rng.random(), 3)
        right = rng.random() < confidence - 0.35
        rows.append(row(i, confidence, right))
        labels.append({"event_id": f"e{i}", "flow": "tickets", "origin": "golden",
                       "verdict": None, "fields": TRUE})  # fmt: skip
    return write(tmp_path / "rows.jsonl", rows), write(tmp_path / "labels.jsonl", labels)


def test_a_failing_gate_fails_the_command_and_the_report_is_written(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, labels = files
    report = tmp_path / "report"
    code = main(["eval", rows, "--labels", labels, "--gate", "auto_precision>=0.95",
                 "--report", str(report)])  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "gate FAIL auto_precision >= 0.95" in out or "gate FAIL auto_precision>=0.95" in out
    assert (report / "index.html").is_file()
    assert (report / "tickets-reliability.png").is_file()
    summary = json.loads((report / "summary.json").read_text())[0]
    assert summary["passed"] is False
    assert summary["calibration"]["calibrated"]["ece"] < summary["calibration"]["raw"]["ece"]

    assert main(["eval", rows, "--labels", labels, "--gate", "schema_valid>=0.9"]) == 0


def test_a_baseline_regression_is_a_gate(files: tuple[str, str], tmp_path: Path) -> None:
    rows, labels = files
    better = [row(i, 0.9, True) for i in range(80)]
    baseline = write(tmp_path / "baseline.jsonl", better)
    argv = ["eval", rows, "--labels", labels, "--baseline", baseline, "--json"]
    assert main([*argv, "--gate", "regressions==0"]) == 1
    assert main(["eval", baseline, "--labels", labels, "--baseline", baseline,
                 "--gate", "regressions==0"]) == 0  # fmt: skip


def test_calibrate_writes_a_versioned_calibration_next_to_the_prompt(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows, labels = files
    where = tmp_path / "prompts"
    where.mkdir()
    assert main(["calibrate", rows, "--labels", labels, "--dir", str(where)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["version"] == 1
    assert first["ece_after"] < first["ece_before"]
    cal = Calibration.from_json((where / "ticket_triage.v3.calibration.json").read_text())
    assert (cal.flow, cal.model, cal.version) == ("tickets", "m1", 1)
    assert cal.metrics["ece_before"] == first["ece_before"]

    assert main(["calibrate", rows, "--labels", labels, "--dir", str(where)]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2

    mixed = write(tmp_path / "mixed.jsonl", [*map(json.loads, Path(rows).read_text().splitlines()),
                                             row(0, 0.9, True, model="m2")])  # fmt: skip
    assert main(["calibrate", mixed, "--labels", labels, "--dir", str(where)]) == 2


def test_correct_fields_choose_what_right_means_for_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every answer has the right category and a wrong team: wrong by the flow's definition,
    right when only the category decides; the flow's own definition is back afterwards."""
    rows = [row(i, 0.5 + i / 100, True) for i in range(30)]
    for r in rows:
        r["record"]["team"] = "tech_support"
    labels = [{"event_id": f"e{i}", "flow": "tickets", "origin": "golden", "verdict": None,
               "fields": TRUE} for i in range(30)]  # fmt: skip
    argv = ["eval", write(tmp_path / "r.jsonl", rows), "--labels",
            write(tmp_path / "l.jsonl", labels), "--json"]  # fmt: skip

    def positives(*extra: str) -> int:
        main([*argv, *extra])
        return int(json.loads(capsys.readouterr().out)[0]["calibration"]["positives"])

    assert positives("--correct-fields", "category") == 30
    assert positives() == 0


def test_a_calibration_that_does_not_help_is_not_saved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scores that already say what they mean (0.5, and half are right): a fit can only add
    noise, so it is refused unless forced."""
    rows = [row(i, 0.5, i % 2 == 0) for i in range(40)]
    labels = [{"event_id": f"e{i}", "flow": "tickets", "origin": "golden", "verdict": None,
               "fields": TRUE} for i in range(40)]  # fmt: skip
    where = tmp_path / "prompts"
    where.mkdir()
    argv = ["calibrate", write(tmp_path / "r.jsonl", rows), "--labels",
            write(tmp_path / "l.jsonl", labels), "--dir", str(where)]  # fmt: skip
    assert main(argv) == 1
    assert json.loads(capsys.readouterr().out)["saved"] is False
    assert not (where / "ticket_triage.v3.calibration.json").exists()
    assert main([*argv, "--force"]) == 0
    assert (where / "ticket_triage.v3.calibration.json").exists()
