# Shared settings for hack/images/*.sh (sourced, not run).
# Everything downloaded or built lives under $FDP_CACHE (outside the repository).
FDP_CACHE=${FDP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/federated-dp-llm}
IMG_CACHE=$FDP_CACHE/docker
# Debian's docker client, by full path: another client (with no daemon) may come earlier on PATH.
DEBIAN_DOCKER=/usr/bin/docker
DEBIAN_DOCKERD=/usr/sbin/dockerd
OWN_SOCK=$IMG_CACHE/run/docker.sock
OWN_PID=$IMG_CACHE/run/dockerd.pid
OWN_LOG=$IMG_CACHE/dockerd.log

log() { printf '[images %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
