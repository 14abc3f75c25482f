#!/usr/bin/env bash
# Starts and stops the Apache Kafka broker the integration tests run against.
#
#   tests/broker/kafka.sh start [--brokers N]   # download jars if missing, format, start, wait
#   tests/broker/kafka.sh status                 # exit 0 when every node answers
#   tests/broker/kafka.sh stop                   # stop every node, leave no process behind
#
# One combined broker+controller (KRaft) on 127.0.0.1 per node:
#   PLAINTEXT       $KAFKA_PORT        (default 9092)  principal ANONYMOUS (super user)
#   CONTROLLER      $KAFKA_PORT + 1    (default 9093)
#   SASL_PLAINTEXT  $KAFKA_PORT + 2    (default 9094)  SCRAM-SHA-256/512, super user admin/admin-secret
#   SASL_SSL        $KAFKA_PORT + 3    only with KAFKA_SSL_KEYSTORE: SCRAM over TLS
# Node i (0-based) shifts all ports by 10*i.
#
# Environment overrides:
#   KAFKA_PORT       first node's PLAINTEXT port (default 9092)
#   KAFKA_DATA_DIR   data, config and logs (default <repo>/target/kafka-data)
#   KAFKA_VERSION    Kafka release to run (default: tests/broker/pom.xml's,
#                    4.1.1; the suite passes on 3.9.1 and 4.4.0 too)
#   KAFKA_JARS_DIR   jar cache (default <repo>/target/kafka-jars, with
#                    -KAFKA_VERSION appended when that is set)
#   KAFKA_HEAP       JVM heap (default 1g)
#   KAFKA_START_TIMEOUT  seconds to wait for readiness (default 120)
#   KAFKA_SSL_KEYSTORE   PKCS12 keystore with the broker's key and certificate:
#                        adds the SASL_SSL listener (tests generate their own CA)
#   KAFKA_SSL_KEYSTORE_PASSWORD  its password
#   KAFKA_AUTO_CREATE_TOPICS     the brokers' auto.create.topics.enable
#                                (default false, as on the classroom cluster)
#   KAFKA_SERVER_EXTRA           lines appended to each node's server.properties
#                                (a later line wins: e.g. Kafka's default
#                                group.initial.rebalance.delay.ms=3000)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
PORT="${KAFKA_PORT:-9092}"
DATA="${KAFKA_DATA_DIR:-$repo/target/kafka-data}"
VERSION="${KAFKA_VERSION:-}"
JARS="${KAFKA_JARS_DIR:-$repo/target/kafka-jars${VERSION:+-$VERSION}}"
HEAP="${KAFKA_HEAP:-1g}"
TIMEOUT="${KAFKA_START_TIMEOUT:-120}"
ADMIN_USER=admin
ADMIN_PASSWORD=admin-secret

die() { echo "kafka.sh: $*" >&2; exit 1; }

plain_port() { echo $((PORT + 10 * $1)); }
controller_port() { echo $((PORT + 10 * $1 + 1)); }
sasl_port() { echo $((PORT + 10 * $1 + 2)); }
ssl_port() { echo $((PORT + 10 * $1 + 3)); }
SSL_KEYSTORE="${KAFKA_SSL_KEYSTORE:-}"

node_count() {
  if [[ -f "$DATA/nodes" ]]; then cat "$DATA/nodes"; else echo 1; fi
}

bootstrap() {
  local n i out=""
  n=$(node_count)
  for ((i = 0; i < n; i++)); do out+="${out:+,}127.0.0.1:$(plain_port "$i")"; done
  echo "$out"
}

ensure_jars() {
  local want
  want=$( (cat "$here/pom.xml"; echo "$VERSION") | sha256sum | cut -d' ' -f1)
  if [[ -f "$JARS/.complete" && "$(cat "$JARS/.complete")" == "$want" ]]; then return; fi
  command -v mvn >/dev/null || die "maven (mvn) is required to fetch Kafka's jars"
  echo "kafka.sh: fetching Kafka jars from Maven Central into $JARS" >&2
  rm -rf "$JARS"
  mkdir -p "$JARS"
  mvn -q -B -f "$here/pom.xml" ${VERSION:+-Dkafka.version="$VERSION"} dependency:copy-dependencies \
    -DoutputDirectory="$JARS" -DincludeScope=runtime >&2 \
    || die "mvn could not fetch the Kafka jars"
  echo "$want" >"$JARS/.complete"
}

java_cp() { echo "$JARS/*"; }

run_java() {
  java -Xmx256m -cp "$(java_cp)" -Dlog4j2.configurationFile="$DATA/log4j2.properties" "$@"
}

write_log_config() {
  cat >"$DATA/log4j2.properties" <<'EOF'
status = error
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = info
EOF
}

write_node_config() {
  local i=$1 n=$2 voters="" j
  for ((j = 0; j < n; j++)); do voters+="${voters:+,}$((j + 1))@127.0.0.1:$(controller_port "$j")"; done
  local rf=$((n < 3 ? n : 3)) isr=$((n < 3 ? 1 : 2))
  mkdir -p "$DATA/node$i/logs"
  local listeners="PLAINTEXT://127.0.0.1:$(plain_port "$i"),SASL_PLAINTEXT://127.0.0.1:$(sasl_port "$i")"
  local map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT"
  if [[ -n "$SSL_KEYSTORE" ]]; then
    listeners+=",SASL_SSL://127.0.0.1:$(ssl_port "$i")"
    map+=",SASL_SSL:SASL_SSL"
  fi
  cat >"$DATA/node$i/server.properties" <<EOF
process.roles=broker,controller
node.id=$((i + 1))
controller.quorum.voters=$voters
listeners=$listeners,CONTROLLER://127.0.0.1:$(controller_port "$i")
advertised.listeners=$listeners
listener.security.protocol.map=$map
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:$ADMIN_USER;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=$DATA/node$i/logs
num.partitions=1
auto.create.topics.enable=${KAFKA_AUTO_CREATE_TOPICS:-false}
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
log.cleaner.backoff.ms=200
log.cleaner.dedupe.buffer.size=33554432
log.retention.check.interval.ms=5000
log.segment.delete.delay.ms=1000
EOF
  if [[ -n "$SSL_KEYSTORE" ]]; then
    cat >>"$DATA/node$i/server.properties" <<EOF
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=$SSL_KEYSTORE
ssl.keystore.password=${KAFKA_SSL_KEYSTORE_PASSWORD:-}
ssl.key.password=${KAFKA_SSL_KEYSTORE_PASSWORD:-}
EOF
  fi
  if [[ -n "${KAFKA_SERVER_EXTRA:-}" ]]; then printf '%s\n' "$KAFKA_SERVER_EXTRA" >>"$DATA/node$i/server.properties"; fi
}

pid_of() { local f="$DATA/node$1/pid"; [[ -f "$f" ]] && cat "$f" || true; }

alive() { local p; p=$(pid_of "$1"); [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null; }

answers() {
  # A cluster-id request is a real metadata round trip, not only an open port.
  timeout 30 java -Xmx128m -cp "$(java_cp)" -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    org.apache.kafka.tools.ClusterTool cluster-id --bootstrap-server "127.0.0.1:$(plain_port "$1")" >/dev/null 2>&1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_node() {
  local i=$1
  nohup java -Xms"$HEAP" -Xmx"$HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$DATA/log4j2.properties" \
    -cp "$(java_cp)" kafka.Kafka "$DATA/node$i/server.properties" \
    >"$DATA/node$i/server.log" 2>&1 </dev/null &
  echo $! >"$DATA/node$i/pid"
}

cmd_start() {
  local n=1
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --brokers) n="$2"; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  if [[ -f "$DATA/nodes" ]] && alive 0; then
    if [[ "$(node_count)" != "$n" ]]; then
      die "a $(node_count)-node cluster already runs; stop it first"
    fi
    echo "kafka.sh: already running" >&2
    bootstrap
    return
  fi
  command -v java >/dev/null || die "java (17+) is required"
  # A port already answering belongs to someone else (another data dir's
  # broker, another program): starting would only seem to work.
  local j port
  for ((j = 0; j < n; j++)); do
    for port in "$(plain_port "$j")" "$(controller_port "$j")" "$(sasl_port "$j")" "$(ssl_port "$j")"; do
      if port_open "$port"; then
        die "port $port is already in use (another broker? stop it, or set KAFKA_PORT)"
      fi
    done
  done
  ensure_jars
  rm -rf "$DATA"
  mkdir -p "$DATA"
  echo "$n" >"$DATA/nodes"
  write_log_config
  local i cluster_id
  cluster_id=$(run_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
  [[ -n "$cluster_id" ]] || die "could not generate a cluster id"
  for ((i = 0; i < n; i++)); do
    write_node_config "$i" "$n"
    run_java kafka.tools.StorageTool format -t "$cluster_id" -c "$DATA/node$i/server.properties" \
      --add-scram "SCRAM-SHA-256=[name=$ADMIN_USER,password=$ADMIN_PASSWORD]" \
      --add-scram "SCRAM-SHA-512=[name=$ADMIN_USER,password=$ADMIN_PASSWORD]" \
      >"$DATA/node$i/format.log" 2>&1 || { cat "$DATA/node$i/format.log" >&2; die "formatting node $i failed"; }
  done
  for ((i = 0; i < n; i++)); do start_node "$i"; done
  local deadline=$((SECONDS + TIMEOUT))
  for ((i = 0; i < n; i++)); do
    until port_open "$(plain_port "$i")" && answers "$i"; do
      if ! alive "$i"; then
        # the cause first (a port in use, a bad keystore), then the log's end
        grep -m 10 -E "ERROR|FATAL|Exception" "$DATA/node$i/server.log" >&2 || true
        tail -n 20 "$DATA/node$i/server.log" >&2
        die "node $i exited during start (log above: $DATA/node$i/server.log)"
      fi
      if ((SECONDS > deadline)); then
        tail -n 40 "$DATA/node$i/server.log" >&2
        die "node $i did not answer within ${TIMEOUT}s (log above)"
      fi
      sleep 0.5
    done
  done
  bootstrap
}

cmd_status() {
  [[ -f "$DATA/nodes" ]] || { echo "stopped"; return 1; }
  local n i ok=0
  n=$(node_count)
  for ((i = 0; i < n; i++)); do
    if alive "$i" && answers "$i"; then
      echo "node $i: running on 127.0.0.1:$(plain_port "$i") (SASL 127.0.0.1:$(sasl_port "$i"))"
    else
      echo "node $i: not answering"; ok=1
    fi
  done
  return $ok
}

cmd_stop() {
  [[ -f "$DATA/nodes" ]] || { echo "kafka.sh: not running" >&2; return 0; }
  local n i p
  n=$(node_count)
  for ((i = 0; i < n; i++)); do
    p=$(pid_of "$i")
    [[ -n "$p" ]] && kill "$p" 2>/dev/null || true
  done
  local deadline=$((SECONDS + 30))
  for ((i = 0; i < n; i++)); do
    while alive "$i"; do
      if ((SECONDS > deadline)); then kill -9 "$(pid_of "$i")" 2>/dev/null || true; fi
      sleep 0.2
    done
    rm -f "$DATA/node$i/pid"
  done
  rm -f "$DATA/nodes"
  echo "kafka.sh: stopped" >&2
}

# Starts or stops a single node of a running cluster (for broker-failure tests).
cmd_node() {
  local action=$1 i=$2
  case "$action" in
    kill) kill -9 "$(pid_of "$i")" 2>/dev/null || true ;;
    start) alive "$i" || start_node "$i" ;;
    *) die "usage: kafka.sh node kill|start INDEX" ;;
  esac
}

admin_properties() {
  local f="$DATA/admin.properties"
  cat >"$f" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-256
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ADMIN_USER" password="$ADMIN_PASSWORD";
EOF
  echo "$f"
}

# One of Kafka's command-line tools by its class name in the release being
# run: org.apache.kafka.tools.NAME where the kafka-tools jar holds it (the
# config tool from Kafka 4.4 on, the ACL tool from 4.0 on), kafka.admin.NAME
# before. (A jar's file names are stored uncompressed, so grep finds the
# class without unpacking it.)
tool_class() {
  if grep -qa "org/apache/kafka/tools/$1.class" "$JARS"/kafka-tools-*.jar 2>/dev/null; then
    echo "org.apache.kafka.tools.$1"
  else
    echo "kafka.admin.$1"
  fi
}

# Creates (or updates) a SCRAM-SHA-256/512 user: kafka.sh user NAME PASSWORD
cmd_user() {
  [[ $# -eq 2 ]] || die "usage: kafka.sh user NAME PASSWORD"
  local tool
  tool=$(tool_class ConfigCommand)
  run_java "$tool" --bootstrap-server "127.0.0.1:$(sasl_port 0)" \
    --command-config "$(admin_properties)" --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-256=[password=$2]" >/dev/null
  run_java "$tool" --bootstrap-server "127.0.0.1:$(sasl_port 0)" \
    --command-config "$(admin_properties)" --alter --entity-type users --entity-name "$1" \
    --add-config "SCRAM-SHA-512=[password=$2]" >/dev/null
}

# Runs Kafka's ACL tool as the admin: kafka.sh acl --add --allow-principal User:x ...
cmd_acl() {
  run_java "$(tool_class AclCommand)" --bootstrap-server "127.0.0.1:$(sasl_port 0)" \
    --command-config "$(admin_properties)" "$@" >/dev/null
}

# (Re)creates a topic: kafka.sh topic NAME PARTITIONS [KEY=VALUE ...]
cmd_topic() {
  [[ $# -ge 2 ]] || die "usage: kafka.sh topic NAME PARTITIONS [KEY=VALUE ...]"
  local name=$1 parts=$2 bs
  shift 2
  bs="127.0.0.1:$(plain_port 0)"
  local cfg=()
  for kv in "$@"; do cfg+=(--config "$kv"); done
  run_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --delete --if-exists --topic "$name" >/dev/null 2>&1 || true
  local deadline=$((SECONDS + 60))
  until run_java org.apache.kafka.tools.TopicCommand --bootstrap-server "$bs" --create --topic "$name" \
      --partitions "$parts" --replication-factor 1 "${cfg[@]}" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "could not create topic $name"
    sleep 0.5
  done
}

# Deletes every topic whose name matches the regular expression.
cmd_delete_topics() {
  [[ $# -eq 1 ]] || die "usage: kafka.sh delete-topics REGEX"
  run_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$(plain_port 0)" \
    --delete --if-exists --topic "$1" >/dev/null
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  bootstrap) bootstrap ;;
  node) shift; cmd_node "$@" ;;
  user) shift; cmd_user "$@" ;;
  acl) shift; cmd_acl "$@" ;;
  topic) shift; cmd_topic "$@" ;;
  delete-topics) shift; cmd_delete_topics "$@" ;;
  *) echo "usage: $0 start [--brokers N] | status | stop | bootstrap | node kill|start INDEX | user NAME PASSWORD | acl ARGS... | topic NAME PARTITIONS [KEY=VALUE...] | delete-topics REGEX" >&2; exit 2 ;;
esac
