"""The ``sluice`` command: worker, executor, review, topics, produce, consume, schemas, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from schemas.errors import ConfigError, SluiceError
from streams import logconfig
from streams.settings import Settings

if TYPE_CHECKING:
    import faust

log = structlog.get_logger(__name__)


def _check_redis(settings: Settings) -> None:
    import redis

    try:
        redis.Redis.from_url(settings.redis_url, socket_timeout=5).ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"Redis at {settings.redis_url} does not answer ({exc}); "
            "start it (make up) or set REDIS_URL"
        ) from exc


def build_worker(
    app: faust.App, settings: Settings, config: dict[str, Any], loop: asyncio.AbstractEventLoop
) -> faust.Worker:
    """faust's Worker for ``app``, logging through ``config`` at the configured level.

    Without its start-up spinner: at WARNING and above faust adds the spinner as a root handler
    and sets the root logger to DEBUG, so every library's debug and info call builds a record and
    the spinner's escape codes land in the log file.
    """
    import faust

    worker = faust.Worker(
        app, loglevel=settings.log_level, logging_config=config, loop=loop, override_logging=True
    )
    worker.spinner = None
    return worker


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams import compose
    from streams.app import create_app
    from streams.flow import select
    from streams.topics import ensure_topics

    config = logconfig.configure(settings.log_level, settings.log_format)
    specs = select(args.flow)
    _check_redis(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    codec = compose.codec(settings)
    log.info("codec", wire_format=codec.wire_format, registry=settings.schema_registry_url)
    flows, _llm = compose.flows(settings, specs)
    app = create_app(settings, flows, codec)
    names = [f.name for f in flows]
    log.info(
        "worker.starting",
        app_id=settings.app_id,
        flows=names,
        topics=settings.topics.for_flows(names),
        max_in_flight=settings.max_in_flight,
    )
    # runs until SIGTERM/SIGINT, then exits the process
    build_worker(app, settings, config, loop).execute_from_commandline()
    return 0


def cmd_executor(settings: Settings, args: argparse.Namespace) -> int:
    from streams import compose
    from streams.executor import create_executor_app
    from streams.flow import select
    from streams.topics import ensure_topics

    config = logconfig.configure(settings.log_level, settings.log_format)
    specs = [s for s in select(args.flow) if s.actions is not None]
    _check_redis(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    codec = compose.codec(settings)
    box = compose.toolbox(settings)
    app = create_executor_app(settings, specs, codec, box, compose.effect_store(settings))
    log.info(
        "executor.starting",
        app_id=f"{settings.app_id}-executor",
        flows=[s.name for s in specs],
        tools={name: sorted(tools) for name, tools in box.allowlists.items()},
        effects_topic=settings.topics.effects,
    )
    build_worker(app, settings, config, loop).execute_from_commandline()
    return 0


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from streams.topics import ensure_topics

    logconfig.configure(settings.log_level, settings.log_format)
    created = asyncio.run(ensure_topics(settings))
    for name in settings.topics.all():
        print(f"{name}\t{'created' if name in created else 'exists'}")
    return 0


def cmd_produce(settings: Settings, args: argparse.Namespace) -> int:
    from streams.produce import produce_lines

    logconfig.configure(settings.log_level, settings.log_format)
    source = open(args.file, "rb") if args.file != "-" else sys.stdin.buffer  # noqa: SIM115
    with source:
        lines = [line.rstrip(b"\r\n") for line in source if line.strip()]
    sent = asyncio.run(produce_lines(settings, args.topic, lines, key_field=args.key_field))
    print(f"produced {len(sent)} events to {args.topic}", file=sys.stderr)
    return 0


def cmd_consume(settings: Settings, args: argparse.Namespace) -> int:
    from streams.consume import consume

    logconfig.configure("warning", settings.log_format)
    asyncio.run(
        consume(
            settings,
            args.topic,
            sys.stdout,
            from_beginning=args.from_beginning,
            max_records=args.max,
            idle_timeout_s=args.idle_timeout,
        )
    )
    return 0


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from schemas.contract import incompatibilities

    problems = incompatibilities()
    for problem in problems:
        print(problem)
    print(
        "schemas: ok" if not problems else f"schemas: {len(problems)} problem(s)", file=sys.stderr
    )
    return 1 if problems else 0


def cmd_breaker(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice breaker open|close|disable|status``: the operator's switches, per flow."""
    import getpass

    from streams.compose import breaker_for
    from streams.flow import select

    logconfig.configure("warning", settings.log_format)
    flows = [spec.name for spec in select(args.flow)]
    if args.action != "status" and not args.flow:
        raise ConfigError("name the flow: --flow NAME (repeatable)")
    if args.action in ("open", "disable") and not (args.reason or "").strip():
        raise ConfigError('say why: --reason "..." (it is recorded with who and when)')

    async def run() -> None:
        for flow in flows:
            breaker = breaker_for(settings, flow)
            try:
                if args.action != "status":
                    state = {"open": "forced_open", "close": "closed", "disable": "disabled"}
                    await breaker.force(
                        state[args.action],  # type: ignore[arg-type]
                        by=args.by or getpass.getuser(),
                        reason=args.reason or "",
                    )
                print(json.dumps({"flow": flow, **await breaker.status()}))
            finally:
                await breaker.redis.aclose()

    asyncio.run(run())
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    logconfig.configure("warning", settings.log_format)
    return asyncio.run(run_demo(settings, timeout_s=args.timeout, state_dir=Path(args.state_dir)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("worker", help="run the stream worker (faust) until interrupted")
    w.add_argument(
        "--flow",
        action="append",
        help="a registered flow to run (repeatable; default: all), or package.module:SPEC",
    )
    x = sub.add_parser(
        "executor", help="run the executor: the auto lanes' actions as exactly-once effects"
    )
    x.add_argument("--flow", action="append", help="a flow whose effects to run (default: all)")
    sub.add_parser("topics", help="create every configured topic that is missing")
    p = sub.add_parser("produce", help="produce JSON lines from a file or stdin to a topic")
    p.add_argument("topic")
    p.add_argument("file", nargs="?", default="-")
    p.add_argument("--key-field", default="ticket_id", help="JSON field used as the message key")
    c = sub.add_parser("consume", help="print a topic's records as JSON lines (decodes Avro)")
    c.add_argument("topic")
    c.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
    c.add_argument("--max", type=int, default=None, help="stop after N records")
    c.add_argument(
        "--idle-timeout", type=float, default=None, help="stop after S seconds without a record"
    )
    s = sub.add_parser("schemas", help="schema contracts")
    s.add_argument("action", choices=["check"], help="check drift and backward compatibility")
    b = sub.add_parser("breaker", help="circuit breakers: open (kill switch), close, status")
    b.add_argument("action", choices=["open", "close", "disable", "status"])
    b.add_argument("--flow", action="append", help="the flow (repeatable; status: default all)")
    b.add_argument("--reason", help="why (required for open and disable)")
    b.add_argument("--by", help="who (default: this user)")
    d = sub.add_parser("demo", help="run sample tickets through a worker and count the lanes")
    d.add_argument("--timeout", type=float, default=600.0)
    d.add_argument("--state-dir", default=".local")
    from streams.review.cli import add_parser as add_review
    from streams.review.cli import run as cmd_review

    add_review(sub)
    args = parser.parse_args(argv)
    commands = {
        "review": cmd_review,
        "breaker": cmd_breaker,
        "worker": cmd_worker,
        "executor": cmd_executor,
        "topics": cmd_topics,
        "produce": cmd_produce,
        "consume": cmd_consume,
        "schemas": cmd_schemas,
        "demo": cmd_demo,
    }
    try:
        return commands[args.command](Settings(), args)
    except SluiceError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
