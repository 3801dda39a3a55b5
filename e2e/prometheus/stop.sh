#!/usr/bin/env bash
# Stops what start.sh RUN_DIR started and waits for it to exit.
set -uo pipefail
RUN=${1:?usage: stop.sh RUN_DIR}
. "$(dirname "$0")/../lib.sh"
stop_pid "$RUN/prometheus.pid"
