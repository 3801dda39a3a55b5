#!/usr/bin/env bash
# The local quickstart: starts the local control plane, installs the StreamJob CRD and
# applies an example job. Stop it with e2e/down.sh.
#   env: WEIR_RUN (state folder, default ~/.cache/weir/local), API_PORT (default 6443)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${WEIR_RUN:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/local}
bash e2e/setup-debian.sh
mkdir -p "$RUN"
API_PORT=${API_PORT:-6443} ETCD_PORT=${ETCD_PORT:-2379} bash e2e/devcluster/start.sh "$RUN/devcluster"
export KUBECONFIG="$RUN/devcluster/kubeconfig"
kubectl apply -f crds/streamjob.yaml
for _ in $(seq 1 100); do kubectl get streamjobs >/dev/null 2>&1 && break; sleep 0.1; done
kubectl apply -f examples/spend-per-user.yaml
kubectl get streamjobs
echo
echo "Local stack is up. Use it with: export KUBECONFIG=$KUBECONFIG"
echo "Stop it with: bash e2e/down.sh"
