"""Confidence that is measured, not only self-rated.

A model's own "confidence: 0.9" is a guess it was asked to write; small models print the same
value for everything. Token log-probabilities are what the model actually computed. For a choice
field (category, priority, ...) we read the probability of each allowed label at the first token
of the value and renormalise over the labels, so probability mass on tokens that are not labels
(whitespace, other words) does not count against the answer. For free-text and number fields we
use the geometric mean probability of the value's tokens.

The routed score combines the signals (see :func:`combine`); every component is kept in the output
record so evals can judge each one on its own. Where a calibration was fitted for the prompt and
model (:mod:`agents.calibration`), the routed score is its calibrated probability instead.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from schemas.records import Confidence

if TYPE_CHECKING:
    from agents.calibration import Calibration

#: Weight of the measured (logprob) signal against the self-rated one when both exist.
LOGPROB_WEIGHT = 0.7
#: Multiplier per re-ask the answer needed before it validated.
REASK_FACTOR = 0.75
#: Multiplier when business-rule issues remain after every re-ask.
ISSUES_FACTOR = 0.5

METHOD = (
    f"score = validation * ({LOGPROB_WEIGHT} * logprob + {1 - LOGPROB_WEIGHT:.1f} * self_rated), "
    f"or validation * self_rated without logprobs; validation = {REASK_FACTOR}^reasks, "
    f"* {ISSUES_FACTOR} if issues remain"
)
#: How ``Confidence.method`` starts when the score is a calibration's output, not :data:`METHOD`.
CALIBRATED = "calibrated "


@dataclass(frozen=True)
class TokenProb:
    """One generated token, its log-probability and the provider's top alternatives."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


def _offsets(tokens: Sequence[TokenProb]) -> list[int]:
    starts, pos = [], 0
    for t in tokens:
        starts.append(pos)
        pos += len(t.token)
    return starts


def _value_start(raw: str, field: str) -> int | None:
    match = re.search(rf'"{re.escape(field)}"\s*:\s*', raw)
    return match.end() if match else None


def label_probability(
    tokens: Sequence[TokenProb], field: str, chosen: str, labels: Sequence[str]
) -> float | None:
    """P(``chosen``) among ``labels`` at the first token of ``field``'s string value.

    Positions are found in the generated token text itself, not in ``message.content``: servers
    may tidy the content (llama.cpp strips a ```json fence) while the tokens keep it. None when the
    field is not in the tokens or no alternative names a label.
    """
    raw = "".join(t.token for t in tokens)
    start = _value_start(raw, field)
    if start is None:
        return None
    if raw[start : start + 1] == '"':
        start += 1
    for t, pos in zip(tokens, _offsets(tokens), strict=True):
        if pos + len(t.token) > start:
            token, skip = t, start - pos
            break
    else:
        return None
    mass = dict.fromkeys(labels, 0.0)
    alternatives = token.top or ((token.token, token.logprob),)
    for text, logprob in alternatives:
        if text[:skip] != token.token[:skip]:
            continue  # an alternative that does not even start the value the same way
        piece = text[skip:].split('"', 1)[0]
        if not piece:
            continue
        matching = [label for label in labels if label.startswith(piece) or piece == label]
        for label in matching:
            mass[label] += math.exp(logprob) / len(matching)
    total = sum(mass.values())
    if total == 0.0 or chosen not in mass:
        return None
    return mass[chosen] / total


def value_probability(tokens: Sequence[TokenProb], field: str) -> float | None:
    """Geometric-mean token probability of ``field``'s JSON value (string, number, ...)."""
    raw = "".join(t.token for t in tokens)
    start = _value_start(raw, field)
    if start is None:
        return None
    try:
        _, end = json.JSONDecoder().raw_decode(raw, start)
    except json.JSONDecodeError:
        return None
    logprobs = [
        t.logprob
        for t, pos in zip(tokens, _offsets(tokens), strict=True)
        if pos < end and pos + len(t.token) > start
    ]
    if not logprobs:
        return None
    return math.exp(sum(logprobs) / len(logprobs))


def clamp(value: float) -> float:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0


def base_score(self_rated: float, logprob: float | None, validation: float) -> float:
    """The hand-weighted score of :data:`METHOD` from its signals, rounded as it is recorded.

    Kept apart from :func:`combine` so a calibrated record's raw score can be recomputed from the
    signals it keeps (:func:`agents.calibration.raw_score`).
    """
    rated = clamp(self_rated)
    base = (
        rated if logprob is None else LOGPROB_WEIGHT * clamp(logprob) + (1 - LOGPROB_WEIGHT) * rated
    )
    return round(clamp(validation * base), 6)


def self_rated_only(confidence: Confidence) -> bool:
    """Whether the score rests on the model's own rating alone: :data:`METHOD` with no logprob
    and no calibration over it. Such a score is a number the model was asked to write (a prompt
    injection writes 0.99), so the stream never auto-executes on it (:mod:`streams.pipeline`)."""
    return confidence.logprob is None and confidence.method == METHOD


def combine(
    self_rated: float,
    logprob: float | None,
    *,
    reasks: int,
    issues: int = 0,
    calibration: Calibration | None = None,
) -> Confidence:
    """One routed score from the signals; see :data:`METHOD`.

    With a ``calibration``, ``score`` is its probability that the answer is right and ``method``
    names it (``calibrated <prompt> v<N> (...) over <METHOD>``); the signals stay raw, so the
    record can still be judged, or fitted on again, signal by signal.
    """
    validation = REASK_FACTOR**reasks * (ISSUES_FACTOR if issues else 1.0)
    raw = Confidence(
        score=base_score(self_rated, logprob, validation),
        self_rated=clamp(self_rated),
        logprob=None if logprob is None else round(clamp(logprob), 6),
        validation=round(validation, 6),
        method=METHOD,
    )
    if calibration is None:
        return raw
    return raw.model_copy(
        update={
            "score": round(calibration.apply(raw), 6),
            "method": f"{CALIBRATED}{calibration.describe()} over {METHOD}",
        }
    )
