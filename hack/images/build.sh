#!/usr/bin/env bash
# `make images`: build Dockerfile.router and Dockerfile.operator into local images.
#
#  * With a working Docker (the `docker` on PATH reaches a daemon): a plain `docker build`
#    of each Dockerfile, FROM the pinned python:*-slim image of Docker Hub.
#  * Otherwise, on a Debian machine as root (these CI machines: no daemon, no Docker Hub):
#    apt-get installs docker.io and mmdebstrap if missing, starts a private dockerd (data,
#    exec root and socket under $FDP_CACHE/docker; no iptables, no bridge), makes/caches the
#    Python base image with mmdebstrap (hack/images/base-image.sh), builds with the legacy
#    builder and --network host, and stops the daemon again. The images stay in that daemon's
#    store; hack/images/docker.sh runs any docker command against it (e.g. `save`).
#
# Environment: IMAGE_REPO (default ghcr.io/federated-dp-llm), IMAGE_TAG (default: the project
# version), FDP_IMAGES_OWN_DAEMON=1 forces the private daemon, FDP_IMAGES=router|operator to
# build only one, PYTHON_IMAGE (with a working Docker) another base image than the
# Dockerfiles' pinned python:*-slim, e.g. from a registry mirror.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# shellcheck source=hack/images/lib.sh
. "$here/lib.sh"
cd "$repo"

VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml | head -1)
[ -n "$VERSION" ] || die "no version in pyproject.toml"
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_REPO=${IMAGE_REPO:-ghcr.io/federated-dp-llm}
IMAGE_TAG=${IMAGE_TAG:-$VERSION}
read -r -a which <<<"${FDP_IMAGES:-router operator}"

build_args=(--build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION")

build_all() {  # build_all DOCKER-CLIENT... -- EXTRA-BUILD-ARGS...
  local -a client=() extra=()
  while [ "$1" != -- ]; do client+=("$1"); shift; done; shift
  extra=("$@")
  local name start
  for name in "${which[@]}"; do
    start=$(date +%s)
    log "building $IMAGE_REPO/$name:$IMAGE_TAG from Dockerfile.$name"
    "${client[@]}" build --file "Dockerfile.$name" --tag "$IMAGE_REPO/$name:$IMAGE_TAG" \
      "${build_args[@]}" "${extra[@]}" .
    log "$IMAGE_REPO/$name:$IMAGE_TAG built in $(( $(date +%s) - start )) s," \
      "$(( $("${client[@]}" image inspect --format '{{.Size}}' "$IMAGE_REPO/$name:$IMAGE_TAG") / 1000000 )) MB"
  done
}

# 1. A working Docker: plain docker build.
if [ "${FDP_IMAGES_OWN_DAEMON:-0}" != 1 ] && command -v docker >/dev/null \
   && docker info >/dev/null 2>&1; then
  log "using the Docker daemon on PATH ($(command -v docker))"
  if [ -n "${PYTHON_IMAGE:-}" ]; then
    build_all docker -- --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE"
  else
    build_all docker --
  fi
  exit 0
fi

# 2. No working Docker: a private daemon.
[ "$(id -u)" = 0 ] || die "no reachable Docker daemon, and starting a private one needs root"
if [ ! -x "$DEBIAN_DOCKERD" ] || [ ! -x "$DEBIAN_DOCKER" ] || ! command -v mmdebstrap >/dev/null; then
  command -v apt-get >/dev/null || die "no reachable Docker daemon and no apt-get to install one"
  log "installing docker.io and mmdebstrap with apt-get (about 20 s, 300 MB)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    docker.io containerd runc mmdebstrap >/dev/null \
  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
         --no-install-recommends docker.io containerd runc mmdebstrap >/dev/null; }
fi

mkdir -p "$IMG_CACHE"
# One build at a time on this cache (another helper or a parallel make may build too).
exec 9>"$IMG_CACHE/images.lock"
flock 9

"$here/dockerd.sh" start
trap '"$here/dockerd.sh" stop' EXIT
client=("$DEBIAN_DOCKER" -H "unix://$OWN_SOCK")
base=$("$here/base-image.sh" "${client[@]}")
log "base image $base"
# The legacy builder: BuildKit would pull the `# syntax=` frontend from Docker Hub.
export DOCKER_BUILDKIT=0
build_all "${client[@]}" -- --network host --force-rm --build-arg "PYTHON_IMAGE=$base"
"${client[@]}" image ls --filter "reference=$IMAGE_REPO/*" >&2
