#!/usr/bin/env bash
# Builds the devcluster API server and fetches etcd, from Debian packages, into a
# cache folder (nothing is installed system-wide). A build is kept per set of
# package versions and server sources, so a warm run costs seconds.
# Prints the folder holding bin/devcluster-apiserver and bin/etcd as its last line.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${WEIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}/devcluster
mkdir -p "$CACHE"/apt/{lists/partial,cache/archives/partial}
log() { echo "devcluster-install: $*" >&2; }

# Library packages of the server, from Debian unstable, which has the newest Kubernetes.
LIBS="golang-cel-cel-go-dev golang-cel-expr-dev golang-etcd-server-dev golang-github-antlr4-go-antlr-dev
golang-github-beorn7-perks-dev golang-github-blang-semver-dev golang-github-cenkalti-backoff-v5-dev
golang-github-cespare-xxhash-v2-dev golang-github-coreos-go-semver-dev golang-github-coreos-go-systemd-dev
golang-github-davecgh-go-spew-dev golang-github-docker-spdystream-dev golang-github-emicklei-go-restful-dev
golang-github-evanphx-json-patch-dev golang-github-felixge-httpsnoop-dev golang-github-fsnotify-fsnotify-dev
golang-github-fxamacker-cbor-dev golang-github-go-logr-logr-dev golang-github-go-logr-stdr-dev
golang-github-go-openapi-jsonpointer-dev golang-github-go-openapi-jsonreference-dev golang-github-go-openapi-swag-dev
golang-github-gogo-protobuf-dev golang-github-golang-protobuf-1-5-dev golang-github-google-gnostic-models-dev
golang-github-google-uuid-dev golang-github-gorilla-websocket-dev golang-github-grpc-ecosystem-go-grpc-middleware-dev
golang-github-grpc-ecosystem-grpc-gateway-dev golang-github-json-iterator-go-dev golang-github-kylelemons-godebug-dev
golang-github-modern-go-concurrent-dev golang-github-modern-go-reflect2-dev golang-github-munnerz-goautoneg-dev
golang-github-mxk-go-flowrate-dev golang-github-nytimes-gziphandler-dev golang-github-pkg-errors-dev
golang-github-pmezard-go-difflib-dev golang-github-prometheus-client-golang-dev golang-github-prometheus-client-model-dev
golang-github-prometheus-common-dev golang-github-prometheus-procfs-dev golang-github-spf13-cobra-dev
golang-github-spf13-pflag-dev golang-github-x448-float16-dev golang-go.uber-multierr-dev golang-go.uber-zap-dev
golang-golang-x-crypto-dev golang-golang-x-exp-dev golang-golang-x-net-dev golang-golang-x-oauth2-dev
golang-golang-x-sync-dev golang-golang-x-sys-dev golang-golang-x-term-dev golang-golang-x-text-dev
golang-golang-x-time-dev golang-google-genproto-dev golang-google-grpc-dev golang-google-protobuf-dev
golang-gopkg-inf.v0-dev golang-gopkg-natefinch-lumberjack.v2-dev golang-gopkg-yaml.v2-dev golang-gopkg-yaml.v3-dev
golang-k8s-api-dev golang-k8s-apiextensions-apiserver-dev golang-k8s-apimachinery-dev golang-k8s-apiserver-dev
golang-k8s-client-go-dev golang-k8s-component-base-dev golang-k8s-klog-dev golang-k8s-kms-dev
golang-k8s-kube-openapi-dev golang-k8s-sigs-apiserver-network-proxy-dev golang-k8s-sigs-json-dev
golang-k8s-sigs-randfill-dev golang-k8s-sigs-structured-merge-diff-v6-dev golang-k8s-sigs-yaml-dev
golang-k8s-streaming-dev golang-k8s-utils-dev golang-opentelemetry-contrib-dev golang-opentelemetry-otel-dev
golang-opentelemetry-proto-dev kube-openapi"

sources_hash=$(cat "$HERE/install.sh" "$HERE"/server/*.go | sha256sum | cut -c1-16)

# Fast path: the last build is for these sources and the package lists are recent.
if [ -f "$CACHE/current/stamp" ] && [ "$(cat "$CACHE/current/stamp")" = "$sources_hash" ] \
   && [ -n "$(find "$CACHE/apt/lists" -maxdepth 1 -name '*Packages*' -mtime -7 -print -quit)" ]; then
  cd "$CACHE/current" && pwd -P
  exit 0
fi

# Use the Debian mirror this machine already uses, with sid (Kubernetes, Go) and trixie (etcd).
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || { log "no Debian mirror found in the apt configuration"; exit 1; }
printf 'deb %s sid main\ndeb %s trixie main\n' "$MIRROR" "$MIRROR" > "$CACHE/apt/sources.list"
APT=(-o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt/cache"
     -o "Dir::Etc::SourceList=$CACHE/apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
     -o Dir::State::status=/var/lib/dpkg/status -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
log "updating package lists"
apt-get "${APT[@]}" -qq update

# The newest Go toolchain in unstable (sid moves: no pinned minor version).
GOV=$(apt-cache "${APT[@]}" pkgnames golang-1. 2>/dev/null | sed -n 's/^golang-\(1\.[0-9]*\)-go$/\1/p' | sort -t. -k2 -n | tail -1)
[ -n "$GOV" ] || { log "no golang-1.NN-go package found"; exit 1; }
WANT=$(for p in $LIBS "golang-$GOV-go" "golang-$GOV-src"; do echo "$p/sid"; done; echo etcd-server/trixie)

# The build key is every package's exact version (they appear in the .deb URIs).
uris=$(cd "$CACHE" && apt-get "${APT[@]}" --print-uris -qq download $WANT | sort)
key=$(printf '%s\n%s\n' "$uris" "$sources_hash" | sha256sum | cut -c1-16)
BUILD="$CACHE/build-$key"
if [ -x "$BUILD/bin/devcluster-apiserver" ] && [ -x "$BUILD/bin/etcd" ]; then
  echo "$sources_hash" > "$BUILD/stamp"
  ln -sfn "$BUILD" "$CACHE/current"
  echo "$BUILD"
  exit 0
fi

log "building (cold: a few minutes) with Go $GOV into $BUILD"
WORK="$CACHE/work"
rm -rf "$WORK" && mkdir -p "$WORK"/{debs,root,gopath/src/devcluster} "$BUILD/bin"
(cd "$WORK/debs" && apt-get "${APT[@]}" -qq download $WANT 2>&1 | grep -v 'unsandboxed' || true)
for deb in "$WORK"/debs/*.deb; do dpkg -x "$deb" "$WORK/root"; done

export GOROOT="$WORK/root/usr/lib/go-$GOV" GO111MODULE=off GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=
export PATH="$GOROOT/bin:$PATH" GOPATH="$WORK/gopath:$WORK/root/usr/share/gocode" GOCACHE="$CACHE/gocache"
cp "$HERE"/server/*.go "$WORK/gopath/src/devcluster/"
echo "// Code generated by openapi-gen. DO NOT EDIT." > "$WORK/header.txt"
"$WORK/root/usr/bin/openapi-gen" --output-dir "$WORK/gopath/src/devcluster/openapi" --output-pkg devcluster/openapi \
  --output-file zz_generated.openapi.go --go-header-file "$WORK/header.txt" --report-filename /dev/null \
  k8s.io/api/core/v1 k8s.io/api/apps/v1 k8s.io/api/batch/v1 k8s.io/api/coordination/v1 k8s.io/api/autoscaling/v1 \
  k8s.io/api/policy/v1 k8s.io/api/events/v1 k8s.io/api/networking/v1 k8s.io/api/rbac/v1 k8s.io/api/autoscaling/v2 \
  k8s.io/apimachinery/pkg/apis/meta/v1 k8s.io/apimachinery/pkg/runtime k8s.io/apimachinery/pkg/version \
  k8s.io/apimachinery/pkg/api/resource k8s.io/apimachinery/pkg/util/intstr
minor=$(ls "$WORK/debs" | sed -n 's/^golang-k8s-apiserver-dev_0\.\([0-9]*\)\..*/\1/p' | head -1)
go build -ldflags "-X k8s.io/component-base/version.gitVersion=v1.${minor:-36}.0-devcluster -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor:-36}" \
  -o "$BUILD/bin/devcluster-apiserver" devcluster
cp "$WORK/root/usr/bin/etcd" "$BUILD/bin/etcd"
echo "$sources_hash" > "$BUILD/stamp"
ln -sfn "$BUILD" "$CACHE/current"
rm -rf "$WORK"
log "built $BUILD"
echo "$BUILD"
