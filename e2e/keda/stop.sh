#!/usr/bin/env bash
# Stops what start.sh RUN_DIR started and waits for each process to exit.
set -uo pipefail
RUN=${1:?usage: stop.sh RUN_DIR}
. "$(dirname "$0")/../lib.sh"
stop_pid "$RUN/adapter.pid"
stop_pid "$RUN/operator.pid"
