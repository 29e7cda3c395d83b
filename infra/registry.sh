#!/usr/bin/env bash
# Local Confluent-compatible schema registry (Apicurio Registry, in memory) without Docker.
#
#   infra/registry.sh start    use the registry named by SCHEMA_REGISTRY_URL if it answers,
#                              otherwise build Apicurio Registry with mvn (first run only) and
#                              start it on 127.0.0.1
#   infra/registry.sh stop     stop the registry this script started (never an external one)
#   infra/registry.sh status   exit 0 only if a registry answers; print its URL
#   infra/registry.sh url      print the URL to put in SCHEMA_REGISTRY_URL
#
# Sluice needs no registry (its default wire format is Avro single-object encoding). This one exists
# so the tests exercise Confluent framing against a real server, not a fake: Apicurio speaks
# Confluent's REST API under /apis/ccompat/v7. Its state is in memory and gone on stop, which is
# what tests want; production uses the registry in docker-compose.yml or your own.
# Build inputs: infra/registry/pom.xml (see the comment there). Output: .local/registry.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SLUICE_STATE_DIR:-$ROOT/.local}/registry"
PORT="${SLUICE_REGISTRY_PORT:-8081}"
LOCAL_URL="http://127.0.0.1:$PORT/apis/ccompat/v7"
URL="${SCHEMA_REGISTRY_URL:-$LOCAL_URL}"
WAIT_SECONDS="${SLUICE_REGISTRY_WAIT_SECONDS:-90}"
PIDFILE="$STATE/registry.pid"
POM="$ROOT/infra/registry/pom.xml"

NAME=registry
# shellcheck source=infra/lib.sh
source "$ROOT/infra/lib.sh"

# A registry "answers" when its subjects endpoint returns JSON, not merely when the port is open.
answers() {
  python3 - "$1" <<'EOF' >/dev/null 2>&1
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1].rstrip("/") + "/subjects", timeout=3) as r:
    json.load(r)
EOF
}

build() {
  local stamp="$STATE/app/.built-from"
  local want; want="$(sha256sum "$POM" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  command -v java >/dev/null 2>&1 || die "java not found: install a JDK >= 17 (Debian: openjdk-17-jre-headless) or set SCHEMA_REGISTRY_URL"
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (Debian: maven) or set SCHEMA_REGISTRY_URL"
  log "building Apicurio Registry with mvn (first run only, a few minutes) ..."
  rm -rf "$STATE/build" "$STATE/app"; mkdir -p "$STATE/build"
  cp "$POM" "$STATE/build/pom.xml"
  mvn -B -q -f "$STATE/build/pom.xml" -P '!external_repos' \
      -DskipTests -Dcheckstyle.skip -Dlicense.skip -Denforcer.skip package >"$STATE/mvn.log" 2>&1 \
    || die "mvn could not build the registry; see $STATE/mvn.log"
  local target="$STATE/build/target"
  mkdir -p "$STATE/app"
  if [[ -d "$target/quarkus-app" ]]; then
    cp -r "$target/quarkus-app/." "$STATE/app/"
    mv "$STATE/app/quarkus-run.jar" "$STATE/app/registry.jar"
  else
    cp "$target"/*-runner.jar "$STATE/app/registry.jar"
    cp -r "$target/lib" "$STATE/app/lib"
  fi
  rm -rf "$STATE/build"
  echo "$want" >"$stamp"
}

start() {
  if [[ "$URL" != "$LOCAL_URL" ]]; then
    answers "$URL" || die "SCHEMA_REGISTRY_URL=$URL does not answer; start that registry or unset the variable to run a local one"
    log "using the registry at $URL"
    return 0
  fi
  if answers "$LOCAL_URL"; then log "a registry already answers at $LOCAL_URL"; return 0; fi
  build
  log "starting a registry on $LOCAL_URL (output in $STATE/registry.log)"
  # prod profile: the default profile logs at DEBUG. setsid: outlives the make target.
  setsid java -Xms64m -Xmx256m -Djava.awt.headless=true -Dquarkus.profile=prod \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$PORT" \
    -jar "$STATE/app/registry.jar" >>"$STATE/registry.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_ready "$LOCAL_URL" "$WAIT_SECONDS" "$STATE/registry.log"
}

stop() { stop_ours; }

status() {
  if answers "$URL"; then log "a registry answers at $URL"; echo "$URL"; return 0; fi
  log "no registry answers at $URL"; return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 start|stop|status|url" >&2; exit 2 ;;
esac
