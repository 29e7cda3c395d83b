"""``sluice replay``, ``sluice eval`` and ``sluice calibrate``: is a model or prompt change safe?

Replay re-runs real traffic through a candidate as a dry run (:mod:`streams.replay`); eval scores
the rows against golden sets and reviewers' decisions and gates regressions (:mod:`evals`);
calibrate fits the flow's confidence to what turned out right, next to its prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from schemas.errors import ConfigError
from streams import logconfig
from streams.settings import Settings


def add_parsers(sub: Any) -> None:
    """The three subcommands, on the ``sluice`` parser's subparsers."""
    r = sub.add_parser(
        "replay",
        help="re-run a topic range through a candidate model or prompt (a dry run: writes only "
        "to a file or an eval topic)",
    )
    r.add_argument("topic", help="an input, lane, reviewed or dead-letter topic")
    r.add_argument("--flow", action="append", help="only this flow (repeatable; default: all)")
    r.add_argument("--partition", type=int, action="append", help="only this partition")
    r.add_argument("--from-offset", type=int, help="first offset of each partition")
    r.add_argument("--to-offset", type=int, help="end offset of each partition (exclusive)")
    r.add_argument("--since", help="records written at or after: ISO time, or an age (2h)")
    r.add_argument("--until", help="records written before: ISO time, or an age")
    r.add_argument("--limit", type=int, help="stop after N records (--resume goes on)")
    r.add_argument("--model", help="candidate model (default: the deployment's)")
    r.add_argument("--base-url", help="candidate OpenAI-compatible endpoint")
    r.add_argument("--api-key-env", help="environment variable holding the candidate's API key")
    r.add_argument(
        "--prompt-version",
        action="append",
        default=[],
        help="VERSION for every replayed flow, or FLOW=VERSION (repeatable)",
    )
    out = r.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="JSON Lines file to append rows to")
    out.add_argument("--to-topic", help="eval topic to write rows to (never a live topic)")
    r.add_argument("--state", help="position file (default: next to --out)")
    r.add_argument("--resume", action="store_true", help="go on from the saved position")
    r.add_argument("--concurrency", type=int, default=16, help="events in flight")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")

    e = sub.add_parser(
        "eval",
        help="score replay rows against golden sets and reviewers' decisions; gate regressions",
    )
    _scoring_args(e)
    e.add_argument("--baseline", action="append", default=[], help="replay rows to compare with")
    e.add_argument("--threshold", type=float, help="the auto threshold (default: the rows')")
    e.add_argument("--target-precision", type=float, default=0.95)
    e.add_argument(
        "--gate",
        action="append",
        default=[],
        help="e.g. auto_precision>=0.95, field:category>=0.8, ece<=0.1, regressions==0",
    )
    e.add_argument("--regression-tolerance", type=float, default=0.0)
    e.add_argument("--report", help="directory for index.html, report.md, summary.json, plots")
    e.add_argument("--json", action="store_true", help="the summaries as JSON on stdout")

    c = sub.add_parser(
        "calibrate",
        help="fit a flow's confidence to what turned out right; store it next to the prompt",
    )
    _scoring_args(c)
    c.add_argument("--dir", help="where to write it (default: the prompts directory)")
    c.add_argument("--dry-run", action="store_true", help="fit and report; write nothing")
    c.add_argument("--force", action="store_true", help="save even if it does not lower the ECE")


def _scoring_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="+", help="replay rows (JSON Lines from sluice replay)")
    p.add_argument("--flow", action="append", help="only this flow (default: every flow seen)")
    p.add_argument(
        "--labels",
        action="append",
        default=[],
        help="golden (the repo's labelled sets), reviewed (read <flow>.reviewed), or a JSON "
        "Lines file of label rows; repeatable, default golden. Reviewed labels win.",
    )
    p.add_argument(
        "--method", choices=["logistic", "isotonic"], default="logistic", help="calibration"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    p.add_argument(
        "--correct-fields",
        help="comma-separated fields that decide whether an answer is right (default: the "
        "flow's, e.g. category,priority,team,requires_human for tickets)",
    )


def _prompt_versions(values: list[str]) -> tuple[str | None, dict[str, str]]:
    every: str | None = None
    per_flow: dict[str, str] = {}
    for value in values:
        if "=" in value:
            flow, version = value.split("=", 1)
            per_flow[flow.strip()] = version.strip()
        else:
            every = value.strip()
    return every, per_flow


def cmd_replay(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice replay TOPIC``: the report as JSON on stdout; 1 when some records failed."""
    from streams.cli import _when
    from streams.flow import select
    from streams.replay import Candidate, Range, Replayer
    from streams.replaystore import FileSink, Sink, TopicSink, default_state_path

    logconfig.configure("warning", settings.log_format)
    specs = select(args.flow)
    every, per_flow = _prompt_versions(args.prompt_version)
    candidate = Candidate(
        model=args.model,
        base_url=args.base_url,
        prompt_version=every,
        prompt_versions=per_flow,
        api_key_env=args.api_key_env,
    )
    sink: Sink
    if args.out:
        sink, where = FileSink(Path(args.out)), args.out
    else:
        sink, where = TopicSink(settings, args.to_topic), f"topic:{args.to_topic}"
    span = Range(
        partitions=tuple(args.partition or ()),
        start_offset=args.from_offset,
        end_offset=args.to_offset,
        since=_when(args.since),
        until=_when(args.until),
        limit=args.limit,
    )
    replayer = Replayer(
        settings,
        specs,
        args.topic,
        candidate,
        sink,
        Path(args.state) if args.state else default_state_path(where),
        span=span,
        resume=args.resume,
        concurrency=args.concurrency,
        progress=not args.no_progress,
    )
    report = asyncio.run(replayer.run())
    print(json.dumps({"topic": args.topic, "out": where, **report.as_dict()}))
    if report.interrupted:
        print("sluice: replay interrupted; position saved: --resume goes on", file=sys.stderr)
        return 130
    return 1 if report.failed else 0


def _read_rows(paths: list[str]) -> list[dict[str, Any]]:
    """Replay rows from JSON Lines files; a malformed line is an error with its place, never
    skipped (a dropped row would change the score)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        if not Path(path).is_file():
            raise ConfigError(f"no replay rows at {path}")
        with Path(path).open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"{path}:{number}: not JSON: {exc}") from None
                if not isinstance(row, dict) or "event_id" not in row:
                    raise ConfigError(f"{path}:{number}: not a replay row")
                rows.append(row)
    return rows


def _by_flow(rows: list[dict[str, Any]], wanted: list[str] | None) -> dict[str, list[Any]]:
    flows: dict[str, list[Any]] = {}
    for row in rows:
        flows.setdefault(str(row.get("flow")), []).append(row)
    if wanted:
        missing = set(wanted) - set(flows)
        if missing:
            raise ConfigError(f"no replay rows of {sorted(missing)}; the rows have {sorted(flows)}")
        flows = {f: flows[f] for f in wanted}
    if not flows:
        raise ConfigError("the replay files hold no rows")
    return flows


def _labels(settings: Settings, sources: list[str], flows: list[str]) -> list[dict[str, Any]]:
    from evals.labels import golden_labels, read_labels, reviewed_labels

    labels: list[dict[str, Any]] = []
    for source in sources or ["golden"]:
        if source == "golden":
            for flow in flows:
                labels.extend(golden_labels(flow))
        elif source == "reviewed":
            decisions = asyncio.run(read_decisions(settings, flows))
            labels.extend(reviewed_labels(decisions))
        else:
            labels.extend(read_labels(source))
    return labels


async def read_decisions(settings: Settings, flows: list[str]) -> list[dict[str, Any]]:
    """Every decision on the ``<flow>.reviewed`` topics, as dicts with the decided record
    decoded (``record``: a dict, None for a rejection)."""
    from schemas.codec import Codec
    from schemas.records import ReviewDecision
    from streams.topics import read_to_end

    codec = Codec()
    out: list[dict[str, Any]] = []
    topics = [settings.topics.of(flow, "reviewed") for flow in flows]
    async for m in read_to_end(settings, topics):
        decision = codec.decode(m.value) if m.value is not None else None
        if not isinstance(decision, ReviewDecision):
            continue
        row = decision.model_dump(mode="json", exclude={"record"})
        record = codec.decode(decision.record) if decision.record else None
        row["record"] = record.model_dump(mode="json") if record else None
        out.append(row)
    return out


def _calibrate(method: str) -> Any:
    """The cross-validated calibration ``evals.summary.evaluate`` reports as "calibrated"."""
    from agents.calibration import cross_validated

    def run(
        pairs: list[tuple[dict[str, Any], bool]], folds: int
    ) -> tuple[list[float], dict[str, Any]]:
        rows = [(_confidence(detail), ok) for detail, ok in pairs]
        probabilities = cross_validated(rows, method=method, folds=folds)  # type: ignore[arg-type]
        return probabilities, {"method": method, "folds": folds, "calibration": None}

    return run


def _confidence(detail: dict[str, Any]) -> Any:
    """A row's ``confidence_detail`` as the record type (absent signals: the score itself)."""
    from schemas.records import Confidence

    score = float(detail.get("score") or 0.0)
    return Confidence(
        score=score,
        self_rated=float(detail.get("self_rated", score) or 0.0),
        logprob=detail.get("logprob"),
        validation=float(detail.get("validation", 1.0) or 0.0),
        method=str(detail.get("method", "")),
    )


def cmd_eval(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice eval RUN…``: a summary per flow; 1 when a gate fails."""
    from evals.scoring import judged_by
    from evals.summary import evaluate

    logconfig.configure("warning", settings.log_format)
    flows = _by_flow(_read_rows(args.run), args.flow)
    labels = _labels(settings, args.labels, list(flows))
    baseline = _read_rows(args.baseline) if args.baseline else None
    summaries = []
    for flow, rows in flows.items():
        with judged_by(flow, _fields(args.correct_fields)):
            summary = evaluate(
                rows,
                labels,
                flow=flow,
                threshold=args.threshold,
                target_precision=args.target_precision,
                baseline=[r for r in baseline if r.get("flow") == flow] if baseline else None,
                gates=args.gate,
                calibration=_calibrate(args.method),
                calibration_method=args.method,
                folds=args.folds,
                file=", ".join(args.run),
                baseline_file=", ".join(args.baseline) or None,
                regression_tolerance=args.regression_tolerance,
            )
        summaries.append(summary)
    if args.report:
        from evals.report import write_report

        index = write_report(summaries, args.report)
        print(f"report: {index}", file=sys.stderr)
    if args.json:
        print(json.dumps(summaries, indent=2, default=str))
    else:
        for summary in summaries:
            print(headline(summary))
    return 0 if all(s.get("passed", True) for s in summaries) else 1


def headline(summary: dict[str, Any]) -> str:
    """The few numbers a person reads first, one flow per paragraph."""
    from evals.formatting import pct, score

    run, lanes = summary.get("run") or {}, summary.get("lanes") or {}
    cal = summary.get("calibration") or {}
    raw, calibrated = cal.get("raw") or {}, cal.get("calibrated") or {}
    target = lanes.get("for_target") or {}
    interval = lanes.get("auto_precision_interval")
    ci = f" [{pct(interval[0])}, {pct(interval[1])}]" if interval else ""
    lines = [
        f"{summary['flow']}: {run.get('events')} events, {run.get('labelled')} labelled, "
        f"schema-valid {pct((summary.get('schema_valid') or {}).get('rate'))}",
        f"  auto at {lanes.get('threshold')}: rate {pct(lanes.get('auto_rate'))}, precision "
        f"{pct(lanes.get('auto_precision'))}{ci} ({lanes.get('auto_correct')} of "
        f"{lanes.get('auto')})",
        f"  threshold for {pct(lanes.get('target_precision'))} precision: "
        + (
            f"{score(target.get('threshold'))} (auto rate {pct(target.get('auto_rate'))})"
            if target
            else "none reaches it"
        ),
        f"  AUROC {score(raw.get('auroc'))}; ECE {score(raw.get('ece'))} raw → "
        f"{score(calibrated.get('ece'))} calibrated ({calibrated.get('method', 'n/a')}, "
        f"cross-validated)",
    ]
    for gate in summary.get("gates") or []:
        lines.append(
            f"  gate {'PASS' if gate['passed'] else 'FAIL'} {gate['name']}: {gate['detail']}"
        )
    return "\n".join(lines)


def _pairs(
    rows: list[dict[str, Any]], labels: list[dict[str, Any]], flow: str
) -> tuple[list[tuple[Any, bool]], dict[str, Any]]:
    """``(Confidence, answer was right)`` per labelled result, and the rows' model and prompt."""
    from evals.labels import merge
    from evals.scoring import is_correct
    from evals.summary import latest_rows

    latest, _ = latest_rows(rows, flow)
    by_id = {str(x["event_id"]): x for x in merge(labels) if x.get("flow") == flow}
    pairs, models, prompts = [], set(), set()
    for event_id, row in latest.items():
        label, detail = by_id.get(event_id), row.get("confidence_detail")
        if label is None or not isinstance(detail, dict):
            continue  # unlabelled, or a dead letter: no score to calibrate
        pairs.append((_confidence(detail), is_correct(row, label)))
        candidate = row.get("candidate") or {}
        models.add(candidate.get("model"))
        prompts.add(candidate.get("prompt_version"))
    return pairs, {"models": sorted(map(str, models)), "prompts": sorted(map(str, prompts))}


def cmd_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    """``sluice calibrate RUN…``: fit each flow's calibration on labelled replay rows, report
    ECE and AUROC before and after (cross-validated), and save it next to the prompt."""
    from agents.calibration import (
        calibration_path,
        cross_validated,
        fit,
        load_calibration,
        save_calibration,
    )
    from evals.metrics import auroc, ece
    from evals.scoring import judged_by

    logconfig.configure("warning", settings.log_format)
    flows = _by_flow(_read_rows(args.run), args.flow)
    labels = _labels(settings, args.labels, list(flows))
    directory = Path(args.dir) if args.dir else None
    refused = False
    for flow, rows in flows.items():
        with judged_by(flow, _fields(args.correct_fields)):
            pairs, seen = _pairs(rows, labels, flow)
        if len(seen["models"]) != 1 or len(seen["prompts"]) != 1:
            raise ConfigError(
                f"{flow}: a calibration is for one model and one prompt; the rows have models "
                f"{seen['models']} and prompts {seen['prompts']}"
            )
        model, prompt = seen["models"][0], seen["prompts"][0]
        correct = [ok for _, ok in pairs]
        raw = [c.score for c, _ in pairs]
        try:
            after = cross_validated(pairs, method=args.method, folds=args.folds)
        except ValueError as exc:
            raise ConfigError(f"{flow}: cannot fit a calibration: {exc}") from None
        metrics = {
            "ece_before": round(ece(raw, correct), 4),
            "ece_after": round(ece(after, correct), 4),
            "auroc_before": _rounded(auroc(raw, correct)),
            "auroc_after": _rounded(auroc(after, correct)),
            "folds": args.folds,
            "correct_fields": _fields(args.correct_fields) or "the flow's",
        }
        previous = load_calibration(prompt, model, directory=directory)
        origin = "+".join(args.labels or ["golden"])
        cal = fit(
            pairs,
            method=args.method,
            flow=flow,
            prompt_version=prompt,
            model=model,
            origin=origin,
            source=", ".join(args.run),
            previous=previous,
            metrics=metrics,
        )
        where = calibration_path(prompt, directory)
        worse = metrics["ece_after"] >= metrics["ece_before"]
        if worse and not args.force:
            print(f"sluice: {flow}: not saved: the calibration does not lower the cross-validated "
                  f"ECE ({metrics['ece_before']} → {metrics['ece_after']} on {len(pairs)} "
                  "answers); --force saves it anyway", file=sys.stderr)  # fmt: skip
            refused = True
        elif not args.dry_run:
            where = save_calibration(cal, directory)
        saved = not (args.dry_run or (worse and not args.force))
        print(json.dumps({"flow": flow, "prompt_version": prompt, "model": model,
                          "version": cal.version, "n": len(pairs), "positives": sum(correct),
                          **metrics, "path": str(where), "saved": saved}))  # fmt: skip
    return 1 if refused else 0


def _fields(text: str | None) -> list[str] | None:
    return [f.strip() for f in text.split(",") if f.strip()] if text else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
