#!/usr/bin/env bash
# Local Redis for idempotency keys.
#
#   infra/redis.sh start    use the server named by REDIS_URL if it answers, otherwise start
#                           redis-server on 127.0.0.1 with data under .local/redis
#   infra/redis.sh stop     stop the server this script started (never an external one)
#   infra/redis.sh status   exit 0 only if a server answers PING
#
# The local server runs with `appendonly yes` and `maxmemory-policy noeviction`: an idempotency key
# that is lost (no AOF on restart) or evicted (memory pressure) lets a side effect run twice.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SLUICE_STATE_DIR:-$ROOT/.local}/redis"
PORT="${SLUICE_REDIS_PORT:-6379}"
LOCAL_URL="redis://127.0.0.1:$PORT/0"
URL="${REDIS_URL:-$LOCAL_URL}"
PIDFILE="$STATE/redis.pid"

log() { printf 'redis: %s\n' "$*" >&2; }
die() { printf 'redis: error: %s\n' "$*" >&2; exit 1; }

answers() {
  command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found: install Redis (Debian: apt-get install redis-server) or set REDIS_URL"
  [[ "$(redis-cli -u "$1" ping 2>/dev/null)" == "PONG" ]]
}

start() {
  if [[ "$URL" != "$LOCAL_URL" ]]; then
    answers "$URL" || die "REDIS_URL=$URL does not answer; start that server or unset the variable to run a local one"
    log "using the server at $URL"
    return 0
  fi
  if answers "$LOCAL_URL"; then log "a server already answers at $LOCAL_URL"; return 0; fi
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found: install it (Debian: apt-get install redis-server) or set REDIS_URL"
  mkdir -p "$STATE"
  redis-server --bind 127.0.0.1 --port "$PORT" --dir "$STATE" \
    --appendonly yes --appendfsync everysec --maxmemory-policy noeviction \
    --daemonize yes --pidfile "$PIDFILE" --logfile "$STATE/redis.log" --save ""
  for _ in $(seq 1 50); do answers "$LOCAL_URL" && { log "ready at $LOCAL_URL"; return 0; }; sleep 0.2; done
  die "redis-server did not answer; see $STATE/redis.log"
}

stop() {
  if [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    redis-cli -u "$LOCAL_URL" shutdown >/dev/null 2>&1 || kill "$(cat "$PIDFILE")"
    log "stopped"
  else
    log "no local server running"
  fi
  rm -f "$PIDFILE"
}

status() {
  if answers "$URL"; then log "a server answers at $URL"; return 0; fi
  log "no server answers at $URL"; return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
