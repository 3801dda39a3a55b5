#!/usr/bin/env bash
# The local quickstart: the whole Weir stack on this machine, no cluster needed.
# Starts Apache Kafka, a local Kubernetes control plane (kube-apiserver, controller-manager,
# scheduler), KEDA (operator and metrics adapter), Prometheus, the StreamJob CRD, the node agent (the
# kubelet: runs pods as local processes), the operator, applies an example job and starts a generator of sample
# payments for it. Stop it with e2e/down.sh.
#   up.sh            runs the operator as a local process
#   up.sh --chart    installs it from the Helm chart instead (rendered with Helm's engine,
#                    applied as `helm install` would); the node agent runs its two replicas
#   env: WEIR_RUN (state folder, default ~/.cache/weir/local), WEIR_PODS (the pods' folders
#        and checkpoints, default /var/tmp/weir-local-$UID), API_PORT (6443), KAFKA_PORT (9092)
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
KUBE_BIN=$(bash e2e/kubernetes/install.sh | tail -1)/bin
# kubectl of the cluster's own release.
kubectl() { "$KUBE_BIN/kubectl" "$@"; }
bash e2e/kafka/install.sh >/dev/null
bash e2e/keda/install.sh >/dev/null
bash e2e/prometheus/install.sh >/dev/null
echo "Building weir-operator, weir-runtime and weir-node-agent..."
cargo build --workspace --bins --locked
BIN=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
# The pods run as the users their securityContext names (the runtime as 65532), so what
# they read and write sits where other users may enter, not under a home folder. The
# checkpoint folder stands for a shared volume: any pod user may write it.
PODS=${WEIR_PODS:-/var/tmp/weir-local-$(id -u)}
install -d -m 0755 "$PODS"
install -d -m 1777 "$PODS/checkpoints"

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Apache Kafka, PLAINTEXT on $KAFKA_PORT (its SASL and TLS listeners on free ports).
KAFKA_PORT=$KAFKA_PORT bash e2e/kafka/start.sh "$RUN/kafka" > "$RUN/kafka.env"
BOOTSTRAP=$(sed -n 's/.* bootstrap=\([^ ]*\).*/\1/p' "$RUN/kafka.env")
API_PORT=$API_PORT ETCD_PORT=${ETCD_PORT:-2379} bash e2e/kubernetes/start.sh "$RUN/kubernetes"
export KUBECONFIG="$RUN/kubernetes/kubeconfig"
# KEDA before the operator, which looks for its ScaledObject API when it starts.
if ! running "$RUN/keda/operator.pid"; then
  KUBECTL=$KUBE_BIN/kubectl bash e2e/keda/start.sh "$RUN/keda"
fi
# Prometheus scrapes the runtime pods' lag, which KEDA's Prometheus trigger reads.
if ! running "$RUN/prometheus/prometheus.pid"; then
  KUBECTL=$KUBE_BIN/kubectl PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090} bash e2e/prometheus/start.sh "$RUN/prometheus"
fi
PROMETHEUS_URL=$(sed -n 's/^PROMETHEUS_URL=//p' "$RUN/prometheus/prometheus.env")
if $FROM_CHART; then
  # What `helm install weir charts/weir -n weir-system` does: the chart's CRDs, then the
  # rendered templates. Pods share this host's network, so the operator listens on its
  # pod's own address.
  PYTHON=$(bash e2e/chart/install-helm-sdk.sh | tail -1)
  kubectl apply -f charts/weir/crds/
  kubectl create namespace weir-system --dry-run=client -o yaml | kubectl apply -f -
  "$PYTHON" e2e/chart/render.py charts/weir --name weir --namespace weir-system \
    --set 'metrics.listenHost=$(POD_IP)' --set logFormat=text --set resyncInterval=10s \
    --set "prometheusAddress=$PROMETHEUS_URL" \
    | kubectl apply --server-side --field-manager=helm -f -
else
  kubectl apply -f crds/
fi
kubectl wait --for=condition=Established --timeout=30s crd/streamjobs.weir.dev crd/streamjobsavepoints.weir.dev

if ! running "$RUN/agent.pid"; then
  "$BIN/weir-node-agent" --kubeconfig "$RUN/kubernetes/node.kubeconfig" --state-dir "$PODS/agent" --log-format text \
    --image "$RUNTIME_IMAGE=$BIN/weir-runtime" --image "$OPERATOR_IMAGE=$BIN/weir-operator" \
    > "$RUN/agent.log" 2>&1 &
  echo $! > "$RUN/agent.pid"
fi
if $FROM_CHART; then
  OPERATOR_LOGS="$PODS/agent/pods/weir-system/weir-operator-*/operator.log"
  kubectl -n weir-system rollout status deployment/weir-operator --timeout=60s
elif ! running "$RUN/operator.pid"; then
  KUBECONFIG=$KUBECONFIG "$BIN/weir-operator" --runtime-image "$RUNTIME_IMAGE:0.1.0" --log-format text \
    --metrics-addr 127.0.0.1:${OPERATOR_PORT:-8080} --resync-interval 10s --prometheus-address "$PROMETHEUS_URL" \
    > "$RUN/operator.log" 2>&1 &
  echo $! > "$RUN/operator.pid"
fi
OPERATOR_LOGS=${OPERATOR_LOGS:-$RUN/operator.log}

# The example's topics; it reads `payments` and writes `spend-per-minute`.
for topic in payments spend-per-minute; do
  bash e2e/kafka/tool.sh topics --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$topic" --partitions 2 >/dev/null
done
# Sample payments, 50 a second after a burst of 5,000 (so lag shows at first).
if ! running "$RUN/payments.pid"; then
  "$BIN/weir-sample-payments" --bootstrap "$BOOTSTRAP" --topic payments --rate 50 --burst 5000 \
    > "$RUN/payments.log" 2>&1 &
  echo $! > "$RUN/payments.pid"
fi
# Checkpoints go to a folder of this machine here, not to a pod volume.
sed -e "s|127.0.0.1:9092|$BOOTSTRAP|g" -e "s|file:///var/lib/weir/checkpoints|file://$PODS/checkpoints|" \
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

Weir is running locally, and sample payments flow into it (50 a second).
  export KUBECONFIG=$KUBECONFIG PATH=$KUBE_BIN:\$PATH   # kubectl of the cluster's release
  kubectl get sj                     # jobs, phase, parallelism, lag
  kubectl scale sj/spend-per-user --replicas=1   # a rescale through a savepoint
  kubectl get sj spend-per-user -o jsonpath='{.status.lastSavepoint}'
  Results, one per user and minute once the minute closes:
  bash e2e/kafka/tool.sh console-consumer --bootstrap-server $BOOTSTRAP --topic spend-per-minute \\
    --from-beginning --formatter-property print.key=true
  Kafka: $BOOTSTRAP (topics payments -> spend-per-minute; other listeners in $RUN/kafka.env)
  Prometheus: $PROMETHEUS_URL (sum(weir_consumer_lag) by (streamjob))
  Logs: $OPERATOR_LOGS, $RUN/agent.log, pods under $PODS/agent, $RUN/kafka/kafka.log,
    KEDA's in $RUN/keda, Prometheus's in $RUN/prometheus
Stop it with: bash e2e/down.sh
MSG
