#!/usr/bin/env bash
# Run a docker command against the image store `make images` built into: the Docker on PATH
# if it works, otherwise the private daemon under $FDP_CACHE/docker (started for the command
# and stopped again unless it was already running). Example, loading the images into a
# node's containerd:
#   hack/images/docker.sh save ghcr.io/federated-dp-llm/router:0.1.0 | ctr -n k8s.io images import -
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/images/lib.sh
. "$here/lib.sh"
if [ "${FDP_IMAGES_OWN_DAEMON:-0}" != 1 ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  exec docker "$@"
fi
mkdir -p "$IMG_CACHE"
exec 9>"$IMG_CACHE/images.lock"
flock 9
if [ "$("$here/dockerd.sh" status)" = stopped ]; then
  "$here/dockerd.sh" start
  trap '"$here/dockerd.sh" stop' EXIT
fi
"$DEBIAN_DOCKER" -H "unix://$OWN_SOCK" "$@"
