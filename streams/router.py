"""The confidence router: a pure function from a result's confidence to a lane and a reason.

Pure so that a table of cases tests it completely and replays can re-route old results under a
new policy without calling a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ResultLane = Literal["auto", "review"]


@dataclass(frozen=True)
class Decision:
    lane: ResultLane
    reason: str


def route(confidence: float, threshold: float) -> Decision:
    """Auto only when confidence clears the threshold; anything doubtful goes to a person.

    A NaN or out-of-range confidence is itself a reason for review, never for auto.
    """
    if not 0.0 <= confidence <= 1.0:  # also catches NaN
        return Decision("review", f"confidence {confidence!r} outside [0, 1]")
    if confidence >= threshold:
        return Decision("auto", f"confidence {confidence:.3f} >= threshold {threshold:.3f}")
    return Decision("review", f"confidence {confidence:.3f} < threshold {threshold:.3f}")
