# Shell helpers the e2e scripts share; source it: . "$(dirname "$0")/../lib.sh"

# alive PID: the process runs (an exited one nobody reaped, a zombie, does not count: its
# starter script is gone and this machine's init may never reap it).
alive() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}

# stop_pid FILE [SECONDS]: SIGTERM to the process of a pid file, SIGKILL if it still runs
# after SECONDS (default 10), then the file goes.
stop_pid() {
  local file=$1 tenths=$(( ${2:-10} * 10 )) pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 "$tenths"); do alive "$pid" || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# use_go CACHE WHAT: Go on PATH (Go's installer puts it in /usr/local/go, which a
# non-login shell may lack), and the module and build caches under CACHE, shared by every
# build, so a module downloads once. WHAT names the build in the error.
use_go() {
  command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
  command -v go >/dev/null || { echo "$2: Go 1.26 or newer is needed" >&2; exit 1; }
  export GOMODCACHE=$1/go/mod GOCACHE=$1/go/build GOFLAGS=-modcacherw GOTOOLCHAIN=local CGO_ENABLED=0
}

# service_account_kubeconfig NAMESPACE NAME FILE: a kubeconfig acting as that
# ServiceAccount (a long-lived token from the TokenRequest API), for the cluster of
# $KUBECONFIG, with kubectl as $KUBECTL (default kubectl).
service_account_kubeconfig() {
  local kubectl=${KUBECTL:-kubectl} token server
  token=$("$kubectl" -n "$1" create token "$2" --duration=87600h)
  server=$("$kubectl" config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
  "$kubectl" config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' \
    | base64 -d > "$3.ca.crt"
  cat > "$3" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {server: "$server", certificate-authority: "$3.ca.crt"}
users:
- name: $2
  user: {token: "$token"}
contexts:
- name: local
  context: {cluster: local, user: $2, namespace: $1}
current-context: local
KUBECONFIG
  chmod 600 "$3"
}
