"""Calibration: fitted maps from confidence signals to P(right), stored next to the prompt.

The central claim is measured, not assumed: on synthetic sets whose true P(right) is known and far
from the raw score, cross-validated calibrated scores have a small ECE (``evals.metrics.ece``).
Agents are driven through the in-process fault server, so the calibrated score is checked on the
real client path, with no network.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from structlog.testing import capture_logs

import agents.calibration as calibration
from agents.calibration import (
    FEATURES,
    FORMAT,
    MIN_ROWS,
    Calibration,
    Method,
    Row,
    calibration_path,
    cross_validated,
    fit,
    load_calibration,
    raw_score,
    save_calibration,
)
from agents.confidence import METHOD, combine
from agents.invoice import InvoiceExtractionAgent
from agents.llm import LLMClient, LLMConfig
from agents.testing.fault_server import FaultServer, answer_marker
from agents.triage import TicketTriageAgent
from evals.metrics import auroc, ece
from schemas.errors import ConfigError
from schemas.events import DocumentReceived, TicketReceived
from schemas.records import Confidence
from tests.records import GOOD_TRIAGE

METHODS: tuple[Method, ...] = ("logistic", "isotonic")


# --- synthetic sets with a known truth ---


def cubic_rows(n: int = 2000, seed: int = 1) -> list[Row]:
    """Raw score s uniform, P(right) = s**3: over-confident everywhere but at the ends."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        s = rng.random()
        rows.append((combine(s, None, reasks=0), rng.random() < s**3))
    return rows


def overconfident_rows(n: int = 2000, seed: int = 2) -> list[Row]:
    """A model whose logprobs and self-ratings sit at 0.5-1.0 while it is right 20-80 % of the
    time, and whose re-asked answers are worse again than the re-ask penalty says."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        logprob = 0.5 + 0.5 * rng.random()
        reasks = rng.choice([0, 0, 0, 1, 2])
        c = combine(rng.choice([0.8, 0.9, 0.95, 1.0]), logprob, reasks=reasks)
        p_right = (0.2 + 0.6 * (logprob - 0.5) * 2) * 0.6**reasks
        rows.append((c, rng.random() < p_right))
    return rows


def rows_with_scores(scores_and_outcomes: list[tuple[float, bool]]) -> list[Row]:
    return [(combine(s, None, reasks=0), ok) for s, ok in scores_and_outcomes]


def fitted(rows: list[Row], method: Method = "logistic", **kw: Any) -> Calibration:
    args: dict[str, Any] = {
        "method": method,
        "flow": "tickets",
        "prompt_version": "ticket_triage.v3",
        "model": "*",
        "origin": "golden",
        "source": "synthetic",
    }
    return fit(rows, **{**args, **kw})


@pytest.fixture(scope="module")
def cubic() -> list[Row]:
    return cubic_rows()


@pytest.fixture(scope="module")
def cubic_calibration(cubic: list[Row]) -> Calibration:
    return fitted(cubic)


# --- (a) calibration fixes a miscalibrated score, honestly measured ---


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make", [cubic_rows, overconfident_rows])
def test_cross_validated_calibration_removes_most_of_the_ece(make: Any, method: Method) -> None:
    rows = make()
    raw = [c.score for c, _ in rows]
    right = [ok for _, ok in rows]
    calibrated = cross_validated(rows, method=method)
    assert ece(raw, right) > 0.15
    assert ece(calibrated, right) < 0.05
    if method == "logistic":  # monotone in the score: the ranking survives, up to fold noise
        before, after = auroc(raw, right), auroc(calibrated, right)
        assert before is not None
        assert after is not None
        assert after >= before - 0.01


def test_cross_validation_is_deterministic_and_out_of_fold(cubic: list[Row]) -> None:
    first = cross_validated(cubic, method="isotonic", seed=3)
    assert first == cross_validated(cubic, method="isotonic", seed=3)
    assert first != cross_validated(cubic, method="isotonic", seed=4)
    # In-sample isotonic fits its own rows better than it predicts unseen ones.
    cal = fitted(cubic, "isotonic")
    in_sample = [cal.apply(c) for c, _ in cubic]
    right = [ok for _, ok in cubic]
    assert ece(in_sample, right) < ece(first, right)


# --- (b) logistic recovers known weights ---


def test_logistic_recovers_the_weights_of_a_known_model() -> None:
    rng = random.Random(7)
    rows = []
    for _ in range(4000):
        self_rated, logprob = rng.random(), rng.random() if rng.random() < 0.7 else None
        validation = rng.choice([1.0, 0.75, 0.5625, 0.5])
        c = Confidence(
            score=rng.random(),  # unrelated to the truth here: its weights must come out ~0
            self_rated=self_rated,
            logprob=logprob,
            validation=validation,
            method=METHOD,
        )
        z = -0.5 + 3.0 * self_rated - 2.0 * (logprob or 0.0) + 1.5 * math.log(validation)
        rows.append((c, rng.random() < 1 / (1 + math.exp(-z))))
    w = fitted(rows).params["weights"]
    assert w["self_rated"] == pytest.approx(3.0, abs=0.5)
    assert w["logprob"] == pytest.approx(-2.0, abs=0.5)
    assert w["log_validation"] == pytest.approx(1.5, abs=0.5)
    assert w["self_rated"] > w["log_validation"] > 0 > w["logprob"]
    assert abs(w["score"]) < 0.5
    assert abs(w["logit_score"]) < 0.2


def test_logistic_stays_finite_on_separable_data() -> None:
    rows = rows_with_scores([(i / 40, i >= 20) for i in range(40)])
    cal = fitted(rows)
    assert all(math.isfinite(v) for v in [cal.params["bias"], *cal.params["weights"].values()])
    assert cal.apply(combine(0.95, None, reasks=0)) > 0.8
    assert cal.apply(combine(0.05, None, reasks=0)) < 0.2


# --- (c) isotonic is a monotone step function ---


def test_isotonic_pools_adjacent_violators() -> None:
    # At 0.1 4/5 right, at 0.2 1/5: a violation, pooled to 5/10; then 3/5 and 5/5.
    outcomes = [(0.1, i < 4) for i in range(5)] + [(0.2, i < 1) for i in range(5)]
    outcomes += [(0.3, i < 3) for i in range(5)] + [(0.4, True) for _ in range(5)]
    cal = fitted(rows_with_scores(outcomes), "isotonic")
    assert cal.params == {"thresholds": [0.1, 0.2, 0.3, 0.4], "values": [0.5, 0.5, 0.6, 1.0]}
    assert cal.apply(combine(0.25, None, reasks=0)) == pytest.approx(0.55)
    assert cal.apply(combine(0.0, None, reasks=0)) == 0.5  # flat beyond the ends
    assert cal.apply(combine(0.9, None, reasks=0)) == 1.0


def test_isotonic_output_is_monotone(cubic: list[Row]) -> None:
    noisy = cubic[:300]  # few rows: plenty of local violations to pool
    cal = fitted(noisy, "isotonic")
    thresholds, values = cal.params["thresholds"], cal.params["values"]
    assert thresholds == sorted(set(thresholds))
    assert values == sorted(values)
    grid = [cal.apply(combine(i / 1000, None, reasks=0)) for i in range(1001)]
    assert all(a <= b for a, b in zip(grid, grid[1:], strict=False))
    assert grid[0] < 0.1 < 0.7 < grid[-1]


# --- (d) the file format, and what a fit refuses ---


@pytest.mark.parametrize("method", METHODS)
def test_json_round_trip(cubic: list[Row], method: Method) -> None:
    cal = fitted(cubic, method, metrics={"ece_before": 0.24, "ece_after": 0.02, "auroc": None})
    text = cal.to_json()
    back = Calibration.from_json(text)
    assert back == cal
    assert back.to_json() == text
    assert back.apply(cubic[0][0]) == cal.apply(cubic[0][0])
    document = json.loads(text)
    assert list(document)[:5] == ["format", "flow", "prompt_version", "model", "method"]
    assert document["format"] == FORMAT
    assert document["fitted_on"] == {"n": 2000, "positives": cal.fitted_on["positives"],
                                     "origin": "golden", "source": "synthetic"}  # fmt: skip
    assert text.splitlines()[1] == f'  "format": "{FORMAT}",'  # indented: diffs line by line
    if method == "logistic":
        assert list(document["params"]["weights"]) == list(FEATURES)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "sluice.calibration/2"}, "unknown calibration format"),
        ({"method": "beta"}, "unknown calibration method"),
        ({"version": 0}, "version"),
        ({"fitted_at": "yesterday"}, "ISO 8601"),
        ({"params": {"bias": 0.0, "weights": {"mood": 1.0}}}, "unknown features"),
        ({"method": "isotonic", "params": {"thresholds": [0.1, 0.2], "values": [0.9, 0.1]}},
         "non-decreasing"),
        ({"extra": 1}, "unknown"),
    ],
)  # fmt: skip
def test_malformed_files_are_config_errors(
    cubic_calibration: Calibration, change: dict[str, Any], message: str
) -> None:
    document = {**json.loads(cubic_calibration.to_json()), **change}
    with pytest.raises(ConfigError, match=message):
        Calibration.from_json(json.dumps(document))


def test_a_calibration_is_checked_however_it_is_built(cubic_calibration: Calibration) -> None:
    with pytest.raises(ConfigError, match="unknown calibration format 'sluice.calibration/0'"):
        dataclasses.replace(cubic_calibration, format="sluice.calibration/0")
    with pytest.raises(ConfigError, match="strictly increasing"):
        dataclasses.replace(
            cubic_calibration,
            method="isotonic",
            params={"thresholds": [0.5, 0.5], "values": [0, 1]},
        )


def test_not_json_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        Calibration.from_json("{")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        Calibration.from_json("[]")
    with pytest.raises(ConfigError, match="unknown calibration format None"):
        Calibration.from_json("{}")


def test_fit_refuses_too_few_rows_or_one_class(cubic: list[Row]) -> None:
    with pytest.raises(ValueError, match=f"at least {MIN_ROWS}"):
        fitted(cubic[: MIN_ROWS - 1])
    right = [row for row in cubic if row[1]][:50]
    with pytest.raises(ValueError, match="all 50 rows are right"):
        fitted(right)
    with pytest.raises(ValueError, match="all 50 rows are right"):
        cross_validated(right, method="isotonic")
    just_enough = rows_with_scores([(i / MIN_ROWS, i % 3 == 0) for i in range(MIN_ROWS)])
    assert fitted(just_enough).fitted_on["n"] == MIN_ROWS


# --- (e) versions ---


def test_each_refit_is_the_next_version(cubic: list[Row]) -> None:
    first = fitted(cubic[:500])
    second = fitted(cubic, previous=first)
    third = fitted(cubic, "isotonic", previous=second, model="other-model")
    assert (first.version, second.version, third.version) == (1, 2, 3)
    with pytest.raises(ValueError, match="new prompt version starts at version 1"):
        fitted(cubic, prompt_version="ticket_triage.v4", previous=third)


# --- (f) storage next to the prompt ---


@pytest.fixture
def no_warnings_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The mismatch warning is once per process: each test starts with none given."""
    monkeypatch.setattr(calibration, "_WARNED", set())


def test_calibration_lives_next_to_the_prompt() -> None:
    path = calibration_path("ticket_triage.v3")
    assert path.name == "ticket_triage.v3.calibration.json"
    assert (path.parent / "ticket_triage.v3.md").is_file()
    with pytest.raises(ConfigError, match="cannot name a calibration file"):
        calibration_path("../ticket_triage.v3")


def test_absent_file_means_no_calibration(tmp_path: Path) -> None:
    assert load_calibration("ticket_triage.v3", "m", directory=tmp_path) is None
    assert load_calibration("no_such_prompt.v9", "m") is None  # the package's own prompts folder


@pytest.mark.usefixtures("no_warnings_yet")
@pytest.mark.parametrize(("fitted_for", "model"), [("*", "qwen"), ("qwen", "qwen")])
def test_a_calibration_for_this_model_or_any_is_loaded(
    cubic: list[Row], tmp_path: Path, fitted_for: str, model: str
) -> None:
    cal = fitted(cubic[:200], model=fitted_for)
    assert save_calibration(cal, tmp_path) == calibration_path("ticket_triage.v3", tmp_path)
    with capture_logs() as logs:
        assert load_calibration("ticket_triage.v3", model, directory=tmp_path) == cal
    assert logs == []


@pytest.mark.usefixtures("no_warnings_yet")
def test_a_calibration_for_another_model_is_not_used_and_warned_once(
    cubic: list[Row], tmp_path: Path
) -> None:
    save_calibration(fitted(cubic[:200], model="qwen"), tmp_path)
    with capture_logs() as logs:
        assert load_calibration("ticket_triage.v3", "llama", directory=tmp_path) is None
        assert load_calibration("ticket_triage.v3", "llama", directory=tmp_path) is None
    assert logs == [
        {
            "event": "calibration.model_mismatch",
            "log_level": "warning",
            "prompt_version": "ticket_triage.v3",
            "calibrated_for": "qwen",
            "model": "llama",
            "version": 1,
        }
    ]


@pytest.mark.usefixtures("no_warnings_yet")
def test_loads_through_package_resources(
    cubic: list[Row], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default lookup reads the ``agents`` package's prompts folder (redirected here, so the
    test never writes into agents/prompts)."""
    (tmp_path / "prompts").mkdir()
    cal = fitted(cubic[:200])
    save_calibration(cal, tmp_path / "prompts")
    seen: list[str] = []

    def files(package: str) -> Path:
        seen.append(package)
        return tmp_path

    monkeypatch.setattr(calibration, "resources", SimpleNamespace(files=files))
    assert load_calibration("ticket_triage.v3", "any") == cal
    assert seen == ["agents"]
    misnamed = tmp_path / "prompts" / "ticket_triage.v4.calibration.json"
    misnamed.write_text(cal.to_json())
    with pytest.raises(ConfigError, match="holds the calibration of 'ticket_triage.v3'"):
        load_calibration("ticket_triage.v4", "any")


# --- (g) combine and the agents ---


def test_combine_with_a_calibration(cubic_calibration: Calibration) -> None:
    raw = combine(0.8, 0.6, reasks=1)
    calibrated = combine(0.8, 0.6, reasks=1, calibration=cubic_calibration)
    assert calibrated.score == round(cubic_calibration.apply(raw), 6)
    assert abs(calibrated.score - raw.score) > 0.1
    assert calibrated.method == (
        "calibrated ticket_triage.v3 v1 (logistic, fitted on 2000 golden) over " + METHOD
    )
    assert (calibrated.self_rated, calibrated.logprob, calibrated.validation) == (
        raw.self_rated,
        raw.logprob,
        raw.validation,
    )
    # A calibrated record still yields its raw score: a refit never calibrates a calibration.
    assert raw_score(calibrated) == pytest.approx(raw.score, abs=1e-6)
    assert cubic_calibration.apply(calibrated) == pytest.approx(
        cubic_calibration.apply(raw), abs=1e-6
    )
    assert combine(0.8, 0.6, reasks=1, calibration=None) == raw


@pytest.fixture(scope="module")
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


def client(server: FaultServer) -> LLMClient:
    llm = LLMClient(
        LLMConfig(base_url=server.base_url, api_key="test", model="fault", logprobs=False)
    )
    llm.start()
    return llm


async def test_triage_agent_routes_on_the_calibrated_score(
    server: FaultServer, cubic_calibration: Calibration
) -> None:
    llm = client(server)
    ticket = TicketReceived(ticket_id="T-1", body=f"Charged twice. {answer_marker(GOOD_TRIAGE)}")
    try:
        plain = await TicketTriageAgent(llm).run(ticket)
        calibrated = await TicketTriageAgent(llm, calibration=cubic_calibration).run(ticket)
    finally:
        await llm.close()
    assert plain.confidence.score == 0.8  # the self-rating: no logprobs from this server
    assert plain.confidence.method == METHOD
    assert calibrated.confidence.score == round(cubic_calibration.apply(plain.confidence), 6)
    assert calibrated.confidence.score < 0.6  # P(right) = 0.8**3 on the cubic set
    assert calibrated.confidence.method.startswith("calibrated ticket_triage.v3 v1 (logistic")
    assert calibrated.confidence.self_rated == plain.confidence.self_rated
    # Per-action confidences are the model's, not the calibration's.
    assert calibrated.answer.actions == plain.answer.actions


async def test_invoice_agent_routes_on_the_calibrated_score(
    server: FaultServer, cubic: list[Row]
) -> None:
    cal = fitted(cubic, "isotonic", flow="invoices", prompt_version="invoice_extraction.v3")
    answer = {
        "vendor_name": "ACME GmbH",
        "invoice_number": "R-17",
        "issue_date": "2026-03-02",
        "due_date": None,
        "currency": "EUR",
        "line_items": [
            {"description": "Screws", "quantity": "2", "unit_price": "12.50", "amount": "25.00"}
        ],
        "subtotal": "25.00",
        "tax": "4.75",
        "total": "29.75",
        "confidence": 0.9,
    }
    event = DocumentReceived(document_id="D-1", text=f"Invoice R-17 {answer_marker(answer)}")
    llm = client(server)
    try:
        plain = await InvoiceExtractionAgent(llm).run(event)
        calibrated = await InvoiceExtractionAgent(llm, calibration=cal).run(event)
    finally:
        await llm.close()
    assert plain.issues == []
    assert plain.confidence.score == 0.9
    assert calibrated.confidence.score == round(cal.apply(plain.confidence), 6)
    assert calibrated.confidence.score < 0.85
    assert calibrated.confidence.method.startswith("calibrated invoice_extraction.v3 v1 (isotonic")


def test_an_agent_refuses_another_prompts_calibration(cubic_calibration: Calibration) -> None:
    llm = LLMClient(LLMConfig(model="fault"))
    with pytest.raises(ConfigError, match="fitted for prompt 'ticket_triage.v3'"):
        TicketTriageAgent(llm, "ticket_triage.v2", calibration=cubic_calibration)
    with pytest.raises(ConfigError, match="not 'invoice_extraction.v3'"):
        InvoiceExtractionAgent(llm, calibration=cubic_calibration)
