#!/usr/bin/env bash
# Starts a single-node Apache Kafka (KRaft, combined broker and controller) with its data
# under DIR, waits until it serves requests, and prints one line of key=value pairs:
#   pid= bootstrap= (PLAINTEXT) sasl_plaintext= ssl= (mTLS) sasl_ssl= ca= client_cert=
#   client_key= user= password= dir= log=
# The first start picks free 127.0.0.1 ports, generates a CA, server and client
# certificates and the SASL users (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, one password), and
# formats the log folder. Starting again on the same DIR restarts the same broker: same
# ports, users, certificates and data. Killing the pid stops it.
#   start.sh DIR
# With KAFKA_WATCH_PID set, the broker is stopped when that process exits, so a test run
# never leaks one; with KAFKA_REMOVE_AFTER=1 too, DIR is removed after. KAFKA_HEAP (default
# 512m) sets the JVM heap; KAFKA_PORT asks for the PLAINTEXT port at the first start.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:?usage: start.sh DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
KAFKA=$(bash "$HERE/install.sh")
log() { echo "kafka-start: $*" >&2; }

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

# A CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by it;
# PEM files, unencrypted PKCS#8 keys, so neither side needs a keystore tool.
make_certificates() {
  local tls=$DIR/tls
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=weir-test-ca" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  local name
  for name in server client; do
    local cn=weir-test-$name ext="subjectAltName=IP:127.0.0.1,DNS:localhost"
    [ "$name" = client ] && ext="extendedKeyUsage=clientAuth"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$tls/$name.key" -out "$tls/$name.csr" 2>/dev/null
    openssl x509 -req -in "$tls/$name.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
      -days 3650 -extfile <(echo "$ext") -out "$tls/$name.crt" 2>/dev/null
    rm "$tls/$name.csr"
  done
  cat "$tls/server.key" "$tls/server.crt" > "$tls/server-keystore.pem"
}

JAVA=(java -Xmx"${KAFKA_HEAP:-512m}" -Xms128m -XX:+UseG1GC -Djava.awt.headless=true
      -Dlog4j2.configurationFile="$KAFKA/log4j2.yaml" -cp "$KAFKA/lib/*")

if [ ! -f "$DIR/broker.env" ]; then
  read -r PLAIN SASL SSL SASL_SSL CONTROLLER <<<"$(free_ports 5)"
  PLAIN=${KAFKA_PORT:-$PLAIN}
  PASSWORD=$(openssl rand -hex 12)
  make_certificates
  jaas_plain="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"weir\" password=\"$PASSWORD\" user_weir=\"$PASSWORD\";"
  jaas_scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  cat > "$DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$PLAIN,SASL_PLAINTEXT://127.0.0.1:$SASL,SSL://127.0.0.1:$SSL,SASL_SSL://127.0.0.1:$SASL_SSL,CONTROLLER://127.0.0.1:$CONTROLLER
advertised.listeners=PLAINTEXT://127.0.0.1:$PLAIN,SASL_PLAINTEXT://127.0.0.1:$SASL,SSL://127.0.0.1:$SSL,SASL_SSL://127.0.0.1:$SASL_SSL
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$DIR/data
num.partitions=1
# As on most production clusters: a topic exists only once created.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Test data carries event times from 2023 and window results are stamped with their event
# time: the default 7-day time retention would delete them at the first cleanup, 30 s in.
log.retention.ms=-1
# Tests kill members and expect their partitions back soon.
group.min.session.timeout.ms=1000
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=$jaas_plain
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=$jaas_scram
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=$jaas_scram
listener.name.sasl_ssl.plain.sasl.jaas.config=$jaas_plain
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$jaas_scram
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$jaas_scram
ssl.keystore.type=PEM
ssl.keystore.location=$DIR/tls/server-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$DIR/tls/ca.crt
listener.name.ssl.ssl.client.auth=required
PROPS
  # What `kafka-storage.sh random-uuid` prints: a random UUID, base64url without padding,
  # drawn again when it starts with "-" (as Kafka's Uuid.randomUuid does): the tool's
  # argument parser would take such an id for an option, one start in 64.
  CLUSTER_ID=$(python3 -c '
import base64, uuid
while (id := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"):
    pass
print(id)')
  "${JAVA[@]}" kafka.tools.StorageTool format --standalone --cluster-id="$CLUSTER_ID" -c "$DIR/server.properties" \
    --add-scram "SCRAM-SHA-256=[name=weir,password=$PASSWORD]" \
    --add-scram "SCRAM-SHA-512=[name=weir,password=$PASSWORD]" >"$DIR/format.log" 2>&1 \
    || { cat "$DIR/format.log" >&2; exit 1; }
  cat > "$DIR/broker.env" <<ENV
bootstrap=127.0.0.1:$PLAIN sasl_plaintext=127.0.0.1:$SASL ssl=127.0.0.1:$SSL sasl_ssl=127.0.0.1:$SASL_SSL ca=$DIR/tls/ca.crt client_cert=$DIR/tls/client.crt client_key=$DIR/tls/client.key user=weir password=$PASSWORD dir=$DIR log=$DIR/kafka.log
ENV
fi

INFO=$(cat "$DIR/broker.env")
# Already running on this DIR: say so, as a start would.
if [ -f "$DIR/kafka.pid" ] && kill -0 "$(cat "$DIR/kafka.pid")" 2>/dev/null \
    && grep -q "kafka.Kafka" "/proc/$(cat "$DIR/kafka.pid")/cmdline" 2>/dev/null; then
  echo "pid=$(cat "$DIR/kafka.pid") $INFO"
  exit 0
fi
PLAIN_ADDR=$(sed -n 's/^bootstrap=\([^ ]*\).*/\1/p' <<<"$INFO")
# The log of an earlier run stays beside the new one.
[ -f "$DIR/kafka.log" ] && mv "$DIR/kafka.log" "$DIR/kafka.log.1"
# Its own session: a test's Ctrl-C or a killed parent does not take the broker with it
# unless asked (KAFKA_WATCH_PID).
setsid "${JAVA[@]}" kafka.Kafka "$DIR/server.properties" >"$DIR/kafka.log" 2>&1 </dev/null &
PID=$!
echo "$PID" > "$DIR/kafka.pid"
if [ -n "${KAFKA_WATCH_PID:-}" ]; then
  (while kill -0 "$KAFKA_WATCH_PID" 2>/dev/null && kill -0 "$PID" 2>/dev/null; do sleep 1; done
   if kill "$PID" 2>/dev/null; then
     while kill -0 "$PID" 2>/dev/null; do sleep 0.5; done
   fi
   if [ "${KAFKA_REMOVE_AFTER:-}" = 1 ] && ! kill -0 "$KAFKA_WATCH_PID" 2>/dev/null; then rm -rf "$DIR"; fi
  ) >/dev/null 2>&1 </dev/null &
fi

# Ready once the server says it started and its PLAINTEXT listener accepts connections.
deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
until grep -q "Kafka Server started" "$DIR/kafka.log" 2>/dev/null \
    && (exec 3<>"/dev/tcp/${PLAIN_ADDR%:*}/${PLAIN_ADDR#*:}") 2>/dev/null; do
  if ! kill -0 "$PID" 2>/dev/null; then
    log "the broker exited; the end of $DIR/kafka.log:"; tail -30 "$DIR/kafka.log" >&2; exit 1
  fi
  if [ $SECONDS -ge $deadline ]; then
    log "the broker did not start in time; the end of $DIR/kafka.log:"; tail -30 "$DIR/kafka.log" >&2
    kill "$PID" 2>/dev/null; exit 1
  fi
  sleep 0.2
done
echo "pid=$PID $INFO"
