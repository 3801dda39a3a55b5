#!/usr/bin/env bash
# Stops what e2e/up.sh started: the payments generator, operator, node agent (and its
# pods), KEDA, Prometheus, the Kubernetes control plane, broker.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${WEIR_RUN:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/local}

. e2e/lib.sh
# SIGTERM, then up to 70 s (pods get 60 s to drain) before SIGKILL.
stop() { stop_pid "$1" 70; }
stop "$RUN/payments.pid"
stop "$RUN/operator.pid"
stop "$RUN/agent.pid"
[ -d "$RUN/keda" ] && bash e2e/keda/stop.sh "$RUN/keda"
[ -d "$RUN/prometheus" ] && bash e2e/prometheus/stop.sh "$RUN/prometheus"
[ -d "$RUN/kubernetes" ] && bash e2e/kubernetes/stop.sh "$RUN/kubernetes"
stop "$RUN/kafka/kafka.pid"
PODS=${WEIR_PODS:-/var/tmp/weir-local-$(id -u)}
echo "Local stack stopped (state kept in $RUN and $PODS; delete both for a fresh start)."
