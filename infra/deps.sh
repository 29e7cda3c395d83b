#!/usr/bin/env bash
# The system commands Sluice's make targets need, installed from Debian packages when missing.
#
#   infra/deps.sh [GROUP ...]   check the groups named (all of them if none), install what is
#                               missing, exit 0 once every command is there
#
#   venv      $PYTHON (python3) with the venv and ensurepip modules    python3 python3-venv
#   kafka     java and mvn, to resolve and run the local broker         openjdk-17-jre-headless maven
#   registry  java and mvn, to build and run the local schema registry  openjdk-17-jre-headless maven
#   java      java and mvn whatever the services (the tests decode Avro with Java)
#   redis     redis-server and redis-cli                                redis-server
#   kcat      kcat (the tests produce and read raw records with it)     kcat
#   postgres  initdb and pg_ctl (the ledger's PostgreSQL backend tests)  postgresql
#   chromium  a headless browser for the review UI's browser test       chromium
#
# kafka and registry need nothing when KAFKA_BOOTSTRAP_SERVERS / SCHEMA_REGISTRY_URL name external
# services, and redis needs only redis-cli (redis-tools) when REDIS_URL does: infra/kafka.sh,
# registry.sh and redis.sh then use those instead of starting their own.
#
# Missing packages are installed with apt-get as root, or through `sudo -n` (sudo that asks no
# password); otherwise this prints the one command to run and exits 1. On a machine without apt-get
# it names the missing commands and exits 1. SLUICE_SKIP_DEPS=1 skips every check.
set -euo pipefail

NAME=deps
PY="${PYTHON:-python3}"

log() { printf '%s: %s\n' "$NAME" "$*" >&2; }

[[ "${SLUICE_SKIP_DEPS:-}" == 1 ]] && { log "skipped (SLUICE_SKIP_DEPS=1)"; exit 0; }

ALL=(venv kafka registry java redis kcat postgres chromium)
groups=("$@")
((${#groups[@]})) || groups=("${ALL[@]}")

# The same defaults as infra/kafka.sh and infra/registry.sh: a variable naming the local address
# still means "start a local one".
external_kafka() {
  [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && "$KAFKA_BOOTSTRAP_SERVERS" != "127.0.0.1:${SLUICE_KAFKA_PORT:-9092}" ]]
}
external_registry() {
  [[ -n "${SCHEMA_REGISTRY_URL:-}" \
    && "$SCHEMA_REGISTRY_URL" != "http://127.0.0.1:${SLUICE_REGISTRY_PORT:-8081}/apis/ccompat/v7" ]]
}
external_redis() {
  [[ -n "${REDIS_URL:-}" && "$REDIS_URL" != "redis://127.0.0.1:${SLUICE_REDIS_PORT:-6379}/0" ]]
}

missing=() pkgs=()
# need COMMAND PACKAGE: note COMMAND as missing unless it is on PATH.
need() { command -v "$1" >/dev/null 2>&1 || add "$1" "$2"; }
add() {
  [[ " ${missing[*]} " == *" $1 "* ]] || missing+=("$1")
  [[ " ${pkgs[*]} " == *" $2 "* ]] || pkgs+=("$2")
}

check() {
  missing=() pkgs=()
  local group
  for group in "${groups[@]}"; do
    case "$group" in
      venv)
        if command -v "$PY" >/dev/null 2>&1; then
          # Debian ships venv's ensurepip (and with it `python3 -m venv`) in python3-venv.
          "$PY" -c 'import venv, ensurepip' 2>/dev/null || add venv python3-venv
        else
          add "$PY" python3; add venv python3-venv
        fi ;;
      kafka) external_kafka || { need java openjdk-17-jre-headless; need mvn maven; } ;;
      registry) external_registry || { need java openjdk-17-jre-headless; need mvn maven; } ;;
      java) need java openjdk-17-jre-headless; need mvn maven ;;
      redis)
        if external_redis; then need redis-cli redis-tools
        else need redis-server redis-server; need redis-cli redis-server; fi ;;
      kcat) need kcat kcat ;;
      # Debian keeps initdb and pg_ctl off PATH, under /usr/lib/postgresql/<version>/bin.
      postgres) bash "$(dirname "$0")/postgres.sh" bindir >/dev/null 2>&1 || add initdb postgresql ;;
      chromium) command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
                  || add chromium chromium ;;
      *) (IFS='|'; printf 'usage: %s [%s ...]\n' "$0" "${ALL[*]}" >&2); exit 2 ;;
    esac
  done
}

check
if ((${#missing[@]} == 0)); then log "ok (${groups[*]})"; exit 0; fi

if ! command -v apt-get >/dev/null 2>&1; then
  printf 'infra/deps.sh: missing %s; install them (Debian packages: %s)\n' "${missing[*]}" "${pkgs[*]}" >&2
  exit 1
fi

if [[ "$(id -u)" == 0 ]]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  printf 'infra/deps.sh: missing %s; run: sudo apt-get install -y %s\n' "${missing[*]}" "${pkgs[*]}" >&2
  exit 1
fi

log "missing ${missing[*]}; installing ${pkgs[*]}"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"

installed=("${pkgs[@]}")
hash -r
check
if ((${#missing[@]})); then
  log "error: still missing ${missing[*]} after installing ${pkgs[*]}"
  exit 1
fi
log "ok (${groups[*]}): installed ${installed[*]}"
