#!/usr/bin/env bash
# Copy images from the image store `make images` built into (hack/images/docker.sh) into the
# real node's containerd (namespace k8s.io), so pods on the real node start without a registry.
# An image whose Docker image ID is already there (label fdp.io/docker-id) is skipped: the
# router image takes 30-45 s to copy.
#
# Usage: hack/cluster/load-images.sh NAME IMAGE...
#   e.g. hack/cluster/load-images.sh fdp-real ghcr.io/federated-dp-llm/router:0.1.0 ghcr.io/federated-dp-llm/operator:0.1.0
# Pods must use imagePullPolicy IfNotPresent or Never (the default for a non-latest tag).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
NAME="${1:?usage: $0 NAME IMAGE...}"; shift
source "$HERE/name.sh"; check_cluster_name "$NAME"
(( $# )) || { echo "usage: $0 NAME IMAGE..." >&2; exit 2; }
SOCK="$CACHE_ROOT/realnode/$NAME/run/containerd.sock"
[[ -S "$SOCK" ]] || { echo "load-images: no real node for cluster '$NAME' ($SOCK missing; FDP_REAL_NODES=1 hack/cluster/up.sh $NAME)" >&2; exit 1; }
ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }
log() { printf '[load-images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

for img in "$@"; do
  id=$("$HERE/../images/docker.sh" image inspect -f '{{.Id}}' "$img" 2>/dev/null) ||
    { log "error: $img is not in the image store (make images?)"; exit 1; }
  have=$(ctr_ images ls "name==$img" 2>/dev/null | awk 'NR>1' | grep -o 'fdp.io/docker-id=[^, ]*' | cut -d= -f2 || true)
  if [[ "$have" == "$id" ]]; then
    log "$img already on the node ($id)"
    continue
  fi
  t0=$(date +%s)
  "$HERE/../images/docker.sh" save "$img" | ctr_ images import - >/dev/null
  ctr_ images label "$img" "fdp.io/docker-id=$id" >/dev/null
  log "loaded $img ($id) in $(( $(date +%s) - t0 ))s"
done
