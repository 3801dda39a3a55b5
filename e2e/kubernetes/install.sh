#!/usr/bin/env bash
# Builds the real Kubernetes control plane — kube-apiserver, kube-controller-manager,
# kube-scheduler and kubectl from k8s.io/kubernetes, and etcd from go.etcd.io/etcd/server/v3
# — through the Go module proxy, into ~/.cache/weir/kubernetes-<version>-etcd-<version>/bin, and
# prints that folder. Warm, it prints the folder at once.
#
# k8s.io/kubernetes cannot be built with `go install`: its go.mod points its ~30 staging
# modules (k8s.io/api, k8s.io/apiserver, ...) at folders of its own repository. A small
# wrapper module requires it and replaces each staging module with the published version
# of the same release (k8s.io/api v0.36.3 for Kubernetes 1.36.3). etcd's go.mod has
# replaces of its own, so it gets a wrapper module too.
set -euo pipefail
KUBERNETES_VERSION=1.36.3
ETCD_VERSION=3.6.16
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/weir
OUT=$CACHE/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd)

built() {
  for binary in "${BINARIES[@]}"; do [ -x "$OUT/bin/$binary" ] || return 1; done
}
if built; then echo "$OUT"; exit 0; fi

# Modules and the build cache stay under the cache folder, so a rebuild downloads nothing.
. "$(dirname "$0")/../lib.sh"
use_go "$CACHE" kubernetes
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)

# The version every component reports (KEDA and kubectl read the server's minor version).
minor=${KUBERNETES_VERSION#*.}; minor=${minor%%.*}
version_flags=""
for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_flags+=" -X $package.gitVersion=v$KUBERNETES_VERSION -X $package.gitMajor=1 -X $package.gitMinor=$minor"
  version_flags+=" -X $package.gitTreeState=clean -X $package.buildDate=1970-01-01T00:00:00Z"
done

# Kubernetes: the wrapper's replaces come from the release's own go.mod.
mkdir -p "$WORK/kubernetes" "$WORK/bin"
cd "$WORK/kubernetes"
upstream_mod=$(go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
{
  echo "module weir.local/kubernetes-build"
  echo
  echo "go 1.26.0"
  echo
  echo "godebug default=go1.26"
  echo
  echo "require k8s.io/kubernetes v$KUBERNETES_VERSION"
  echo
  echo "replace ("
  sed -n "s|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*|\t\1 => \1 v0.$minor.${KUBERNETES_VERSION##*.}|p" "$upstream_mod"
  echo ")"
} > go.mod
cat > tools.go <<'GO'
//go:build tools

// Package tools pins the commands this module builds.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
go mod tidy >/dev/null
go build -trimpath -ldflags "-s -w $version_flags" -o "$WORK/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl

# etcd, the version Kubernetes' client supports (3.6).
mkdir -p "$WORK/etcd"
cd "$WORK/etcd"
printf 'module weir.local/etcd-build\n\ngo 1.26.0\n\nrequire go.etcd.io/etcd/server/v3 v%s\n' "$ETCD_VERSION" > go.mod
printf '//go:build tools\n\n// Package tools pins the command this module builds.\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
go mod tidy >/dev/null
go build -trimpath -ldflags "-s -w" -o "$WORK/bin/etcd" go.etcd.io/etcd/server/v3

mkdir -p "$OUT"
rm -rf "$OUT/bin"
mv "$WORK/bin" "$OUT/bin"
echo "kubernetes: built v$KUBERNETES_VERSION and etcd v$ETCD_VERSION in $(( $(date +%s) - started )) s" >&2
echo "$OUT"
