#!/usr/bin/env bash
# One-node Apache Kafka (KRaft) for development, tests and the demo.
#
#   infra/kafka.sh install   fetch Kafka's jars from Maven Central (once; cached outside the repo)
#   infra/kafka.sh start     install if needed, format storage if needed, start, wait until ready
#   infra/kafka.sh stop      stop the broker started from this checkout
#   infra/kafka.sh status    print "running <bootstrap>" or "stopped"; exit 0 only when ready
#   infra/kafka.sh reset     stop and delete this checkout's broker data
#
# The broker listens on 127.0.0.1 only. Its data lives in the project-local state directory
# ($TICKFLOW_STATE_DIR, default <repo>/.tickflow/kafka) so two checkouts never share a log.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")"
CACHE="${TICKFLOW_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tickflow}/kafka-$KAFKA_VERSION"
STATE="${TICKFLOW_STATE_DIR:-$REPO/.tickflow}/kafka"
PORT="${TICKFLOW_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${TICKFLOW_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
BOOTSTRAP="127.0.0.1:$PORT"
PIDFILE="$STATE/broker.pid"
HEAP="${TICKFLOW_KAFKA_HEAP:-768m}"

log() { echo "kafka: $*" >&2; }

install() {
  if [[ -f "$CACHE/.complete" ]]; then return 0; fi
  command -v java >/dev/null || { log "java not found: install OpenJDK 17"; exit 1; }
  command -v mvn >/dev/null || { log "mvn not found: install Maven"; exit 1; }
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $CACHE"
  mkdir -p "$CACHE"
  rm -rf "$CACHE/libs.partial"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DoutputDirectory="$CACHE/libs.partial"
  rm -rf "$CACHE/libs" && mv "$CACHE/libs.partial" "$CACHE/libs"
  touch "$CACHE/.complete"
}

java_cmd() {
  java -Xms256m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$HERE/kafka-log4j.properties" -Dkafka.logs.dir="$STATE/logs" \
    -cp "$CACHE/libs/*" "$@"
}

write_config() {
  mkdir -p "$STATE/data" "$STATE/logs"
  cat > "$STATE/server.properties" <<CONF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$STATE/data
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
log.segment.bytes=104857600
num.network.threads=2
num.io.threads=4
message.max.bytes=8388608
CONF
}

is_running() {
  [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

is_ready() {
  # A TCP connect is not enough: the broker accepts connections before it has joined the quorum,
  # so wait for the server's own "started" line (logged at INFO, see kafka-log4j.properties).
  grep -q "Kafka Server started" "$STATE/logs/server.log" 2>/dev/null \
    && (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null
}

start() {
  install
  if is_running; then
    log "already running (pid $(cat "$PIDFILE")) on $BOOTSTRAP"; return 0
  fi
  write_config
  if [[ ! -f "$STATE/data/meta.properties" ]]; then
    local cluster_id
    cluster_id="$(java_cmd kafka.tools.StorageTool random-uuid)"
    java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$STATE/server.properties" >/dev/null
  fi
  log "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (data in $STATE)"
  : > "$STATE/logs/server.log"
  nohup java -Xms256m -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$HERE/kafka-log4j.properties" -Dkafka.logs.dir="$STATE/logs" \
    -cp "$CACHE/libs/*" kafka.Kafka "$STATE/server.properties" \
    >"$STATE/logs/stdout.log" 2>&1 &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if ! is_running; then
      log "broker exited during start; last lines of $STATE/logs/stdout.log:"; tail -20 "$STATE/logs/stdout.log" >&2; exit 1
    fi
    if is_ready; then log "ready on $BOOTSTRAP"; return 0; fi
    sleep 0.5
  done
  log "broker did not become ready within 60 s; see $STATE/logs"; exit 1
}

stop() {
  if is_running; then
    local pid; pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped"
  fi
  rm -f "$PIDFILE"
}

status() {
  if is_running && is_ready; then echo "running $BOOTSTRAP"; else echo "stopped"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  reset) stop; rm -rf "$STATE" ;;
  bootstrap) echo "$BOOTSTRAP" ;;
  *) echo "usage: $0 install|start|stop|status|reset|bootstrap" >&2; exit 2 ;;
esac
