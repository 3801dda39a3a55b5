#!/usr/bin/env bash
# Builds KEDA's operator and metrics adapter from github.com/kedacore/keda/v2 through the
# Go module proxy, with its CRDs and manifests from the same module, into
# ~/.cache/weir/keda-<version> (bin/keda-operator, bin/keda-adapter, crds/, and config/, its
# kustomize manifests), and prints that folder. Warm, it prints
# the folder at once.
#
# KEDA's go.mod has replace and exclude directives, so `go install` refuses it: the module
# is downloaded, copied out of the (read-only) module cache and built in place.
set -euo pipefail
KEDA_VERSION=2.21.0
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/weir
OUT=$CACHE/keda-$KEDA_VERSION

if [ -x "$OUT/bin/keda-operator" ] && [ -x "$OUT/bin/keda-adapter" ] && [ -f "$OUT/crds/keda.sh_scaledobjects.yaml" ] \
  && [ -f "$OUT/config/default/kustomization.yaml" ]; then
  echo "$OUT"
  exit 0
fi

. "$(dirname "$0")/../lib.sh"
# The module and build caches the control plane's build uses too.
use_go "$CACHE" keda
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)

module=$(cd "$WORK" && go mod download -json "github.com/kedacore/keda/v2@v$KEDA_VERSION" \
  | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
cp -r "$module" "$WORK/keda"
chmod -R u+w "$WORK/keda"
cd "$WORK/keda"
flags="-s -w -X=github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION -X=github.com/kedacore/keda/v2/version.GitCommit=v$KEDA_VERSION"
mkdir -p "$WORK/bin"
go build -mod=mod -trimpath -ldflags "$flags" -o "$WORK/bin/keda-operator" ./cmd/operator
go build -mod=mod -trimpath -ldflags "$flags" -o "$WORK/bin/keda-adapter" ./cmd/adapter

mkdir -p "$OUT"
rm -rf "$OUT/bin" "$OUT/crds" "$OUT/config"
mkdir -p "$OUT/crds"
cp config/crd/bases/*.yaml "$OUT/crds/"
cp -r config "$OUT/config"
mv "$WORK/bin" "$OUT/bin"
echo "keda: built v$KEDA_VERSION in $(( $(date +%s) - started )) s" >&2
echo "$OUT"
