#!/usr/bin/env bash
# Runs the tansu broker on 127.0.0.1:PORT with sqlite storage in DIR, and stops it when the
# process WATCH_PID exits (so a test run never leaks a broker). Writes DIR/tansu.pid.
#   run-tansu.sh PORT DIR [WATCH_PID]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
PORT=${1:?usage: run-tansu.sh PORT DIR [WATCH_PID]}
DIR=${2:?usage: run-tansu.sh PORT DIR [WATCH_PID]}
WATCH_PID=${3:-}
# TANSU_FLAVOUR=transactions runs the build with Kafka transactions (memory storage).
if [ "${TANSU_FLAVOUR:-}" = transactions ]; then
  TANSU=$("$HERE/install-tansu-txn.sh")
  STORAGE="memory://tansu/"
else
  TANSU=$("$HERE/install-tansu.sh")
  STORAGE="sqlite://tansu.db"
fi
mkdir -p "$DIR"
cd "$DIR"
# The sqlite path is relative to the broker's working directory.
"$TANSU" broker --listener-url "tcp://127.0.0.1:$PORT" --advertised-listener-url "tcp://127.0.0.1:$PORT" \
  --storage-engine "$STORAGE" > tansu.log 2>&1 &
echo $! > tansu.pid
if [ -n "$WATCH_PID" ]; then
  (while kill -0 "$WATCH_PID" 2>/dev/null && kill -0 "$(cat tansu.pid)" 2>/dev/null; do sleep 1; done
   kill "$(cat tansu.pid)" 2>/dev/null) >/dev/null 2>&1 &
fi
