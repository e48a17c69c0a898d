#!/usr/bin/env bash
# Bring up (or reuse) the local control plane: real etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler (built from Go modules by build.sh), run by
# kwokctl's `binary` runtime, with kwok simulating the nodes and pods. Loopback only;
# nothing is downloaded at run time.
#
# Usage: hack/cluster/up.sh [NAME]     # last line printed: the kubeconfig path
# Env:   FDP_CLUSTER_NODES (default 2)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/versions.env"
NAME="${1:-${FDP_CLUSTER_NAME:-fdp}}"
NODES="${FDP_CLUSTER_NODES:-2}"
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
BIN="$("$HERE/build.sh" | tail -1)"
export KWOK_WORKDIR="$CACHE_ROOT/kwok"
KUBECONFIG_OUT="$CACHE_ROOT/kubeconfig-$NAME"
mkdir -p "$KWOK_WORKDIR"
START=$(date +%s)
log() { printf '[cluster-up +%3ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
KWOK_LOG="$KWOK_WORKDIR/kwokctl-$NAME.log"
# kwokctl logs one JSON line per step: keep them in a file and show them only on failure.
kwokctl() {
  if ! "$BIN/kwokctl" "$@" >>"$KWOK_LOG" 2>&1; then
    tail -40 "$KWOK_LOG" >&2
    log "kwokctl $* failed (full log: $KWOK_LOG)"
    return 1
  fi
}

CONF="$KWOK_WORKDIR/fdp-kwokctl-$NAME.yaml"
cat > "$CONF" <<YAML
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $K8S_VERSION
  etcdBinary: $BIN/etcd
  kubeApiserverBinary: $BIN/kube-apiserver
  kubeControllerManagerBinary: $BIN/kube-controller-manager
  kubeSchedulerBinary: $BIN/kube-scheduler
  kubectlBinary: $BIN/kubectl
  kwokControllerBinary: $BIN/kwok
YAML

if "$BIN/kwokctl" get clusters 2>/dev/null | grep -qx "$NAME"; then
  log "cluster '$NAME' exists; starting it if stopped"
  kwokctl start cluster --name "$NAME" || true
else
  log "creating cluster '$NAME' (kube $K8S_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION)"
  kwokctl create cluster --name "$NAME" --config "$CONF" --wait 3m
fi
"$BIN/kwokctl" get kubeconfig --name "$NAME" > "$KUBECONFIG_OUT"
chmod 600 "$KUBECONFIG_OUT"
export KUBECONFIG="$KUBECONFIG_OUT"
have_nodes=$("$BIN/kubectl" get nodes --no-headers 2>/dev/null | wc -l)
if (( have_nodes < NODES )); then
  log "adding simulated nodes ($have_nodes -> $NODES)"
  kwokctl scale node --name "$NAME" --replicas "$NODES"
fi
for _ in $(seq 1 60); do
  ready=$("$BIN/kubectl" get nodes --no-headers 2>/dev/null | awk '$2=="Ready"' | wc -l)
  (( ready >= NODES )) && break
  sleep 1
done
"$BIN/kubectl" get nodes >&2
log "cluster '$NAME' ready"
cat >&2 <<MSG

  kubeconfig written to: $KUBECONFIG_OUT
  use it with:           export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH
                         kubectl get nodes
  stop it with:          make cluster-down
MSG
echo "$KUBECONFIG_OUT"
