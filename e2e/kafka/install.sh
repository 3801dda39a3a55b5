#!/usr/bin/env bash
# Resolves one pinned Apache Kafka release (the broker, its tools and a log4j2 binding) with
# Maven into a cache folder keyed by the version and this folder's POM; a warm run costs
# nothing. Prints the folder that holds lib/ (the jars) and log4j2.yaml.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/pom.xml")
STAMP=$(cat "$HERE/pom.xml" "$HERE/log4j2.yaml" | sha256sum | cut -c1-12)
ROOT=${WEIR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/weir}/kafka-$VERSION-$STAMP
if [ ! -f "$ROOT/ready" ]; then
  command -v java >/dev/null || { echo "kafka-install: java (17 or newer) is needed" >&2; exit 1; }
  command -v mvn >/dev/null || { echo "kafka-install: mvn (Maven) is needed" >&2; exit 1; }
  echo "kafka-install: resolving Apache Kafka $VERSION with Maven" >&2
  rm -rf "$ROOT.tmp" && mkdir -p "$ROOT.tmp"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$ROOT.tmp/lib" -Dmdep.includeScope=runtime >&2
  cp "$HERE/log4j2.yaml" "$ROOT.tmp/log4j2.yaml"
  echo "$VERSION" > "$ROOT.tmp/ready"
  rm -rf "$ROOT" && mv "$ROOT.tmp" "$ROOT"
fi
echo "$ROOT"
