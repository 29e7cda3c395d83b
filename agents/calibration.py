"""Calibration: turn the routed score into the probability that the answer is right.

:func:`agents.confidence.combine` weighs its signals by hand, so its 0.8 means "fairly sure", not
"right 80 % of the time"; a threshold set on it is a guess about a number nobody measured. A
calibration is a small map, fitted on answers whose correctness is known (a golden set, or results
people reviewed), from the signals to that probability. Once the score *is* a probability, the
router's threshold reads as the precision the auto lane should have, and evals can check it.

Two methods, both pure Python (a calibration set is tens to thousands of rows):

- ``logistic`` — L2-regularised logistic regression on a few features of the signals
  (:data:`FEATURES`). Smooth and strictly monotone in the score, so the ranking of answers is kept;
  it can also learn that, say, a re-asked answer is worse than its score says.
- ``isotonic`` — pool-adjacent-violators on the score alone: any monotone shape, no assumption
  about it, but it needs more rows and flattens the ranking inside each step.

A calibration belongs to one prompt version and one model (a new prompt or a new model answers
differently) and lives next to the prompt, ``agents/prompts/<version>.calibration.json``, as
indented JSON so a refit is a reviewable diff. It is fitted on the *raw* score: a record whose
score was already calibrated has its raw score recomputed from the signals it keeps
(:func:`raw_score`), so a refit on reviewed records does not calibrate a calibration.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import structlog

from agents.confidence import CALIBRATED, base_score
from schemas.errors import ConfigError
from schemas.records import Confidence

log = structlog.get_logger(__name__)

FORMAT = "sluice.calibration/1"
"""The file format this code reads and writes; any other is refused, never guessed at."""
Method = Literal["logistic", "isotonic"]
METHODS: tuple[Method, ...] = ("logistic", "isotonic")
ANY_MODEL = "*"
"""``model`` of a calibration that applies whatever the model (e.g. fitted on a mix)."""
MIN_ROWS = 20
"""Fewer labelled rows than this and a fit is noise: :func:`fit` refuses."""
FEATURES: tuple[str, ...] = (
    "score",
    "logit_score",
    "self_rated",
    "logprob",
    "has_logprob",
    "log_validation",
)
"""The logistic method's inputs, from one :class:`~schemas.records.Confidence`.

``score`` is the raw combined score and ``logit_score`` its log-odds: a map linear in log-odds
covers the usual over- and under-confidence (Platt / temperature scaling), the linear term bends it
where the model is wrong in one region only. ``logprob`` is 0 when the provider gave none, with
``has_logprob`` saying so, so "no measurement" is not read as "measured zero". ``log_validation``
is the log of the re-ask / issues factor, so each re-ask costs the same in log-odds.
"""
PROB_CLIP = 1e-3
"""Probabilities are clipped to [PROB_CLIP, 1 - PROB_CLIP] before a log-odds (about ±6.9), so a
score of exactly 0 or 1 gives a finite feature that cannot dominate the fit."""
VALIDATION_FLOOR = 1e-3
"""The validation factor's floor before its log (it is 0.75^reasks × 0.5, never 0 in practice)."""
L2 = 1.0
"""Ridge penalty on the standardised weights, about one pseudo-observation's worth: negligible on
a real calibration set, but it keeps the weights finite when the data are separable (a perfect
score would otherwise push them to infinity) and splits weight between collinear features."""
_MAX_ITERATIONS = 100
_TOLERANCE = 1e-10
_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_WARNED: set[tuple[str, str, str]] = set()
"""(prompt version, calibrated model, model in use) already warned about: once per process."""


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def _logit(p: float) -> float:
    p = min(1.0 - PROB_CLIP, max(PROB_CLIP, p))
    return math.log(p / (1.0 - p))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _softplus(z: float) -> float:
    """log(1 + e^z) without overflow."""
    return z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))


def raw_score(confidence: Confidence) -> float:
    """The hand-weighted score of ``confidence``, before any calibration.

    A calibrated record keeps its raw signals, so its raw score is recomputed from them; a fit or an
    :meth:`Calibration.apply` must see the same kind of number the calibration was fitted on.
    """
    if confidence.method.startswith(CALIBRATED):
        return base_score(confidence.self_rated, confidence.logprob, confidence.validation)
    return _unit(confidence.score)


def features(confidence: Confidence) -> list[float]:
    """The :data:`FEATURES` of one confidence, in that order; every value finite."""
    score = raw_score(confidence)
    logprob = confidence.logprob
    return [
        score,
        _logit(score),
        _unit(confidence.self_rated),
        0.0 if logprob is None else _unit(logprob),
        0.0 if logprob is None else 1.0,
        math.log(max(VALIDATION_FLOOR, _unit(confidence.validation))),
    ]


# --- the calibration record ---


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"calibration {what} must be a finite number, not {value!r}")
    return float(value)


def _numbers(value: Any, what: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"calibration {what} must be a non-empty list of numbers")
    return [_number(v, what) for v in value]


def _checked_params(method: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` normalised (lists, floats, weights in :data:`FEATURES` order), or ConfigError."""
    if not isinstance(params, Mapping):
        raise ConfigError("calibration params must be an object")
    if method == "logistic":
        if set(params) != {"bias", "weights"} or not isinstance(params["weights"], Mapping):
            raise ConfigError('logistic calibration params must be {"bias": .., "weights": {..}}')
        unknown = sorted(set(params["weights"]) - set(FEATURES))
        if unknown:
            raise ConfigError(f"logistic calibration names unknown features {unknown}")
        weights = params["weights"]
        return {
            "bias": _number(params["bias"], "bias"),
            "weights": {f: _number(weights.get(f, 0.0), f"weight {f}") for f in FEATURES},
        }
    if method == "isotonic":
        if set(params) != {"thresholds", "values"}:
            raise ConfigError(
                'isotonic calibration params must be {"thresholds": [..], "values": [..]}'
            )
        thresholds = _numbers(params["thresholds"], "thresholds")
        values = _numbers(params["values"], "values")
        if len(thresholds) != len(values):
            raise ConfigError("isotonic calibration needs as many values as thresholds")
        if any(b <= a for a, b in zip(thresholds, thresholds[1:], strict=False)):
            raise ConfigError("isotonic calibration thresholds must be strictly increasing")
        if any(b < a for a, b in zip(values, values[1:], strict=False)):
            raise ConfigError("isotonic calibration values must be non-decreasing")
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ConfigError("isotonic calibration values must be probabilities in [0, 1]")
        return {"thresholds": thresholds, "values": values}
    raise ConfigError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


@dataclass(frozen=True)
class Calibration:
    """One fitted map from a flow's confidence signals to P(answer is right).

    Built by :func:`fit` or read by :meth:`from_json`; both check it, so a calibration that exists
    can be applied. ``version`` counts refits of one prompt's calibration, so a routed record's
    ``confidence_detail.method`` names exactly which map produced its score.
    """

    flow: str
    prompt_version: str
    model: str
    """The model the rows came from; :data:`ANY_MODEL` (``"*"``) applies to any."""
    method: Method
    params: dict[str, Any]
    """logistic: ``{"bias": b, "weights": {feature: w}}`` on raw :data:`FEATURES`; isotonic:
    ``{"thresholds": [score, ...], "values": [p, ...]}``, interpolated linearly in between."""
    version: int
    fitted_at: str
    """ISO 8601 time of the fit."""
    fitted_on: dict[str, Any]
    """``n`` rows, ``positives`` (right answers), ``origin`` (``golden``, ``reviewed``, ...) and
    ``source`` (which file or query)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """Whatever the fitter measured, e.g. cross-validated ``ece_before``, ``ece_after``,
    ``auroc``; not read by Sluice, kept so the file says how good it is."""
    format: str = FORMAT

    def __post_init__(self) -> None:
        if self.format != FORMAT:
            raise ConfigError(
                f"unknown calibration format {self.format!r}: this Sluice reads {FORMAT!r} only"
            )
        for name in ("flow", "prompt_version", "model", "fitted_at"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"calibration {name} must be a non-empty string")
        try:
            datetime.fromisoformat(self.fitted_at)
        except ValueError:
            raise ConfigError(f"calibration fitted_at {self.fitted_at!r} is not ISO 8601") from None
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise ConfigError(f"calibration version must be an integer >= 1, not {self.version!r}")
        if not isinstance(self.fitted_on, dict) or not isinstance(self.metrics, dict):
            raise ConfigError("calibration fitted_on and metrics must be objects")
        for key in ("n", "positives"):
            value = self.fitted_on.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"calibration fitted_on.{key} must be a count")
        if not isinstance(self.fitted_on.get("origin"), str):
            raise ConfigError("calibration fitted_on.origin must be a string")
        object.__setattr__(self, "params", _checked_params(self.method, self.params))

    def apply(self, confidence: Confidence) -> float:
        """The calibrated probability that the answer behind ``confidence`` is right, in [0, 1]."""
        if self.method == "logistic":
            weights = self.params["weights"]
            z = self.params["bias"] + sum(
                weights[f] * x for f, x in zip(FEATURES, features(confidence), strict=True)
            )
            return _unit(_sigmoid(z))
        thresholds, values = self.params["thresholds"], self.params["values"]
        return _unit(_interpolate(thresholds, values, raw_score(confidence)))

    def describe(self) -> str:
        """Which map this is, for ``Confidence.method``: e.g. ``ticket_triage.v3 v2 (logistic,
        fitted on 64 golden)``."""
        on = f"fitted on {self.fitted_on['n']} {self.fitted_on['origin']}"
        return f"{self.prompt_version} v{self.version} ({self.method}, {on})"

    def to_json(self) -> str:
        """Indented JSON in a fixed key order, so two fits of one prompt diff line by line."""
        known = ("n", "positives", "origin", "source")
        fitted_on = {k: self.fitted_on[k] for k in known if k in self.fitted_on}
        fitted_on |= {k: self.fitted_on[k] for k in sorted(self.fitted_on) if k not in known}
        document = {
            "format": self.format,
            "flow": self.flow,
            "prompt_version": self.prompt_version,
            "model": self.model,
            "method": self.method,
            "version": self.version,
            "fitted_at": self.fitted_at,
            "fitted_on": fitted_on,
            "metrics": {k: self.metrics[k] for k in sorted(self.metrics)},
            "params": self.params,
        }
        return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        """Parse and check a calibration file; anything malformed is a :class:`ConfigError`."""
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"calibration is not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ConfigError("calibration must be a JSON object")
        if document.get("format") != FORMAT:
            raise ConfigError(
                f"unknown calibration format {document.get('format')!r}: "
                f"this Sluice reads {FORMAT!r} only"
            )
        required = ("flow", "prompt_version", "model", "method", "params", "version")
        missing = [k for k in (*required, "fitted_at", "fitted_on") if k not in document]
        unknown = sorted(set(document) - {*required, "fitted_at", "fitted_on", "metrics", "format"})
        if missing or unknown:
            raise ConfigError(f"calibration fields missing {missing}, unknown {unknown}")
        return cls(
            flow=document["flow"],
            prompt_version=document["prompt_version"],
            model=document["model"],
            method=document["method"],
            params=document["params"],
            version=document["version"],
            fitted_at=document["fitted_at"],
            fitted_on=document["fitted_on"],
            metrics=document.get("metrics", {}),
            format=document["format"],
        )


def _interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys), flat beyond the ends."""
    if x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# --- fitting ---

Row = tuple[Confidence, bool]


def _solve(a: list[list[float]], b: list[float]) -> list[float]:
    """a·x = b by Gaussian elimination with partial pivoting (a is small and positive definite)."""
    n = len(b)
    m = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            factor = m[r][col] / m[col][col]
            for c in range(col, n + 1):
                m[r][c] -= factor * m[col][c]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (m[r][n] - sum(m[r][c] * x[c] for c in range(r + 1, n))) / m[r][r]
    return x


def _fit_logistic(rows: Sequence[Row]) -> dict[str, Any]:
    """Ridge logistic regression by Newton's method with step halving (deterministic, and it
    converges: the penalty makes the objective strictly convex). Features are standardised so the
    penalty weighs each alike; the weights are then folded back onto the raw features."""
    xs = [features(c) for c, _ in rows]
    ys = [1.0 if ok else 0.0 for _, ok in rows]
    n = len(xs)
    means = [sum(x[j] for x in xs) / n for j in range(len(FEATURES))]
    sds = [math.sqrt(sum((x[j] - means[j]) ** 2 for x in xs) / n) for j in range(len(FEATURES))]
    used = [j for j, sd in enumerate(sds) if sd > 1e-9]  # a constant feature says nothing
    # Column 0 is the intercept (not penalised).
    z = [[1.0, *((x[j] - means[j]) / sds[j] for j in used)] for x in xs]
    p = len(z[0])

    def objective(beta: list[float]) -> float:
        loss = 0.0
        for row, y in zip(z, ys, strict=True):
            eta = sum(b * v for b, v in zip(beta, row, strict=True))
            loss += _softplus(eta) - y * eta
        return loss + 0.5 * L2 * sum(b * b for b in beta[1:])

    beta = [0.0] * p
    current = objective(beta)
    for _ in range(_MAX_ITERATIONS):
        grad = [0.0] * p
        hess = [[0.0] * p for _ in range(p)]
        for row, y in zip(z, ys, strict=True):
            mu = _sigmoid(sum(b * v for b, v in zip(beta, row, strict=True)))
            w = mu * (1.0 - mu)
            for i in range(p):
                grad[i] += (mu - y) * row[i]
                wi = w * row[i]
                for k in range(i + 1):
                    hess[i][k] += wi * row[k]
        for i in range(p):
            for k in range(i):
                hess[k][i] = hess[i][k]
            if i:
                grad[i] += L2 * beta[i]
                hess[i][i] += L2
            else:
                hess[i][i] += 1e-9  # the intercept is unpenalised; keep the system solvable
        step = _solve(hess, grad)
        slope = sum(g * s for g, s in zip(grad, step, strict=True))
        t = 1.0
        while True:
            candidate = [b - t * s for b, s in zip(beta, step, strict=True)]
            value = objective(candidate)
            if value <= current - 1e-4 * t * slope or t < 1e-8:
                break
            t /= 2
        moved = max(abs(t * s) for s in step)
        beta, current = candidate, value
        if moved < _TOLERANCE:
            break
    weights = dict.fromkeys(FEATURES, 0.0)
    bias = beta[0]
    for b, j in zip(beta[1:], used, strict=True):
        weights[FEATURES[j]] = b / sds[j]
        bias -= b * means[j] / sds[j]
    return {"bias": bias, "weights": weights}


def _fit_isotonic(rows: Sequence[Row]) -> dict[str, Any]:
    """Pool adjacent violators on the raw score: the non-decreasing step function closest (least
    squares) to the outcomes. Each pooled block becomes one or two points (its lowest and highest
    score) at the block's accuracy; :meth:`Calibration.apply` interpolates between them."""
    points_at: dict[float, list[float]] = {}  # equal scores are one point, never split
    for c, ok in rows:
        at = points_at.setdefault(raw_score(c), [0.0, 0.0])
        at[0] += ok
        at[1] += 1
    blocks: list[list[float]] = []  # [sum of outcomes, count, lowest score, highest score]
    for score in sorted(points_at):
        blocks.append([*points_at[score], score, score])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            last = blocks.pop()
            blocks[-1][0] += last[0]
            blocks[-1][1] += last[1]
            blocks[-1][3] = last[3]
    points: list[tuple[float, float]] = []
    for total, count, low, high in blocks:
        value = total / count
        points.append((low, value))
        if high > low:
            points.append((high, value))
    # Drop points inside a flat run: they change nothing and only lengthen the file.
    kept = [
        pt
        for i, pt in enumerate(points)
        if i in (0, len(points) - 1) or not points[i - 1][1] == pt[1] == points[i + 1][1]
    ]
    return {"thresholds": [x for x, _ in kept], "values": [y for _, y in kept]}


def _fit_params(method: str, rows: Sequence[Row]) -> dict[str, Any]:
    if method == "logistic":
        return _fit_logistic(rows)
    if method == "isotonic":
        return _fit_isotonic(rows)
    raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")


def _check_rows(method: str, rows: Sequence[Row]) -> int:
    """The number of right answers; ValueError when a fit on ``rows`` would be noise."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    positives = sum(1 for _, ok in rows if ok)
    if len(rows) < MIN_ROWS:
        raise ValueError(
            f"{len(rows)} labelled rows: a calibration needs at least {MIN_ROWS}, "
            "fewer is fitting noise"
        )
    if positives in (0, len(rows)):
        raise ValueError(
            f"all {len(rows)} rows are {'right' if positives else 'wrong'}: a calibration needs "
            "both right and wrong answers to tell them apart"
        )
    return positives


def fit(
    rows: Sequence[Row],
    *,
    method: Method,
    flow: str,
    prompt_version: str,
    model: str,
    origin: str,
    source: str = "",
    previous: Calibration | None = None,
    metrics: Mapping[str, Any] | None = None,
    fitted_at: datetime | None = None,
) -> Calibration:
    """Fit a calibration on ``(confidence, answer was right)`` rows.

    ``previous``, the calibration this one replaces, makes ``version`` previous.version + 1 (and
    must be for the same flow and prompt). Refuses (ValueError) fewer than :data:`MIN_ROWS` rows or
    rows of one class. ``metrics`` are stored as given: measure them with :func:`cross_validated`
    so they are not in-sample.
    """
    positives = _check_rows(method, rows)
    if previous is not None and (previous.flow, previous.prompt_version) != (flow, prompt_version):
        raise ValueError(
            f"previous calibration is for {previous.flow}/{previous.prompt_version}, "
            f"not {flow}/{prompt_version}: a new prompt version starts at version 1"
        )
    when = fitted_at or datetime.now(UTC)
    return Calibration(
        flow=flow,
        prompt_version=prompt_version,
        model=model,
        method=method,
        params=_fit_params(method, rows),
        version=1 if previous is None else previous.version + 1,
        fitted_at=when.isoformat(timespec="seconds"),
        fitted_on={"n": len(rows), "positives": positives, "origin": origin, "source": source},
        metrics=dict(metrics or {}),
    )


def cross_validated(
    rows: Sequence[Row], *, method: Method, folds: int = 5, seed: int = 0
) -> list[float]:
    """Each row's calibrated probability from a map fitted without its fold, in row order.

    In-sample figures flatter a calibration (isotonic can fit its own rows almost exactly); these
    are what it does on rows it has not seen. Folds are stratified (right and wrong answers dealt
    out in turn, after a shuffle seeded by ``seed``), so the same rows and seed give the same folds.
    """
    _check_rows(method, rows)
    if not 2 <= folds <= len(rows):
        raise ValueError(f"folds must be between 2 and the number of rows, not {folds}")
    rng = random.Random(seed)
    fold_of = [0] * len(rows)
    dealt = 0
    for label in (True, False):
        members = [i for i, (_, ok) in enumerate(rows) if ok is label]
        rng.shuffle(members)
        for i in members:
            fold_of[i] = dealt % folds
            dealt += 1
    out = [0.0] * len(rows)
    for k in range(folds):
        train = [row for row, f in zip(rows, fold_of, strict=True) if f != k]
        held = [i for i, f in enumerate(fold_of) if f == k]
        cal = Calibration(
            flow="-",
            prompt_version="-",
            model=ANY_MODEL,
            method=method,
            params=_fit_params(method, train),
            version=1,
            fitted_at="1970-01-01T00:00:00+00:00",
            fitted_on={
                "n": len(train),
                "positives": sum(1 for _, ok in train if ok),
                "origin": "cross-validation",
            },
        )
        for i in held:
            out[i] = cal.apply(rows[i][0])
    return out


def check_calibration(cal: Calibration | None, prompt_version: str) -> Calibration | None:
    """``cal`` if it may calibrate an agent running ``prompt_version``; ConfigError otherwise.

    A calibration of another prompt maps scores of answers that prompt no longer produces: using
    it would route on a probability of nothing, so it is a deployment error, not a fallback. (The
    model is checked where calibrations are chosen, :func:`load_calibration`: a local model's name
    is only known once its server has started.)
    """
    if cal is not None and cal.prompt_version != prompt_version:
        raise ConfigError(
            f"calibration v{cal.version} was fitted for prompt {cal.prompt_version!r}, "
            f"not {prompt_version!r}"
        )
    return cal


# --- storage, next to the prompt ---


def _file_name(prompt_version: str) -> str:
    if not _FILE_NAME.fullmatch(prompt_version):
        raise ConfigError(f"prompt version {prompt_version!r} cannot name a calibration file")
    return f"{prompt_version}.calibration.json"


def calibration_path(prompt_version: str, directory: Path | None = None) -> Path:
    """Where ``prompt_version``'s calibration lives: ``agents/prompts/<version>.calibration.json``
    (or in ``directory``)."""
    folder = directory if directory is not None else Path(__file__).parent / "prompts"
    return folder / _file_name(prompt_version)


def load_calibration(
    prompt_version: str, model: str, *, directory: Path | None = None
) -> Calibration | None:
    """The calibration shipped for ``prompt_version`` if it fits ``model``, else None.

    None when there is no file: the flow routes on the hand-weighted score. A file for another
    model is not used either — a calibration says how *that* model's scores relate to its
    correctness — and a ``calibration.model_mismatch`` warning says so, once per process. A file
    that does not parse, or names another prompt version, is a :class:`ConfigError`.
    """
    name = _file_name(prompt_version)
    resource: Traversable = (
        resources.files("agents").joinpath("prompts", name)
        if directory is None
        else Path(directory) / name
    )
    if not resource.is_file():
        return None
    cal = Calibration.from_json(resource.read_text("utf-8"))
    if cal.prompt_version != prompt_version:
        raise ConfigError(f"{name} holds the calibration of {cal.prompt_version!r}")
    if cal.model not in (ANY_MODEL, model):
        key = (prompt_version, cal.model, model)
        if key not in _WARNED:
            _WARNED.add(key)
            log.warning(
                "calibration.model_mismatch",
                prompt_version=prompt_version,
                calibrated_for=cal.model,
                model=model,
                version=cal.version,
            )
        return None
    return cal


def save_calibration(cal: Calibration, directory: Path | None = None) -> Path:
    """Write ``cal`` next to its prompt (or into ``directory``); returns the path. Written to a
    temporary file and renamed, so a reader never sees half a calibration."""
    path = calibration_path(cal.prompt_version, directory)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(cal.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
