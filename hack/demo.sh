#!/usr/bin/env bash
# `make demo`: the main job on an embedded default. Brings up the local control plane
# (building or reusing the binaries) and shows it working.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBECONFIG="$(hack/cluster/up.sh | tail -1)"
export KUBECONFIG
source hack/cluster/versions.env
BIN="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}/k8s/$K8S_VERSION/bin"
export PATH="$BIN:$PATH"
echo; echo "== kubectl version"; kubectl version
echo; echo "== simulated nodes"; kubectl get nodes -o wide
echo; echo "Cluster is up. KUBECONFIG=$KUBECONFIG ; stop it with: make cluster-down"
