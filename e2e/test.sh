#!/usr/bin/env bash
# The test command: installs what the tests need (system packages, the Kubernetes control
# plane, kubectl, KEDA and Prometheus built from source, Apache Kafka's jars, Helm's engine for the chart
# tests and moto's S3 server, all cached under ~/.cache/weir), then runs every test of the
# workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash e2e/setup-debian.sh
bash e2e/kubernetes/install.sh >/dev/null
bash e2e/kafka/install.sh >/dev/null
bash e2e/keda/install.sh >/dev/null
bash e2e/prometheus/install.sh >/dev/null
bash e2e/chart/install-helm-sdk.sh >/dev/null
bash e2e/s3/install-moto.sh >/dev/null
cargo test --workspace --locked
