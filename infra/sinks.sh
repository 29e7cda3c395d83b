#!/usr/bin/env bash
# Local target systems for the built-in tools (agents/sinks.py): a webhook receiver and an SMTP
# server, storing what they receive in SQLite files under .local/sinks.
#
#   infra/sinks.sh start    start them unless they already answer
#   infra/sinks.sh stop     stop the ones this script started
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SLUICE_STATE_DIR:-$ROOT/.local}/sinks"
HTTP_PORT="${SLUICE_SINKS_HTTP_PORT:-8095}"
SMTP_PORT="${SLUICE_SINKS_SMTP_PORT:-8025}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
PIDFILE="$STATE/sinks.pid"

log() { printf 'sinks: %s\n' "$*" >&2; }
die() { printf 'sinks: error: %s\n' "$*" >&2; exit 1; }
answers() { "$PYTHON" -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$HTTP_PORT/health', timeout=1)" 2>/dev/null; }

start() {
  if answers; then log "already answering on port $HTTP_PORT"; return 0; fi
  mkdir -p "$STATE"
  # The process itself in the background (not a subshell around it), so the pid file names the
  # process `stop` must end.
  cd "$ROOT"
  nohup "$PYTHON" -m agents.sinks --state "$STATE" --http-port "$HTTP_PORT" \
    --smtp-port "$SMTP_PORT" >"$STATE/sinks.log" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 50); do answers && { log "webhook http://127.0.0.1:$HTTP_PORT, smtp 127.0.0.1:$SMTP_PORT"; return 0; }; sleep 0.2; done
  die "the sinks did not start; see $STATE/sinks.log"
}

stop() {
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    kill "$(cat "$PIDFILE")"; log "stopped"
  else
    log "not running"
  fi
  rm -f "$PIDFILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
