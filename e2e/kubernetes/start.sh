#!/usr/bin/env bash
# Starts a local Kubernetes control plane on 127.0.0.1 — etcd, kube-apiserver,
# kube-controller-manager and kube-scheduler, built by install.sh — and waits until it
# serves and its controllers act.
#   start.sh RUN_DIR    (env: API_PORT, default 6443; ETCD_PORT, default 2379; ETCD_PEER_PORT,
#                        default ETCD_PORT+1; HPA_SYNC_PERIOD, default 15s as in Kubernetes;
#                        WATCH_PID: stop the cluster when this process exits, so a test run
#                        never leaks it)
# Writes RUN_DIR/kubeconfig (the admin, group system:masters), RUN_DIR/node.kubeconfig (the
# node agent, system:node:local), the PKI under RUN_DIR/pki, pid files and logs. Stop it
# with stop.sh RUN_DIR.
#
# The API server enforces what a real cluster does: Node and RBAC authorization, the
# default admission plugins (PodSecurity, ServiceAccount, ...) plus NodeRestriction,
# service-account tokens signed with the cluster's key, and the aggregation layer
# (front-proxy client certificate). There is no kubelet or kube-proxy: the node agent
# (e2e/src/agent) runs the pods bound to node "local", and Service cluster IPs route
# nowhere.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN=${1:?usage: start.sh RUN_DIR}
API_PORT=${API_PORT:-6443}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-$((ETCD_PORT + 1))}
HPA_SYNC_PERIOD=${HPA_SYNC_PERIOD:-15s}
BUILD=$("$HERE/install.sh" | tail -1)
mkdir -p "$RUN/pki"
RUN=$(cd "$RUN" && pwd)
started=$(date +%s%N)
NODE_NAME=local

# Certificates (X.509 v3, as rustls requires), kept across restarts of the same RUN_DIR.
pki="$RUN/pki"
ca() { # name subject
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "$2" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$pki/$1.key" -out "$pki/$1.crt" 2>/dev/null
}
sign() { # name subject ca extensions
  openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n%s\n' "$4" > "$pki/$1.ext"
  openssl x509 -req -in "$pki/$1.csr" -CA "$pki/$3.crt" -CAkey "$pki/$3.key" -CAcreateserial \
    -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
}
client=extendedKeyUsage=clientAuth
if [ ! -f "$pki/sa.pub" ]; then
  ca ca "/CN=weir-local-ca"
  sign apiserver "/CN=kube-apiserver" ca "$(printf 'extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local')"
  sign admin "/O=system:masters/CN=admin" ca "$client"
  sign node "/O=system:nodes/CN=system:node:$NODE_NAME" ca "$client"
  sign controller-manager "/CN=system:kube-controller-manager" ca "$client"
  sign scheduler "/CN=system:kube-scheduler" ca "$client"
  # The aggregation layer: the API server proxies to extension servers (KEDA's metrics
  # server) with this client certificate, from a CA of its own.
  ca front-proxy-ca "/CN=weir-local-front-proxy-ca"
  sign front-proxy-client "/CN=front-proxy-client" front-proxy-ca "$client"
  # Service-account tokens are signed with this key pair.
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
fi

b64() { base64 -w0 < "$1"; }
kubeconfig() { # file user
  cat > "$1" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(b64 "$pki/$2.crt")
    client-key-data: $(b64 "$pki/$2.key")
contexts:
- name: local
  context: {cluster: local, user: $2, namespace: default}
current-context: local
KUBECONFIG
}
kubeconfig "$RUN/kubeconfig" admin
kubeconfig "$RUN/node.kubeconfig" node
kubeconfig "$RUN/controller-manager.kubeconfig" controller-manager
kubeconfig "$RUN/scheduler.kubeconfig" scheduler

fail() {
  echo "kubernetes: $1; last lines of $RUN/$2.log:" >&2
  tail -20 "$RUN/$2.log" >&2
  # The API server fails when its etcd does: say why etcd did.
  if [ "$2" = apiserver ]; then echo "last lines of $RUN/etcd.log:" >&2; tail -10 "$RUN/etcd.log" >&2; fi
  "$HERE/stop.sh" "$RUN"
  exit 1
}
# Waits up to 60 s for `check` to succeed while the component behind `pidname` lives.
wait_for() { # pidname what check...
  local pidname=$1 what=$2
  shift 2
  for _ in $(seq 1 600); do
    kill -0 "$(cat "$RUN/$pidname.pid")" 2>/dev/null || fail "$pidname exited" "$pidname"
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  fail "$what not seen after 60 s" "$pidname"
}
admin_get() { curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$API_PORT$1"; }

"$BUILD/bin/etcd" --name local --data-dir "$RUN/etcd" --unsafe-no-fsync --log-level warn \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" > "$RUN/etcd.log" 2>&1 &
echo $! > "$RUN/etcd.pid"

# --endpoint-reconciler-type=none: the `kubernetes` Service would get 127.0.0.1 as its
# endpoint, which Endpoints validation refuses; nothing routes cluster IPs here anyway.
"$BUILD/bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --service-cluster-ip-range 10.0.0.0/24 --endpoint-reconciler-type none \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --requestheader-client-ca-file "$pki/front-proxy-ca.crt" --requestheader-allowed-names front-proxy-client \
  --requestheader-username-headers X-Remote-User --requestheader-group-headers X-Remote-Group \
  --requestheader-extra-headers-prefix X-Remote-Extra- \
  --proxy-client-cert-file "$pki/front-proxy-client.crt" --proxy-client-key-file "$pki/front-proxy-client.key" \
  --profiling=false > "$RUN/apiserver.log" 2>&1 &
echo $! > "$RUN/apiserver.pid"
wait_for apiserver "/readyz" admin_get /readyz

# Only the controllers that act without a kubelet's help and that Weir relies on. The node
# lifecycle controller lifts the not-ready taint of a node whose Lease the agent renews.
"$BUILD/bin/kube-controller-manager" --kubeconfig "$RUN/controller-manager.kubeconfig" \
  --authentication-kubeconfig "$RUN/controller-manager.kubeconfig" \
  --authorization-kubeconfig "$RUN/controller-manager.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --use-service-account-credentials \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --controllers deployment-controller,replicaset-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,horizontal-pod-autoscaler-controller,root-ca-certificate-publisher-controller,clusterrole-aggregation-controller,job-controller,statefulset-controller,disruption-controller,pod-garbage-collector-controller,ttl-after-finished-controller,node-lifecycle-controller \
  --horizontal-pod-autoscaler-sync-period "$HPA_SYNC_PERIOD" --kube-api-qps 100 --kube-api-burst 200 \
  > "$RUN/controller-manager.log" 2>&1 &
echo $! > "$RUN/controller-manager.pid"

"$BUILD/bin/kube-scheduler" --kubeconfig "$RUN/scheduler.kubeconfig" \
  --authentication-kubeconfig "$RUN/scheduler.kubeconfig" --authorization-kubeconfig "$RUN/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false --kube-api-qps 100 --kube-api-burst 200 \
  > "$RUN/scheduler.log" 2>&1 &
echo $! > "$RUN/scheduler.pid"

# The controllers act once the default ServiceAccount and the root CA ConfigMap exist.
wait_for controller-manager "the default ServiceAccount" admin_get /api/v1/namespaces/default/serviceaccounts/default
wait_for controller-manager "the kube-root-ca.crt ConfigMap" admin_get /api/v1/namespaces/default/configmaps/kube-root-ca.crt
kill -0 "$(cat "$RUN/scheduler.pid")" 2>/dev/null || fail "the scheduler exited" scheduler

if [ -n "${WATCH_PID:-}" ]; then
  (while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done; "$HERE/stop.sh" "$RUN") >/dev/null 2>&1 &
fi
echo "kubernetes ready on https://127.0.0.1:$API_PORT in $(( ($(date +%s%N) - started) / 1000000 )) ms; KUBECONFIG=$RUN/kubeconfig"
