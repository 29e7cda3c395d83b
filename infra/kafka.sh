#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node) without Docker.
#
#   infra/kafka.sh start    use the cluster named by KAFKA_BOOTSTRAP_SERVERS if it answers,
#                           otherwise resolve the broker's jars with mvn and start one on 127.0.0.1
#   infra/kafka.sh stop     stop the broker this script started (never an external cluster)
#   infra/kafka.sh status   say what is running; exit 0 only if a broker answers
#
# Why a script and not Docker: our machines have no Docker engine, and Maven Central carries the
# broker (org.apache.kafka:kafka_2.13) with its runtime dependencies. State lives under
# .local/kafka (git-ignored): jars in libs/, data in data/, the broker's output in broker.log.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${SLUICE_STATE_DIR:-$ROOT/.local}/kafka"
PORT="${SLUICE_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${SLUICE_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
LOCAL_ADDR="127.0.0.1:$PORT"
BOOTSTRAP="${KAFKA_BOOTSTRAP_SERVERS:-$LOCAL_ADDR}"
WAIT_SECONDS="${SLUICE_KAFKA_WAIT_SECONDS:-90}"
PIDFILE="$STATE/broker.pid"

NAME=kafka
# shellcheck source=infra/lib.sh
source "$ROOT/infra/lib.sh"

# A broker "answers" when it returns cluster metadata, not merely when its port is open.
answers() {
  local addr="$1"
  if command -v kcat >/dev/null 2>&1; then
    kcat -b "$addr" -L -m 3 >/dev/null 2>&1
  else
    local host="${addr%%,*}"; host="${host%:*}"; local port="${addr##*:}"; port="${port%%,*}"
    (exec 3<>"/dev/tcp/$host/$port") >/dev/null 2>&1
  fi
}

resolve_jars() {
  local stamp="$STATE/libs/.resolved-from"
  local want; want="$(sha256sum "$ROOT/infra/kafka-pom.xml" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return 0; fi
  command -v java >/dev/null 2>&1 || die "java not found: install a JDK >= 17 (Debian: openjdk-17-jre-headless) or set KAFKA_BOOTSTRAP_SERVERS to a running cluster"
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven (Debian: maven) or set KAFKA_BOOTSTRAP_SERVERS to a running cluster"
  log "resolving broker jars with mvn (first run only) ..."
  rm -rf "$STATE/libs"; mkdir -p "$STATE/libs"
  mvn -q -B -f "$ROOT/infra/kafka-pom.xml" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$STATE/libs" >"$STATE/mvn.log" 2>&1 \
    || die "mvn could not resolve the broker's jars; see $STATE/mvn.log"
  echo "$want" >"$stamp"
}

write_config() {
  mkdir -p "$STATE/data"
  cat >"$STATE/server.properties" <<EOF
# Written by infra/kafka.sh; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$STATE/data
num.partitions=1
# Single node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start many short-lived consumer groups; don't make each wait 3 s for peers.
group.initial.rebalance.delay.ms=0
# Topics are declared by the app (sluice topics create); a typo must fail, not invent a topic.
auto.create.topics.enable=false
EOF
  cat >"$STATE/log4j2.properties" <<'EOF'
rootLogger.level=INFO
rootLogger.appenderRef.stdout.ref=STDOUT
appender.stdout.type=Console
appender.stdout.name=STDOUT
appender.stdout.layout.type=PatternLayout
appender.stdout.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.apache.name=org.apache.kafka
logger.apache.level=WARN
EOF
}

JAVA=(java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
      -Dlog4j2.configurationFile="$STATE/log4j2.properties" -cp "$STATE/libs/*")

start() {
  if [[ "$BOOTSTRAP" != "$LOCAL_ADDR" ]]; then
    answers "$BOOTSTRAP" || die "KAFKA_BOOTSTRAP_SERVERS=$BOOTSTRAP does not answer; start that cluster or unset the variable to run a local broker"
    log "using the cluster at $BOOTSTRAP"
    return 0
  fi
  if answers "$LOCAL_ADDR"; then log "a broker already answers at $LOCAL_ADDR"; return 0; fi
  resolve_jars
  write_config
  if [[ ! -f "$STATE/data/meta.properties" ]]; then
    local cluster_id; cluster_id="$("${JAVA[@]}" kafka.tools.StorageTool random-uuid)"
    "${JAVA[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE/server.properties" \
      --standalone >"$STATE/format.log" 2>&1 || die "formatting KRaft storage failed; see $STATE/format.log"
  fi
  log "starting a broker on $LOCAL_ADDR (output in $STATE/broker.log)"
  # setsid: the broker outlives the make target that started it (make down stops it).
  setsid "${JAVA[@]}" kafka.Kafka "$STATE/server.properties" >>"$STATE/broker.log" 2>&1 </dev/null &
  echo $! >"$PIDFILE"
  wait_ready "$LOCAL_ADDR" "$WAIT_SECONDS" "$STATE/broker.log"
}

stop() { stop_ours; }

status() {
  if answers "$BOOTSTRAP"; then
    if pid="$(our_pid)"; then log "local broker (pid $pid) answers at $BOOTSTRAP"; else log "a broker answers at $BOOTSTRAP"; fi
    return 0
  fi
  log "no broker answers at $BOOTSTRAP"; return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
