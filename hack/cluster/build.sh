#!/usr/bin/env bash
# Build (or reuse) the local control plane binaries from Go modules.
#
# Why: there is no Docker engine on the development machines, so kind cannot run.
# We build the real etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl from the module proxy, plus kwok/kwokctl to simulate nodes, and helm for
# chart tests; for the optional real node (FDP_REAL_NODES=1, docs/real-node.md) also
# kubelet, kube-proxy, CoreDNS and metrics-server. Binaries are cached per version outside the repo and reused.
#
# Usage: hack/cluster/build.sh            # prints the bin directory on the last line
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
BIN="$CACHE_ROOT/k8s/$K8S_VERSION/bin"
WORK="$CACHE_ROOT/k8s/$K8S_VERSION/work"
mkdir -p "$BIN" "$WORK"
export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
START=$(date +%s)

log() { printf '[cluster-build +%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

# Runs "$@" in the background and prints a heartbeat every 30 s so a long cold
# build (many minutes on 2 cores) never looks hung. Peak RSS goes to the log.
with_progress() {
  local what="$1"; shift
  local t0; t0=$(date +%s)
  log "building $what ..."
  /usr/bin/time -f "%M" -o "$WORK/.rss-$what" "$@" &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if (( ( $(date +%s) - t0 ) % 30 < 5 )) && kill -0 "$pid" 2>/dev/null; then
      log "  still building $what ($(( $(date +%s) - t0 ))s elapsed)"
    fi
  done
  if ! wait "$pid"; then log "FAILED building $what"; return 1; fi
  log "built $what in $(( $(date +%s) - t0 ))s (peak RSS $(( $(tail -1 "$WORK/.rss-$what") / 1024 )) MiB)"
}

have() { [[ -x "$BIN/$1" ]]; }

# ---- etcd: wrapper module, because etcd's server go.mod has replace lines ----
if ! have etcd; then
  mkdir -p "$WORK/etcd"
  sed "s/ETCD_VERSION/$ETCD_VERSION/" "$HERE/etcd/go.mod" > "$WORK/etcd/go.mod"
  cp "$HERE/etcd/main.go" "$WORK/etcd/main.go"
  (cd "$WORK/etcd" && go mod tidy >/dev/null 2>&1 || true)
  with_progress etcd bash -c "cd '$WORK/etcd' && go build -trimpath -ldflags '-s -w' -o '$BIN/etcd' ."
fi

# ---- kubernetes: wrapper module with generated staging replaces ----
# kubelet and kube-proxy run the real node (up.sh with FDP_REAL_NODES=1).
K8S_BINS=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)
need_k8s=0
for b in "${K8S_BINS[@]}"; do have "$b" || need_k8s=1; done
if (( need_k8s )); then
  mkdir -p "$WORK/k8s"
  sed "s/K8S_VERSION/$K8S_VERSION/" "$HERE/k8s/go.mod" > "$WORK/k8s/go.mod"
  cp "$HERE/k8s/tools.go" "$WORK/k8s/tools.go"
  log "downloading k8s.io/kubernetes@$K8S_VERSION go.mod"
  kmod=$(cd "$WORK/k8s" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  staging_ver="v0.${K8S_VERSION#v1.}"
  # Every `k8s.io/<name> v0.0.0` requirement is a staging module published as v0.N.P.
  grep -oE '^\s*k8s\.io/[A-Za-z0-9._/-]+ v0\.0\.0' "$kmod" | awk '{print $1}' | sort -u |
    while read -r m; do echo "replace $m v0.0.0 => $m $staging_ver"; done >> "$WORK/k8s/go.mod"
  log "generated $(grep -c '^replace' "$WORK/k8s/go.mod") staging replaces (-> $staging_ver)"
  minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
  LDF="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LDF="$LDF -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  for b in "${K8S_BINS[@]}"; do
    have "$b" && continue
    with_progress "$b" bash -c "cd '$WORK/k8s' && go build -trimpath -ldflags '$LDF' -o '$BIN/$b' k8s.io/kubernetes/cmd/$b"
  done
fi

# ---- kwok and kwokctl: plain go install works ----
for b in kwok kwokctl; do
  have "$b" || with_progress "$b" env GOBIN="$BIN" go install "sigs.k8s.io/kwok/cmd/$b@$KWOK_VERSION"
done

# ---- helm, for chart lint/template tests ----
if ! have helm; then
  with_progress helm env GOBIN="$BIN" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi

# ---- real node add-ons (only needed by up.sh with FDP_REAL_NODES=1, but cheap to keep) ----
# CoreDNS and metrics-server run as host processes next to the real node; both are plain
# Go programs, so `go install` of a pinned version works (no replace directives upstream).
if ! have coredns; then
  with_progress coredns env GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
fi
if ! have metrics-server; then
  with_progress metrics-server env GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER_VERSION"
fi

log "all binaries ready in $BIN"
echo "$BIN"
