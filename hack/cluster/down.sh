#!/usr/bin/env bash
# Delete the local control plane started by up.sh (its processes and state).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/versions.env"
NAME="${1:-${FDP_CLUSTER_NAME:-fdp}}"
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
BIN="$CACHE_ROOT/k8s/$K8S_VERSION/bin"
export KWOK_WORKDIR="$CACHE_ROOT/kwok"
if [[ -x "$BIN/kwokctl" ]]; then
  "$BIN/kwokctl" delete cluster --name "$NAME" >>"$KWOK_WORKDIR/kwokctl-$NAME.log" 2>&1 || true
fi
rm -f "$CACHE_ROOT/kubeconfig-$NAME"
echo "cluster '$NAME' deleted" >&2
