# Shared by infra/*.sh: logging, the pid file of a service we started, waiting for it to answer,
# and stopping it. The sourcing script sets NAME and PIDFILE and defines `answers ADDRESS`.

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

# The pid of the process this script started, if it still runs.
our_pid() {
  [[ -f "$PIDFILE" ]] || return 1
  local pid; pid="$(cat "$PIDFILE")"
  kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
  return 1
}

# wait_ready ADDRESS SECONDS LOGFILE: poll until the service answers; fail early if it died.
wait_ready() {
  local addr="$1" limit="$2" logfile="$3" waited=0
  until answers "$addr"; do
    our_pid >/dev/null || { tail -n 30 "$logfile" >&2; die "it exited during start-up"; }
    (( waited >= limit )) && die "it did not answer within ${limit}s; see $logfile"
    sleep 1; waited=$((waited + 1))
  done
  log "ready at $addr after ${waited}s"
}

# Stop what we started (TERM, then KILL after 30 s); never touches a service we did not start.
stop_ours() {
  local pid
  if ! pid="$(our_pid)"; then log "nothing of ours is running"; rm -f "$PIDFILE"; return 0; fi
  kill "$pid"
  for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  rm -f "$PIDFILE"
  log "stopped"
}
