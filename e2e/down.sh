#!/usr/bin/env bash
# Stops what e2e/up.sh started.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${WEIR_RUN:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/local}
bash e2e/devcluster/stop.sh "$RUN/devcluster"
echo "Local stack stopped (state kept in $RUN; delete it for a fresh start)."
