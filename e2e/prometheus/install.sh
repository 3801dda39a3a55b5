#!/usr/bin/env bash
# Builds Prometheus (github.com/prometheus/prometheus/cmd/prometheus, whose Kubernetes
# service discovery Debian's package leaves out) through the Go module proxy into
# ~/.cache/weir/prometheus-<version>/bin, and prints that folder. Warm, it prints the
# folder at once. The web UI's assets are not built in (the API and scraping need none).
set -euo pipefail
# Prometheus 3.x is published as module versions v0.3xx: v0.316.0 is Prometheus 3.16.0.
PROMETHEUS_VERSION=3.16.0
PROMETHEUS_MODULE_VERSION=0.316.0
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/weir
OUT=$CACHE/prometheus-$PROMETHEUS_VERSION

if [ -x "$OUT/bin/prometheus" ]; then echo "$OUT"; exit 0; fi

. "$(dirname "$0")/../lib.sh"
# The module and build caches the control plane's build uses too.
use_go "$CACHE" prometheus
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
started=$(date +%s)
version=github.com/prometheus/common/version
GOBIN=$WORK/bin go install -trimpath \
  -ldflags "-s -w -X $version.Version=$PROMETHEUS_VERSION" \
  "github.com/prometheus/prometheus/cmd/prometheus@v$PROMETHEUS_MODULE_VERSION"
mkdir -p "$OUT"
rm -rf "$OUT/bin"
mv "$WORK/bin" "$OUT/bin"
echo "prometheus: built $PROMETHEUS_VERSION in $(( $(date +%s) - started )) s" >&2
echo "$OUT"
