"""What the first-claim lookup costs: ms per effect with and without asking the target first.

A tool that can reconcile asks its target once before its first apply (:mod:`agents.effects`), so
a redelivery after the idempotency keys were lost finds the effect there instead of repeating it.
This runs ``--effects`` effects of each built-in tool, one after another, against the real sinks
(a webhook receiver and an SMTP server of its own, started by :mod:`agents.sinks` in a temporary
directory, and a SQLite ledger there) and the real Redis, once with the lookup and once without,
and prints the mean ms per effect both ways and the difference.
Run: ``make bench`` (or ``python -m benchmarks.effect_precheck --effects 500``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel

from agents.effects import run_effect
from agents.idempotency import IdempotencyStore
from agents.ledger import PostInvoice, PostInvoiceTool
from agents.notify import Acknowledge, AcknowledgeTool, RouteTicket, RouteTicketTool
from agents.tools import Tool
from streams.logconfig import configure
from streams.settings import Settings


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def sinks(state: Path) -> Iterator[tuple[int, int]]:
    """The webhook receiver and SMTP server on free ports; yields (http port, smtp port)."""
    http, smtp = _free_port(), _free_port()
    log = state / "sinks.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.sinks", "--state", str(state),
             "--http-port", str(http), "--smtp-port", str(smtp)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "sinks: webhook" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sinks did not start: {log.read_text()}")
            time.sleep(0.1)
        yield http, smtp
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def inputs(tool: Tool[Any], n: int, run: str) -> list[BaseModel]:
    """``n`` distinct inputs for ``tool`` (each its own effect)."""
    if isinstance(tool, PostInvoiceTool):
        return [
            PostInvoice(event_id=f"ev-{run}-{i}", document_id=f"DOC-{i}", vendor_name="Acme",
                        invoice_number=f"INV-{i}", issue_date=date(2026, 1, 5), currency="EUR",
                        total=Decimal("120.50"))
            for i in range(n)
        ]  # fmt: skip
    if isinstance(tool, RouteTicketTool):
        return [
            RouteTicket(event_id=f"ev-{run}-{i}", ticket_id=f"T-{i}", team="billing")
            for i in range(n)
        ]
    return [Acknowledge(event_id=f"ev-{run}-{i}", ticket_id=f"T-{i}") for i in range(n)]


async def per_effect_ms(
    store: IdempotencyStore, tool: Tool[Any], n: int, *, precheck: bool
) -> float:
    """Mean wall ms of ``n`` fresh effects of ``tool``, run one after another."""
    tool.reconciles = precheck
    run = uuid.uuid4().hex[:8]
    data = inputs(tool, n, run)
    await run_effect(store, tool, data[0], f"warm-{run}")  # connections, tables, caches
    began = time.perf_counter()
    for item in data:
        out = await run_effect(store, tool, item, getattr(item, "event_id", run))
        if out.status != "applied":
            raise RuntimeError(f"{tool.name}: {out.status} {out.error}")
    return (time.perf_counter() - began) * 1000 / n


async def run(effects: int) -> None:
    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="sluice-precheck-") as tmp:
        state = Path(tmp)
        with sinks(state) as (http, smtp):
            redis = aioredis.Redis.from_url(settings.redis_url)
            prefix = f"sluice:bench:precheck:{uuid.uuid4().hex[:8]}"
            store = IdempotencyStore(redis, prefix=prefix)
            tools: list[Tool[Any]] = [
                PostInvoiceTool(state / "ledger.db"),
                RouteTicketTool(f"http://127.0.0.1:{http}/hooks"),
                AcknowledgeTool("127.0.0.1", smtp, state / "mail.db"),
            ]
            print(f"first-claim lookup, {effects} effects per tool, one at a time (ms per effect)")
            print(f"{'tool':<22}{'without':>10}{'with':>10}{'lookup':>10}")
            try:
                for tool in tools:
                    without = await per_effect_ms(store, tool, effects, precheck=False)
                    with_ = await per_effect_ms(store, tool, effects, precheck=True)
                    print(f"{tool.name:<22}{without:>10.2f}{with_:>10.2f}{with_ - without:>+10.2f}")
            finally:
                keys = [k async for k in redis.scan_iter(f"{prefix}:*", count=1000)]
                if keys:
                    await redis.delete(*keys)
                await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.effect_precheck", description=__doc__)
    p.add_argument("--effects", type=int, default=300, help="effects per tool and way")
    args = p.parse_args(argv)
    configure("warning", "console")  # no tool.call lines between the results
    asyncio.run(run(args.effects))
    return 0


if __name__ == "__main__":
    sys.exit(main())
