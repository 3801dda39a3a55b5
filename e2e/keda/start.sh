#!/usr/bin/env bash
# Starts KEDA — its operator and its metrics adapter, built by install.sh — as local
# processes for the cluster of $KUBECONFIG (an admin's), and waits until the external
# metrics API it serves through the aggregation layer is Available.
#   KUBECONFIG=... start.sh RUN_DIR   (env: KUBECTL, default kubectl; WATCH_PID: stop KEDA
#                                      when this process exits)
# Installs what KEDA's own manifests (its module's config/default, rendered with kubectl's
# kustomize) declare except its Deployments, Services and webhooks: the keda namespace,
# its CRDs, ServiceAccount and RBAC, and the APIService, with the adapter's Service an
# ExternalName for 127.0.0.1 (no kube-proxy routes cluster IPs here). Both processes run
# with a token of KEDA's ServiceAccount, so the API server enforces KEDA's own RBAC.
# Writes RUN_DIR/keda.env (the ports), certificates, pid files and logs; stop.sh RUN_DIR
# stops it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../lib.sh"
RUN=${1:?usage: start.sh RUN_DIR}
KUBECTL=${KUBECTL:-kubectl}
: "${KUBECONFIG:?KUBECONFIG must name an admin kubeconfig of the cluster}"
BUILD=$("$HERE/install.sh" | tail -1)
MODULE_CONFIG=$BUILD/config
mkdir -p "$RUN/certs"
RUN=$(cd "$RUN" && pwd)
started=$(date +%s%N)
k() { "$KUBECTL" "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# One certificate for the operator's gRPC metrics service and the adapter's API, as KEDA's
# own certificate rotation makes it, from a CA of its own.
certs=$RUN/certs
if [ ! -f "$certs/tls.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=keda-local-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=keda-operator" -keyout "$certs/tls.key" -out "$certs/tls.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth,clientAuth" \
    "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:keda-operator.keda.svc,DNS:keda-operator.keda.svc.cluster.local,DNS:keda-metrics-apiserver.keda.svc,DNS:keda-metrics-apiserver.keda.svc.cluster.local" \
    > "$certs/tls.ext"
  openssl x509 -req -in "$certs/tls.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial \
    -days 3650 -extfile "$certs/tls.ext" -out "$certs/tls.crt" 2>/dev/null
fi

OPERATOR_METRICS=$(free_port) OPERATOR_HEALTH=$(free_port) OPERATOR_GRPC=$(free_port)
ADAPTER_PORT=$(free_port) ADAPTER_METRICS=$(free_port)
cat > "$RUN/keda.env" <<ENV
OPERATOR_METRICS=$OPERATOR_METRICS OPERATOR_HEALTH=$OPERATOR_HEALTH OPERATOR_GRPC=$OPERATOR_GRPC ADAPTER_PORT=$ADAPTER_PORT ADAPTER_METRICS=$ADAPTER_METRICS
ENV

# KEDA's manifests, less what runs (its Deployments, their Services, the webhooks); kubectl
# turns its kustomize output into JSON, so no YAML library is needed.
k kustomize "$MODULE_CONFIG/default" | k create --dry-run=client -o json -f - > "$RUN/keda-manifests.json"
python3 - "$RUN/keda-manifests.json" "$certs/ca.crt" "$ADAPTER_PORT" > "$RUN/keda-install.json" <<'PY'
import base64, json, sys
stream, ca, port = open(sys.argv[1]).read(), open(sys.argv[2], "rb").read(), int(sys.argv[3])
kept = {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
# One JSON document per object, one after the other.
items, at, decoder = [], 0, json.JSONDecoder()
while stream[at:].strip():
    item, end = decoder.raw_decode(stream, at + len(stream[at:]) - len(stream[at:].lstrip()))
    items.append(item)
    at = end
objects = [o for o in items if o["kind"] in kept]
for o in items:
    if o["kind"] == "APIService":
        o["spec"]["caBundle"] = base64.b64encode(ca).decode()
        o["spec"]["service"]["port"] = port
        o["spec"].pop("insecureSkipTLSVerify", None)
        objects.append(o)
objects.append({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "keda-metrics-apiserver", "namespace": "keda"},
                "spec": {"type": "ExternalName", "externalName": "localhost", "ports": [{"name": "https", "port": port}]}})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
PY
# Server-side: KEDA's CRDs are too large for the last-applied annotation.
k apply --server-side --force-conflicts --field-manager=keda-local -f "$RUN/keda-install.json" > /dev/null
k wait --for=condition=Established --timeout=60s crd/scaledobjects.keda.sh > /dev/null

# KEDA's ServiceAccount, as its pods would have it.
KUBECTL=$KUBECTL service_account_kubeconfig keda keda-operator "$RUN/keda.kubeconfig"

fail() {
  echo "keda: $1; last lines of $RUN/$2.log:" >&2
  tail -20 "$RUN/$2.log" >&2
  "$HERE/stop.sh" "$RUN"
  exit 1
}
# Out of a cluster KEDA reads its namespace from the environment.
export POD_NAMESPACE=keda KEDA_CLUSTER_OBJECT_NAMESPACE=keda WATCH_NAMESPACE=""
KUBECONFIG="$RUN/keda.kubeconfig" "$BUILD/bin/keda-operator" --leader-elect=false --zap-log-level=info \
  --zap-encoder=console --metrics-bind-address "127.0.0.1:$OPERATOR_METRICS" \
  --health-probe-bind-address "127.0.0.1:$OPERATOR_HEALTH" --metrics-service-bind-address "127.0.0.1:$OPERATOR_GRPC" \
  --cert-dir "$certs" --ca-dir "$certs" --enable-cert-rotation=false --enable-webhook-patching=false \
  --enable-apiservice-patching=false > "$RUN/operator.log" 2>&1 &
echo $! > "$RUN/operator.pid"
KUBECONFIG="$RUN/keda.kubeconfig" "$BUILD/bin/keda-adapter" --secure-port "$ADAPTER_PORT" --bind-address 127.0.0.1 \
  --tls-cert-file "$certs/tls.crt" --tls-private-key-file "$certs/tls.key" --cert-dir "$certs" \
  --authentication-kubeconfig "$RUN/keda.kubeconfig" --authorization-kubeconfig "$RUN/keda.kubeconfig" \
  --lister-kubeconfig "$RUN/keda.kubeconfig" \
  --port "$ADAPTER_METRICS" --metrics-service-address "127.0.0.1:$OPERATOR_GRPC" --zap-log-level=info \
  > "$RUN/adapter.log" 2>&1 &
echo $! > "$RUN/adapter.pid"

# Ready: the operator's probe answers and the API server finds the external metrics API.
for _ in $(seq 1 1200); do
  kill -0 "$(cat "$RUN/operator.pid")" 2>/dev/null || fail "the operator exited" operator
  kill -0 "$(cat "$RUN/adapter.pid")" 2>/dev/null || fail "the adapter exited" adapter
  if curl -fsS "http://127.0.0.1:$OPERATOR_HEALTH/readyz" >/dev/null 2>&1 \
    && [ "$(k get apiservice v1beta1.external.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ]; then
    break
  fi
  sleep 0.1
done
[ "$(k get apiservice v1beta1.external.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" = True ] \
  || fail "the external metrics API is not Available after 120 s" adapter

if [ -n "${WATCH_PID:-}" ]; then
  (while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done; "$HERE/stop.sh" "$RUN") >/dev/null 2>&1 &
fi
echo "keda ready in $(( ($(date +%s%N) - started) / 1000000 )) ms; operator health 127.0.0.1:$OPERATOR_HEALTH, adapter 127.0.0.1:$ADAPTER_PORT"
