#!/usr/bin/env bash
# Build the kstatus verdict tool (main.go) from the Go module proxy, cached per version
# outside the repo, and print its path on the last line. Tests call this once per session.
#
# Usage: hack/kstatus/build.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLI_UTILS_VERSION="$(awk '$1 == "sigs.k8s.io/cli-utils" {print $2}' "$HERE/go.mod")"
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
OUT="$CACHE_ROOT/tools/kstatus-$CLI_UTILS_VERSION"
if [[ -x "$OUT" && "$OUT" -nt "$HERE/main.go" && "$OUT" -nt "$HERE/go.mod" ]]; then
  echo "$OUT"
  exit 0
fi
mkdir -p "$CACHE_ROOT/tools"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cp "$HERE/main.go" "$HERE/go.mod" "$WORK/"
[[ -f "$HERE/go.sum" ]] && cp "$HERE/go.sum" "$WORK/"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
(cd "$WORK" && go mod tidy >&2 && go build -trimpath -ldflags '-s -w' -o "$OUT.tmp" .)
mv "$OUT.tmp" "$OUT"
echo "$OUT"
