#!/usr/bin/env bash
# Bring up (or reuse) the local control plane: real etcd + kube-apiserver +
# kube-controller-manager + kube-scheduler (built from Go modules by build.sh), run by
# kwokctl's `binary` runtime, with kwok simulating the nodes and pods. Loopback only;
# nothing is downloaded at run time.
#
# Usage: hack/cluster/up.sh [NAME]     # last line printed: the kubeconfig path
# Env:   FDP_CLUSTER_NODES simulated (kwok) nodes (default 2; 0 with FDP_REAL_NODES=1, so every
#                          pod really runs)
#        FDP_REAL_NODES=1  also one real node (containerd + kubelet) with kube-proxy, CoreDNS and
#                          metrics-server on a bridge 10.244.0.1/24 (hack/cluster/realnode.sh,
#                          docs/real-node.md), and a default StorageClass fdp-local of local
#                          volumes on it (hack/cluster/local-volumes.sh)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$HERE/versions.env"
NAME="${1:-${FDP_CLUSTER_NAME:-fdp}}"
source "$HERE/name.sh"; check_cluster_name "$NAME"
if [[ "${FDP_REAL_NODES:-0}" == 1 ]]; then NODES="${FDP_CLUSTER_NODES:-0}"; else NODES="${FDP_CLUSTER_NODES:-2}"; fi
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
BIN="$("$HERE/build.sh" | tail -1)"
export KWOK_WORKDIR="$CACHE_ROOT/kwok"
KUBECONFIG_OUT="$CACHE_ROOT/kubeconfig-$NAME"
mkdir -p "$KWOK_WORKDIR"
START=$(date +%s)
log() { printf '[cluster-up +%3ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
KWOK_LOG="$KWOK_WORKDIR/kwokctl-$NAME.log"
REAL="${FDP_REAL_NODES:-0}"
BIND=127.0.0.1
if [[ "$REAL" == 1 ]]; then
  # Bridge + address first: the apiserver advertises 10.244.0.1 and its certificate names it.
  "$HERE/realnode.sh" net-up "$NAME"
fi
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
  bindAddress: $BIND
  kubeVersion: $K8S_VERSION
  etcdBinary: $BIN/etcd
  kubeApiserverBinary: $BIN/kube-apiserver
  kubeControllerManagerBinary: $BIN/kube-controller-manager
  kubeSchedulerBinary: $BIN/kube-scheduler
  kubectlBinary: $BIN/kubectl
  kwokControllerBinary: $BIN/kwok
YAML
if [[ "$REAL" == 1 ]]; then
  # kwok must not drive the real node: only nodes annotated kwok.x-k8s.io/node=fake (the ones
  # `kwokctl scale node` makes). The apiserver reaches kubelets by InternalIP (the node's host
  # name does not resolve), and its certificate also names the kubernetes Service's ClusterIP
  # (in-cluster clients connect to KUBERNETES_SERVICE_HOST, an IP).
  cat >> "$CONF" <<YAML
  kubeApiserverCertSANs: [10.96.0.1, 10.244.0.1]
componentsPatches:
- name: kwok-controller
  extraArgs:
  - {key: manage-all-nodes, value: "false"}
  - {key: manage-nodes-with-annotation-selector, value: "kwok.x-k8s.io/node=fake"}
- name: kube-apiserver
  extraArgs:
  - {key: kubelet-preferred-address-types, value: InternalIP}
  - {key: service-cluster-ip-range, value: 10.96.0.0/16}
  - {key: advertise-address, value: 10.244.0.1}
YAML
fi

if "$BIN/kwokctl" get clusters 2>/dev/null | grep -qx "$NAME"; then
  if [[ "$REAL" == 1 ]] && ! grep -q 'advertise-address' "$KWOK_WORKDIR/clusters/$NAME/kwok.yaml" 2>/dev/null; then
    log "cluster '$NAME' exists without a real node's settings: run hack/cluster/down.sh $NAME first, or pick another name"
    exit 1
  fi
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
  scale_params=()
  # kwok gives fake nodes documentation addresses (192.0.2.x), which here are the host's own
  # network and gateway: with a real node (apiserver and tools that really connect) use loopback.
  [[ "$REAL" == 1 ]] && scale_params=(--param '.nodeIPs=["127.0.0.2"]')
  kwokctl scale node --name "$NAME" --replicas "$NODES" "${scale_params[@]}"
fi
for _ in $(seq 1 60); do
  ready=$("$BIN/kubectl" get nodes --no-headers 2>/dev/null | awk '$2 ~ /^Ready(,|$)/' | wc -l)
  (( ready >= NODES )) && break
  sleep 1
done
if [[ "$REAL" == 1 ]]; then
  "$HERE/realnode.sh" start "$NAME"
  # What a cloud cluster's default provisioner gives a SQLite router's ledger claim.
  "$HERE/local-volumes.sh" "$BIN/kubectl" "$NAME-real" "$CACHE_ROOT/realnode/$NAME/volumes"
fi
"$BIN/kubectl" get nodes >&2
log "cluster '$NAME' ready"
cat >&2 <<MSG

  kubeconfig written to: $KUBECONFIG_OUT
  use it with:           export KUBECONFIG=$KUBECONFIG_OUT PATH=$BIN:\$PATH
                         kubectl get nodes
  stop it with:          make cluster-down  (or hack/cluster/down.sh $NAME)
MSG
if [[ "$REAL" == 1 ]]; then
  cat >&2 <<MSG
  real node:             $NAME-real (label fdp.io/real-node=true, IP 10.244.0.1, pods 10.244.0.0/24)
  load images:           hack/cluster/load-images.sh $NAME ghcr.io/federated-dp-llm/router:0.1.0 ...
MSG
fi
echo "$KUBECONFIG_OUT"
