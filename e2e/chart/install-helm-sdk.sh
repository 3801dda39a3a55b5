#!/usr/bin/env bash
# Installs Helm's engine for Python (the PyPI wheel helm-python-sdk: Helm v4's Go SDK as a
# shared library; no helm binary is needed) into a virtualenv cached under ~/.cache/weir,
# keyed by version. Prints the virtualenv's python on its last line.
set -euo pipefail
VERSION=0.2.2
ROOT=${WEIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}/helm-python-sdk-$VERSION
PYTHON=$ROOT/venv/bin/python
if ! "$PYTHON" -c 'import helm_python' >/dev/null 2>&1; then
  echo "helm-python-sdk: installing $VERSION into $ROOT" >&2
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  python3 -m venv "$ROOT/venv" >&2
  "$ROOT/venv/bin/pip" install --quiet --disable-pip-version-check "helm-python-sdk==$VERSION" >&2
fi
echo "$PYTHON"
