"""The ``sluice`` command: worker, executor, review, topics, produce, consume, trace, schemas,
demo, replay, eval, calibrate."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from schemas.errors import ConfigError, SluiceError
from streams import logconfig, telemetry
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
    telemetry.install(settings, "sluice-worker")
    specs = select(args.flow)
    _check_redis(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    codec = compose.codec(settings)
    log.info("codec", wire_format=codec.wire_format, registry=settings.schema_registry_url)
    flows, llm = compose.flows(settings, specs)
    app = create_app(settings, flows, codec)
    names = [f.name for f in flows]
    inputs = [settings.topics.of(name, "received") for name in names]

    telemetry.attach(app, settings, settings.metrics_port, settings.app_id, inputs, llm)

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
    telemetry.install(settings, "sluice-executor")
    specs = [s for s in select(args.flow) if s.actions is not None]
    _check_redis(settings)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(settings))
    codec = compose.codec(settings)
    box = compose.toolbox(settings)
    app = create_executor_app(
        settings, specs, codec, box, compose.effect_store(settings), compose.tool_switches(settings)
    )
    group = f"{settings.app_id}-executor"
    inputs = [settings.topics.of(s.name, r) for s in specs for r in ("auto", "reviewed")]

    telemetry.attach(app, settings, settings.executor_metrics_port, group, inputs)

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


def _audited(settings: Settings, action: str, target: str, by: str | None, reason: str | None,
             detail: dict[str, Any] | None = None) -> int:  # fmt: skip
    """Audit an operator action that was taken; 1 (with the reason on stderr) if the audit
    record could not be written."""
    from streams.audit import AuditUnwritten, audit, operator

    try:
        asyncio.run(audit(settings, action, target, by=operator(by), reason=reason or "",
                          detail=detail))  # fmt: skip
    except AuditUnwritten as exc:
        print(f"sluice: warning: {exc}", file=sys.stderr)
        return 1
    return 0


def _need_reason(reason: str | None, flag: str = "--reason") -> None:
    if not (reason or "").strip():
        raise ConfigError(f'say why: {flag} "..." (it is recorded with who and when)')


def cmd_breaker(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice breaker open|close|disable|status``: the operator's switches, per flow or LLM
    endpoint; every change audited."""
    from streams.audit import operator
    from streams.compose import breaker_for, endpoint_breaker_name
    from streams.flow import select

    logconfig.configure("warning", settings.log_format)
    names = [spec.name for spec in select(args.flow)] if args.flow or not args.endpoint else []
    names += [endpoint_breaker_name(e) for e in args.endpoint or []]
    if args.action == "status" and not args.flow and not args.endpoint:
        names.append(endpoint_breaker_name(None, settings))
    if args.action != "status" and not (args.flow or args.endpoint):
        raise ConfigError("name the breaker: --flow NAME or --endpoint URL (repeatable)")
    if args.action in ("open", "disable"):
        _need_reason(args.reason)
    state = {"open": "forced_open", "close": "closed", "disable": "disabled"}

    async def run() -> None:
        for name in names:
            breaker = breaker_for(settings, name)
            try:
                if args.action != "status":
                    await breaker.force(
                        state[args.action],  # type: ignore[arg-type]
                        by=operator(args.by),
                        reason=args.reason or "",
                    )
                print(json.dumps({"breaker": name, **await breaker.status()}))
            finally:
                await breaker.redis.aclose()

    asyncio.run(run())
    if args.action == "status":
        return 0
    rc = 0
    for name in names:
        rc |= _audited(settings, f"breaker.{args.action}", f"breaker:{name}", args.by, args.reason)
    return rc


def cmd_tool(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice tool off|on|status``: hold one tool's effects in every executor, or release them."""
    from streams.audit import operator
    from streams.compose import tool_switches

    logconfig.configure("warning", settings.log_format)
    if args.action != "status":
        if not args.tool:
            raise ConfigError("name the tool: --tool NAME (repeatable)")
        if args.action == "off":
            _need_reason(args.reason)

    async def run() -> dict[str, Any]:
        switches = tool_switches(settings)
        try:
            for tool in args.tool or []:
                if args.action != "status":
                    await switches.set(tool, on=args.action == "on", by=operator(args.by),
                                       reason=args.reason or "")  # fmt: skip
            return await switches.off()
        finally:
            await switches.redis.aclose()

    off = asyncio.run(run())
    print(json.dumps({"off": off}))
    if args.action == "status":
        return 0
    rc = 0
    for tool in args.tool:
        rc |= _audited(settings, f"tool.{args.action}", f"tool:{tool}", args.by, args.reason)
    return rc


def _when(text: str | None) -> Any:
    """An ISO time (UTC if no zone) or an age like ``90m``, ``2h``, ``7d``; None passes."""
    from datetime import UTC, datetime, timedelta

    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
        return datetime.now(UTC) - timedelta(seconds=float(text[:-1]) * units[text[-1]])
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{text!r}: give an ISO time or an age such as 30m, 2h, 7d") from exc
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def cmd_dlq(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice dlq list|show|redrive``: read dead letters and send them back to their input."""
    from streams import compose
    from streams.dlq import Filter, Redriver, read_letters

    logconfig.configure("warning", settings.log_format)
    wanted = Filter(
        flows=frozenset(args.flow or ()),
        reasons=frozenset(args.reason or ()),
        event_ids=frozenset(args.event_id or ()),
        since=_when(args.since),
        until=_when(args.until),
    )
    if args.action == "redrive":
        if wanted.empty and not args.all:
            raise ConfigError("choose what to redrive (--flow, --reason, --event-id, --since) or "
                              "say --all")  # fmt: skip
        if not args.dry_run:
            _need_reason(args.why, "--why")
    codec = compose.codec(settings, register=False)
    letters = asyncio.run(read_letters(settings, codec, wanted))
    redriver = Redriver(settings, max_attempts=args.max_attempts, force=args.force)
    if args.action == "list":
        done = asyncio.run(redriver.redriven(letters))
        for letter in letters[-args.limit :] if args.limit else letters:
            line = letter.summary()
            line["redriven"] = letter.coordinates in done
            print(json.dumps(line, default=str))
        print(f"{len(letters)} dead letter(s)", file=sys.stderr)
        return 0
    if args.action == "show":
        for letter in letters[-args.limit :] if args.limit else letters:
            print(json.dumps(letter.detail(), default=str, indent=2))
        return 0 if letters else 1
    report = asyncio.run(redriver.run(letters, dry_run=args.dry_run))
    for coordinates, status in report.statuses.items():
        print(json.dumps({"deadletter": coordinates, "status": status,
                          "sent_to": report.sent.get(coordinates)}))  # fmt: skip
    counts = report.counts()
    print(json.dumps({"matched": len(letters), **counts}), file=sys.stderr)
    if report.error:
        print(f"sluice: error: sending stopped: {report.error}", file=sys.stderr)
    if args.dry_run:
        return 0
    target = ",".join(sorted(wanted.flows)) or "all flows"
    chosen = {
        "flows": sorted(wanted.flows),
        "reasons": sorted(wanted.reasons),
        "event_ids": len(wanted.event_ids),
        "since": args.since,
        "until": args.until,
    }
    detail = {"filter": chosen, "matched": len(letters), "counts": counts}
    audited = _audited(settings, "dlq.redrive", f"dlq:{target}", args.by, args.why, detail)
    return 1 if report.error else audited


def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice trace EVENT_ID``: one event's story from the topics; 1 when none names it."""
    from streams import compose
    from streams.flow import select
    from streams.trace import render_text, trace

    logconfig.configure("warning", settings.log_format)
    flows = [spec.name for spec in select(args.flow)] if args.flow else None
    codec = compose.codec(settings, register=False)
    found = asyncio.run(trace(settings, codec, args.event_id, flows=flows, since=_when(args.since)))
    if args.json:
        print(json.dumps(found.as_json(), default=str, indent=2))
    elif found.found:
        print(render_text(found, full=args.full), end="")
    if not found.found:
        since = f" since {args.since}" if args.since else ""
        where = ", ".join(found.topics) or "no topic (none exists)"
        missing = f"; missing: {', '.join(found.missing_topics)}" if found.missing_topics else ""
        print(f"sluice: no record of event {args.event_id!r}{since} on {where} "
              f"({found.scanned} records scanned{missing})", file=sys.stderr)  # fmt: skip
        return 1
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
    b.add_argument(
        "--endpoint", action="append", help="an LLM endpoint's breaker: base URL or 'local'"
    )
    b.add_argument("--reason", help="why (required for open and disable)")
    b.add_argument("--by", help="who (default: this user)")
    t = sub.add_parser("tool", help="per-tool switches: hold one tool's effects, or release them")
    t.add_argument("action", choices=["off", "on", "status"])
    t.add_argument("--tool", action="append", help="the tool (repeatable)")
    t.add_argument("--reason", help="why (required for off)")
    t.add_argument("--by", help="who (default: this user)")
    q = sub.add_parser("dlq", help="dead letters: list, show, redrive to their input topics")
    q.add_argument("action", choices=["list", "show", "redrive"])
    q.add_argument("--flow", action="append", help="only this flow's (repeatable)")
    q.add_argument("--reason", action="append", help="only this reason (repeatable)")
    q.add_argument("--event-id", action="append", help="only this event (repeatable)")
    q.add_argument("--since", help="failed at or after: ISO time, or an age such as 2h")
    q.add_argument("--until", help="failed before: ISO time, or an age")
    q.add_argument("--limit", type=int, default=None, help="list/show: only the last N")
    q.add_argument("--dry-run", action="store_true", help="redrive: say what would be sent")
    q.add_argument("--all", action="store_true", help="redrive: every dead letter (no filter)")
    q.add_argument("--force", action="store_true", help="redrive even if the breaker is open")
    q.add_argument("--max-attempts", type=int, default=None,
                   help="redrives per event (default SLUICE_REDRIVE_MAX_ATTEMPTS)")  # fmt: skip
    q.add_argument("--why", help="redrive: why (recorded in the audit trail)")
    q.add_argument("--by", help="who (default: this user)")
    r = sub.add_parser("trace", help="one event's whole story, read back from the topics")
    r.add_argument("event_id", help="the event id (the sluice.event_id header of its records)")
    r.add_argument("--flow", action="append", help="only this flow's topics (repeatable)")
    r.add_argument("--since", help="only records written at or after: ISO time, or an age (2h)")
    r.add_argument("--json", action="store_true", help="machine-readable; values never cut")
    r.add_argument("--full", action="store_true", help="print values whole (default: cut at 2 KB)")
    d = sub.add_parser("demo", help="run sample tickets through a worker and count the lanes")
    d.add_argument("--timeout", type=float, default=600.0)
    d.add_argument("--state-dir", default=".local")
    from streams.review.cli import add_parser as add_review
    from streams.review.cli import run as cmd_review

    add_review(sub)
    from streams.evalcli import add_parsers as add_eval
    from streams.evalcli import cmd_calibrate, cmd_eval, cmd_replay

    add_eval(sub)
    args = parser.parse_args(argv)
    commands = {
        "review": cmd_review,
        "breaker": cmd_breaker,
        "tool": cmd_tool,
        "dlq": cmd_dlq,
        "trace": cmd_trace,
        "worker": cmd_worker,
        "executor": cmd_executor,
        "topics": cmd_topics,
        "produce": cmd_produce,
        "consume": cmd_consume,
        "schemas": cmd_schemas,
        "demo": cmd_demo,
        "replay": cmd_replay,
        "eval": cmd_eval,
        "calibrate": cmd_calibrate,
    }
    try:
        return commands[args.command](Settings().register_secrets(), args)
    except SluiceError as exc:
        print(f"sluice: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
