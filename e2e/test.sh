#!/usr/bin/env bash
# The test command: installs what the tests need (system packages, the devcluster API
# server and the tansu Kafka broker, both cached under ~/.cache/weir), then runs every
# test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/setup-debian.sh
bash e2e/devcluster/install.sh >/dev/null
bash e2e/broker/install-tansu.sh >/dev/null
cargo test --workspace --locked
