#!/usr/bin/env bash
# Stops what start.sh RUN_DIR started, the controllers first and etcd last, and waits for
# each to exit.
set -uo pipefail
RUN=${1:?usage: stop.sh RUN_DIR}
. "$(dirname "$0")/../lib.sh"
for name in scheduler controller-manager apiserver etcd; do
  stop_pid "$RUN/$name.pid"
done
