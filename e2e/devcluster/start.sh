#!/usr/bin/env bash
# Starts etcd and the devcluster API server on 127.0.0.1 and waits until it is ready.
#   start.sh RUN_DIR    (env: API_PORT, default 6443; ETCD_PORT, default 2379; ETCD_PEER_PORT, default ETCD_PORT+1;
#                        WATCH_PID: stop the cluster when this process exits, so a test run never leaks it)
# Writes RUN_DIR/kubeconfig (a generated CA, a serving certificate for 127.0.0.1 and an
# admin client certificate), RUN_DIR/etcd.pid and RUN_DIR/apiserver.pid, logs beside them.
# Stop it with stop.sh RUN_DIR.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RUN=${1:?usage: start.sh RUN_DIR}
API_PORT=${API_PORT:-6443}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=${ETCD_PEER_PORT:-$((ETCD_PORT + 1))}
BUILD=$("$HERE/install.sh" | tail -1)
mkdir -p "$RUN/pki"
RUN=$(cd "$RUN" && pwd)
started=$(date +%s%N)

# Certificates: one CA signs the server's serving certificate and the admin client
# certificate (X.509 v3, as rustls requires). Kept across restarts of the same RUN_DIR.
pki="$RUN/pki"
if [ ! -f "$pki/admin.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=weir-devcluster-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  sign() { # name subject extensions
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$pki/$1.ext"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  }
  sign server "/CN=127.0.0.1" "$(printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost')"
  sign admin "/O=system:masters/CN=admin" "$(printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth')"
fi

b64() { base64 -w0 < "$1"; }
cat > "$RUN/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: devcluster
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: devcluster
  context: {cluster: devcluster, user: admin, namespace: default}
current-context: devcluster
KUBECONFIG

"$BUILD/bin/etcd" --name devcluster --data-dir "$RUN/etcd" --unsafe-no-fsync --log-level warn \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
  --initial-cluster "devcluster=http://127.0.0.1:$ETCD_PEER_PORT" > "$RUN/etcd.log" 2>&1 &
echo $! > "$RUN/etcd.pid"

"$BUILD/bin/devcluster-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 --secure-port "$API_PORT" \
  --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" \
  --client-ca-file "$pki/ca.crt" --kubeconfig "$RUN/kubeconfig" > "$RUN/apiserver.log" 2>&1 &
echo $! > "$RUN/apiserver.pid"

# Ready when /readyz answers and the bootstrap namespace exists.
for _ in $(seq 1 300); do
  if ! kill -0 "$(cat "$RUN/apiserver.pid")" 2>/dev/null; then
    echo "devcluster: the API server exited; last lines of $RUN/apiserver.log:" >&2
    tail -20 "$RUN/apiserver.log" >&2
    "$HERE/stop.sh" "$RUN"
    exit 1
  fi
  if curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
       "https://127.0.0.1:$API_PORT/api/v1/namespaces/default" >/dev/null 2>&1; then
    if [ -n "${WATCH_PID:-}" ]; then
      (while kill -0 "$WATCH_PID" 2>/dev/null; do sleep 1; done; "$HERE/stop.sh" "$RUN") >/dev/null 2>&1 &
    fi
    echo "devcluster ready on https://127.0.0.1:$API_PORT in $(( ($(date +%s%N) - started) / 1000000 )) ms; KUBECONFIG=$RUN/kubeconfig"
    exit 0
  fi
  sleep 0.1
done
echo "devcluster: not ready after 30 s; last lines of $RUN/apiserver.log:" >&2
tail -20 "$RUN/apiserver.log" >&2
"$HERE/stop.sh" "$RUN"
exit 1
