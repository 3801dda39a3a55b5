#!/usr/bin/env bash
# Installs the tansu Kafka-protocol broker (sqlite storage) from crates.io into a cache
# folder keyed by its version; a warm run costs nothing. Prints the binary's path.
set -euo pipefail
VERSION=${TANSU_VERSION:-0.6.0}
ROOT=${WEIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}/tansu-$VERSION
BIN="$ROOT/bin/tansu"
if [ ! -x "$BIN" ]; then
  echo "tansu-install: building tansu $VERSION (cold: about 20 minutes on 2 cores)" >&2
  # --locked builds with tansu's own lock file; newer dependency versions have broken it before.
  CARGO_TARGET_DIR="$ROOT/build" cargo install --quiet --locked --root "$ROOT" tansu --version "$VERSION" \
    --no-default-features --features libsql >&2 \
  || CARGO_TARGET_DIR="$ROOT/build" cargo install --quiet --root "$ROOT" tansu --version "$VERSION" \
    --no-default-features --features libsql >&2
  rm -rf "$ROOT/build"
fi
echo "$BIN"
