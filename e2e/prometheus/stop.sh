#!/usr/bin/env bash
# Stops what start.sh RUN_DIR started and waits for it to exit.
set -uo pipefail
RUN=${1:?usage: stop.sh RUN_DIR}
pidfile="$RUN/prometheus.pid"
[ -f "$pidfile" ] || exit 0
pid=$(cat "$pidfile")
if kill "$pid" 2>/dev/null; then
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
fi
rm -f "$pidfile"
