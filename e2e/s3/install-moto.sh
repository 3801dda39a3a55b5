#!/usr/bin/env bash
# Installs moto's S3-compatible server (PyPI `moto[server]`) into a virtualenv in a cache
# folder keyed by its version. Prints the path of `moto_server`.
set -euo pipefail
VERSION=${MOTO_VERSION:-5.2.5}
ROOT=${WEIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}/moto-$VERSION
BIN="$ROOT/bin/moto_server"
if [ ! -x "$BIN" ]; then
  rm -rf "$ROOT"
  python3 -m venv "$ROOT" >&2
  "$ROOT/bin/pip" install --quiet "moto[server]==$VERSION" >&2
fi
echo "$BIN"
