#!/usr/bin/env bash
# Starts Prometheus, built by install.sh, as a local process for the cluster of $KUBECONFIG
# (an admin's), scraping every runtime pod's admin port through Kubernetes pod discovery,
# as the chart's PodMonitor has a Prometheus Operator do: port `admin`, path /metrics, the
# pod's namespace and name as labels. Waits until it is ready.
#   KUBECONFIG=... start.sh RUN_DIR   (env: KUBECTL, default kubectl; PROMETHEUS_PORT, default
#                                      a free port; SCRAPE_INTERVAL, default 5s (the chart's PodMonitor); WATCH_PID: stop
#                                      Prometheus when this process exits)
# Discovery runs with a token of ServiceAccount monitoring/prometheus, which may only read
# pods. Writes RUN_DIR/prometheus.env (PROMETHEUS_URL=...), its configuration, data, pid
# file and log; stop.sh RUN_DIR stops it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
RUN=${1:?usage: start.sh RUN_DIR}
KUBECTL=${KUBECTL:-kubectl}
: "${KUBECONFIG:?KUBECONFIG must name an admin kubeconfig of the cluster}"
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-5s}
BUILD=$("$HERE/install.sh" | tail -1)
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
started=$(date +%s%N)
k() { "$KUBECTL" "$@"; }
PORT=${PROMETHEUS_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# What Prometheus needs to discover pods, and nothing more.
k apply -f - > /dev/null <<'RBAC'
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: monitoring}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: prometheus, namespace: monitoring}}
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRole
  metadata: {name: prometheus-pod-discovery}
  rules: [{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}]
- apiVersion: rbac.authorization.k8s.io/v1
  kind: ClusterRoleBinding
  metadata: {name: prometheus-pod-discovery}
  roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: prometheus-pod-discovery}
  subjects: [{kind: ServiceAccount, name: prometheus, namespace: monitoring}]
RBAC
KUBECTL=$KUBECTL service_account_kubeconfig monitoring prometheus "$RUN/prometheus.kubeconfig"

cat > "$RUN/prometheus.yml" <<CONFIG
global:
  scrape_interval: $SCRAPE_INTERVAL
  scrape_timeout: $SCRAPE_INTERVAL
  evaluation_interval: $SCRAPE_INTERVAL
scrape_configs:
  - job_name: weir-runtime
    kubernetes_sd_configs:
      - role: pod
        kubeconfig_file: $RUN/prometheus.kubeconfig
        selectors: [{role: pod, label: weir.dev/streamjob}]
    relabel_configs:
      - {action: keep, source_labels: [__meta_kubernetes_pod_container_port_name], regex: admin}
      - {action: keep, source_labels: [__meta_kubernetes_pod_phase], regex: Running}
      - {source_labels: [__meta_kubernetes_namespace], target_label: namespace}
      - {source_labels: [__meta_kubernetes_pod_name], target_label: pod}
CONFIG

"$BUILD/bin/prometheus" --config.file "$RUN/prometheus.yml" --storage.tsdb.path "$RUN/data" \
  --storage.tsdb.retention.time 1d --web.listen-address "127.0.0.1:$PORT" --log.level warn \
  > "$RUN/prometheus.log" 2>&1 &
echo $! > "$RUN/prometheus.pid"
for _ in $(seq 1 600); do
  kill -0 "$(cat "$RUN/prometheus.pid")" 2>/dev/null || { echo "prometheus exited:" >&2; tail -20 "$RUN/prometheus.log" >&2; exit 1; }
  curl -fsS "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/-/ready" >/dev/null 2>&1 || { echo "prometheus: not ready after 60 s" >&2; "$HERE/stop.sh" "$RUN"; exit 1; }
echo "PROMETHEUS_URL=http://127.0.0.1:$PORT" > "$RUN/prometheus.env"

if [ -n "${WATCH_PID:-}" ]; then
  (while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done; "$HERE/stop.sh" "$RUN") >/dev/null 2>&1 &
fi
echo "prometheus ready on http://127.0.0.1:$PORT in $(( ($(date +%s%N) - started) / 1000000 )) ms"
