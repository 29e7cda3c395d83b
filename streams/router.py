"""The confidence router: a pure function from a result's confidence to a lane and a reason.

Pure so that a table of cases tests it completely and replays can re-route old results under a
new policy without calling a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

ResultLane = Literal["auto", "review"]


@dataclass(frozen=True)
class Decision:
    """A lane and why: ``reason`` is what the record carries, ``reasons`` each cause alone."""

    lane: ResultLane
    reason: str
    reasons: tuple[str, ...] = ()


def route(
    confidence: float,
    threshold: float,
    *,
    requires_human: bool = False,
    issues: Sequence[str] = (),
) -> Decision:
    """Auto only when confidence clears the threshold; anything doubtful goes to a person.

    A NaN or out-of-range confidence is itself a reason for review, never for auto. So are
    business-rule issues left after every re-ask, and an agent's judgement that a person must
    handle it: those override any confidence.
    """
    if issues:
        return Decision("review", f"validation issues: {'; '.join(issues)}"[:500])
    if requires_human:
        return Decision("review", "agent says a person must handle it")
    if not 0.0 <= confidence <= 1.0:  # also catches NaN
        return Decision("review", f"confidence {confidence!r} outside [0, 1]")
    if confidence >= threshold:
        return Decision("auto", f"confidence {confidence:.3f} >= threshold {threshold:.3f}")
    return Decision("review", f"confidence {confidence:.3f} < threshold {threshold:.3f}")
