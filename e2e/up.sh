#!/usr/bin/env bash
# The local quickstart: the whole Weir stack on this machine, no cluster needed.
# Starts a Kafka-protocol broker (tansu), the local API server, the StreamJob CRD, the
# node agent (runs pods as local processes), the operator, and applies an example job.
# Stop it with e2e/down.sh.
#   up.sh            runs the operator as a local process
#   up.sh --chart    installs it from the Helm chart instead (rendered with Helm's engine,
#                    applied as `helm install` would); the node agent runs its two replicas
#   env: WEIR_RUN (state folder, default ~/.cache/weir/local), API_PORT (6443), KAFKA_PORT (9092)
set -euo pipefail
FROM_CHART=false
case "${1:-}" in
  --chart) FROM_CHART=true ;;
  "") ;;
  *) echo "usage: up.sh [--chart]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUN=${WEIR_RUN:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/local}
API_PORT=${API_PORT:-6443}
KAFKA_PORT=${KAFKA_PORT:-9092}
RUNTIME_IMAGE=ghcr.io/weir-dev/weir-runtime
OPERATOR_IMAGE=ghcr.io/weir-dev/weir-operator

bash e2e/setup-debian.sh
bash e2e/devcluster/install.sh >/dev/null
TANSU=$(bash e2e/broker/install-tansu.sh | tail -1)
echo "Building weir-operator, weir-runtime and weir-node-agent..."
cargo build --workspace --bins --locked
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if ! running "$RUN/broker/tansu.pid"; then
  bash e2e/broker/run-tansu.sh "$KAFKA_PORT" "$RUN/broker"
fi
API_PORT=$API_PORT ETCD_PORT=${ETCD_PORT:-2379} bash e2e/devcluster/start.sh "$RUN/devcluster"
export KUBECONFIG="$RUN/devcluster/kubeconfig"
if $FROM_CHART; then
  # What `helm install weir charts/weir -n weir-system` does: the chart's CRD, then the
  # rendered templates. Pods share this host's network, so the operator listens on its
  # pod's own address.
  PYTHON=$(bash e2e/chart/install-helm-sdk.sh | tail -1)
  kubectl apply -f charts/weir/crds/streamjob.yaml
  kubectl create namespace weir-system --dry-run=client -o yaml | kubectl apply -f -
  "$PYTHON" e2e/chart/render.py charts/weir --name weir --namespace weir-system \
    --set 'metrics.listenHost=$(POD_IP)' --set logFormat=text --set resyncInterval=10s \
    | kubectl apply --server-side --field-manager=helm -f -
  SELECTOR='app.kubernetes.io/name in (weir-operator,weir-runtime)'
else
  kubectl apply -f crds/streamjob.yaml
  SELECTOR=weir.dev/streamjob
fi
kubectl wait --for=condition=Established --timeout=30s crd/streamjobs.weir.dev

if ! running "$RUN/agent.pid"; then
  "$BIN/weir-node-agent" --kubeconfig "$KUBECONFIG" --state-dir "$RUN/agent" --log-format text \
    --selector "$SELECTOR" --image "$RUNTIME_IMAGE=$BIN/weir-runtime" --image "$OPERATOR_IMAGE=$BIN/weir-operator" \
    > "$RUN/agent.log" 2>&1 &
  echo $! > "$RUN/agent.pid"
fi
if $FROM_CHART; then
  OPERATOR_LOGS="$RUN/agent/pods/weir-system/weir-operator-*/operator.log"
  kubectl -n weir-system rollout status deployment/weir-operator --timeout=60s
elif ! running "$RUN/operator.pid"; then
  KUBECONFIG=$KUBECONFIG "$BIN/weir-operator" --runtime-image "$RUNTIME_IMAGE:0.1.0" --log-format text \
    --metrics-addr 127.0.0.1:${OPERATOR_PORT:-8080} --resync-interval 10s > "$RUN/operator.log" 2>&1 &
  echo $! > "$RUN/operator.pid"
fi
OPERATOR_LOGS=${OPERATOR_LOGS:-$RUN/operator.log}

# The example's topics; it reads `payments` and writes `spend-per-minute`.
for topic in payments spend-per-minute; do
  "$TANSU" topic create "$topic" --broker "tcp://127.0.0.1:$KAFKA_PORT" --partitions 2 >/dev/null 2>&1 || true
done
# Checkpoints go to the state folder here, not to a pod volume.
sed -e "s|127.0.0.1:9092|127.0.0.1:$KAFKA_PORT|g" -e "s|file:///var/lib/weir/checkpoints|file://$RUN/checkpoints|" \
  examples/spend-per-user.yaml | kubectl apply -f -
if kubectl wait --for=jsonpath='{.status.phase}'=Running --timeout=120s streamjob/spend-per-user >/dev/null; then
  kubectl get streamjobs
  kubectl get pods -o wide
else
  echo "The job did not reach Running; see $OPERATOR_LOGS and $RUN/agent.log" >&2
  kubectl get streamjobs -o yaml >&2
  exit 1
fi
cat <<MSG

Weir is running locally.
  export KUBECONFIG=$KUBECONFIG
  kubectl get sj                     # jobs, phase, parallelism, lag
  kubectl scale sj/spend-per-user --replicas=1
  Kafka: 127.0.0.1:$KAFKA_PORT (topics payments -> spend-per-minute)
  Logs: $OPERATOR_LOGS, $RUN/agent.log, pods under $RUN/agent
Stop it with: bash e2e/down.sh
MSG
