#!/bin/bash
# `make eval`: the golden sets through the real path, scored. The labelled tickets and invoices are
# produced to topics of this run's own (a fresh suffix), replayed through the configured model
# (the offline one unless OPENAI_API_KEY / OPENAI_BASE_URL say otherwise; EVAL_ARGS can name a
# candidate, e.g. "--model gpt-4o-mini" or "--prompt-version tickets=ticket_triage.v2"), and
# `sluice eval` writes the report (HTML, Markdown, plots) to .local/eval/<run>/report.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
run=${EVAL_RUN:-golden-$(date -u +%Y%m%dT%H%M%S)}
out=.local/eval/$run
mkdir -p "$out"
export SLUICE_TOPIC_SUFFIX=".$run"
sluice() { "$BIN/python" -m streams.cli "$@"; }
sluice topics >/dev/null
"$BIN/python" -m evals.events tickets | sluice produce "tickets.received.$run" - --key-field ticket_id
"$BIN/python" -m evals.events invoices | sluice produce "documents.received.$run" - --key-field document_id
# shellcheck disable=SC2086 # EVAL_ARGS is a list of options
sluice replay "tickets.received.$run" --out "$out/tickets.jsonl" --concurrency 4 ${EVAL_ARGS:-}
# shellcheck disable=SC2086
sluice replay "documents.received.$run" --out "$out/invoices.jsonl" --concurrency 4 ${EVAL_ARGS:-}
status=0
# shellcheck disable=SC2086 # EVAL_GATES: e.g. "--gate schema_valid>=0.9 --baseline old.jsonl"
sluice eval "$out/tickets.jsonl" "$out/invoices.jsonl" --report "$out/report" ${EVAL_GATES:-} \
  || status=$?
echo "rows: $out/{tickets,invoices}.jsonl; report: $out/report/index.html"
exit $status
