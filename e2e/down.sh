#!/usr/bin/env bash
# Stops what e2e/up.sh started: the payments generator, operator, node agent (and its
# pods), KEDA, Prometheus, the Kubernetes control plane, broker.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${WEIR_RUN:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/local}

stop() { # pid-file: SIGTERM, then wait up to 70 s (pods get 60 s to drain) before SIGKILL
  [ -f "$1" ] || return 0
  local pid
  pid=$(cat "$1")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 700); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}
stop "$RUN/payments.pid"
stop "$RUN/operator.pid"
stop "$RUN/agent.pid"
[ -d "$RUN/keda" ] && bash e2e/keda/stop.sh "$RUN/keda"
[ -d "$RUN/prometheus" ] && bash e2e/prometheus/stop.sh "$RUN/prometheus"
[ -d "$RUN/kubernetes" ] && bash e2e/kubernetes/stop.sh "$RUN/kubernetes"
stop "$RUN/kafka/kafka.pid"
PODS=${WEIR_PODS:-/var/tmp/weir-local-$(id -u)}
echo "Local stack stopped (state kept in $RUN and $PODS; delete both for a fresh start)."
