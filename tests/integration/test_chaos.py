"""The small chaos run inside ``make test`` (``make chaos`` is the full one).

150 events through a worker and an executor on a broker, Redis and sinks of the run's own, while
the worker or executor is SIGKILLed twice, Redis is restarted once and the broker once, and 10%
of LLM calls fail. Every input must end in exactly one lane and every effect the auto lanes ask
for must be at its sink exactly once (counted in the ledger table, the webhook receiver's
requests and the SMTP server's messages).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.chaos import parser, run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
async def test_small_chaos_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    if not (ROOT / ".local" / "kafka" / "libs" / ".resolved-from").exists():
        pytest.skip("needs the Kafka jars `make up` resolves")
    args = parser().parse_args(
        ["--events", "150", "--rate", "6", "--kills", "2", "--settle-s", "180",
         "--quiet-s", "5", "--seed", "3", "--state", str(tmp_path)]
    )  # fmt: skip
    report = await run(args)
    print(report.table())
    assert len(report.kills) == 2
    assert report.restarts.get("redis") == 1
    assert report.restarts.get("kafka") == 1
    assert report.missing_in_lanes == 0, report.table()
    assert report.in_two_lanes == 0, report.table()
    assert sum(report.lanes.values()) == 150
    for sink, e in report.effects.items():
        assert e["expected"] > 0, sink
        assert (e["lost"], e["duplicates"]) == (0, 0), report.table()
    assert report.effect_statuses.get("unknown", 0) == 0
