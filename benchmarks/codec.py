"""Avro (our codec) vs JSON (pydantic) encode/decode throughput and size, per record type.

Prints measured ratios from one run on this machine; absolute numbers move with machine load, so
compare the ratios. Run: ``make bench`` (or ``python -m benchmarks.codec --seconds 1``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

from pydantic import BaseModel

from schemas import codec
from tests.records import SAMPLES


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn``, best of three timed slices."""
    best = 0.0
    for _ in range(3):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / 3:
            for _ in range(100):
                fn()
            n += 100
        best = max(best, n / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=1.5, help="time per measurement")
    args = parser.parse_args()
    print(
        f"{'record':<18}{'avro B':>7}{'json B':>7}{'enc avro/s':>12}{'enc json/s':>12}"
        f"{'enc ratio':>10}{'dec avro/s':>12}{'dec json/s':>12}{'dec ratio':>10}"
    )
    for record in SAMPLES:
        model: type[BaseModel] = type(record)
        avro_bytes, json_bytes = codec.encode(record), record.model_dump_json().encode()
        assert codec.decode(avro_bytes) == model.model_validate_json(json_bytes) == record
        enc_a = rate(partial(codec.encode, record), args.seconds)
        enc_j = rate(record.model_dump_json, args.seconds)
        dec_a = rate(partial(codec.decode, avro_bytes), args.seconds)
        dec_j = rate(partial(model.model_validate_json, json_bytes), args.seconds)
        print(
            f"{model.__name__:<18}{len(avro_bytes):>7}{len(json_bytes):>7}{enc_a:>12,.0f}"
            f"{enc_j:>12,.0f}{enc_a / enc_j:>10.2f}{dec_a:>12,.0f}{dec_j:>12,.0f}"
            f"{dec_a / dec_j:>10.2f}"
        )
    print("ratio = avro rate / json rate (>1: Avro faster); both include pydantic model handling")


if __name__ == "__main__":
    main()
