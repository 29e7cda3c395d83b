#!/usr/bin/env bash
# Local PostgreSQL for the ledger tool's PostgreSQL backend (SLUICE_LEDGER_URL), used by the tests.
#
#   infra/postgres.sh start    start a throwaway cluster on 127.0.0.1:$SLUICE_POSTGRES_PORT (5433)
#                              with a `sluice` role and database (trust auth, loopback only)
#   infra/postgres.sh stop     stop the cluster this script started
#   infra/postgres.sh status   exit 0 only if the cluster answers
#   infra/postgres.sh url      print its URL: postgresql://sluice@127.0.0.1:5433/sluice
#   infra/postgres.sh bindir   print the directory of initdb/pg_ctl (Debian keeps them off PATH)
#
# The default ledger is a SQLite file; nothing but the tests and users who set SLUICE_LEDGER_URL need
# this. Port 5433 keeps clear of a system server on 5432. PostgreSQL refuses to run as root, so as
# root the cluster runs as the `postgres` user that Debian's package creates, with its data outside
# the checkout when the checkout is not reachable by that user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="${SLUICE_POSTGRES_PORT:-5433}"
URL="postgresql://sluice@127.0.0.1:$PORT/sluice"

log() { printf 'postgres: %s\n' "$*" >&2; }
die() { printf 'postgres: error: %s\n' "$*" >&2; exit 1; }

bindir() {
  local found
  if found="$(command -v initdb 2>/dev/null)"; then dirname "$(readlink -f "$found")"; return 0; fi
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [[ -n "$found" && -x "$found/initdb" ]] || return 1
  echo "$found"
}

BIN="$(bindir || true)"
as_owner=()
STATE="${SLUICE_STATE_DIR:-$ROOT/.local}/postgres"
DATA="$STATE/data"
# As root: run the server as `postgres`, and keep its data where that user can reach it.
owner() {
  [[ "$(id -u)" == 0 ]] || return 0
  id postgres >/dev/null 2>&1 || die "running as root needs a 'postgres' user (Debian: apt-get install postgresql)"
  as_owner=(runuser -u postgres --)
  mkdir -p "$(dirname "$STATE")"
  "${as_owner[@]}" test -x "$(dirname "$STATE")" 2>/dev/null || STATE="/tmp/sluice-postgres-$PORT"
  DATA="$STATE/data"
}

answers() { [[ -n "$BIN" ]] && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d sluice -U sluice; }

start() {
  [[ -n "$BIN" ]] || die "initdb not found: install PostgreSQL (Debian: apt-get install postgresql)"
  if answers; then log "a server already answers at $URL"; return 0; fi
  mkdir -p "$STATE"
  ((${#as_owner[@]})) && chown postgres: "$STATE"
  if [[ ! -f "$DATA/PG_VERSION" ]]; then
    "${as_owner[@]}" "$BIN/initdb" -D "$DATA" -U sluice --auth=trust -E UTF8 --no-instructions >"$STATE/initdb.log" 2>&1 \
      || die "initdb failed; see $STATE/initdb.log"
  fi
  "${as_owner[@]}" "$BIN/pg_ctl" -D "$DATA" -l "$STATE/postgres.log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='$STATE' -c fsync=off" start >/dev/null \
    || die "pg_ctl start failed; see $STATE/postgres.log"
  "$BIN/psql" -q -h 127.0.0.1 -p "$PORT" -U sluice -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='sluice'" | grep -q 1 \
    || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U sluice sluice
  answers || die "the cluster started but does not answer; see $STATE/postgres.log"
  log "ready at $URL"
}

stop() {
  if [[ -n "$BIN" && -f "$DATA/postmaster.pid" ]]; then
    "${as_owner[@]}" "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null && log "stopped"
  else
    log "no local cluster running"
  fi
}

status() {
  if answers; then log "a server answers at $URL"; return 0; fi
  log "no server answers at $URL"; return 1
}

case "${1:-}" in
  start) owner; start ;;
  stop) owner; stop ;;
  status) status ;;
  url) echo "$URL" ;;
  bindir) [[ -n "$BIN" ]] && echo "$BIN" ;;
  *) echo "usage: $0 start|stop|status|url|bindir" >&2; exit 2 ;;
esac
