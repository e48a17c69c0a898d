#!/usr/bin/env bash
# Delete the local control plane started by up.sh (its processes and state), and the real
# node with everything it created when there is one (hack/cluster/realnode.sh down).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/versions.env"
NAME="${1:-${FDP_CLUSTER_NAME:-fdp}}"
source "$HERE/name.sh"; check_cluster_name "$NAME"
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
BIN="$CACHE_ROOT/k8s/$K8S_VERSION/bin"
export KWOK_WORKDIR="$CACHE_ROOT/kwok"
# A real node (FDP_REAL_NODES=1) goes first, while the apiserver can still be told.
if [[ -d "$CACHE_ROOT/realnode/$NAME" ]]; then
  "$HERE/realnode.sh" down "$NAME" || echo "real node clean-up of '$NAME' reported an error" >&2
fi
if [[ -x "$BIN/kwokctl" ]]; then
  "$BIN/kwokctl" delete cluster --name "$NAME" >>"$KWOK_WORKDIR/kwokctl-$NAME.log" 2>&1 || true
fi
rm -f "$CACHE_ROOT/kubeconfig-$NAME"
echo "cluster '$NAME' deleted" >&2
