#!/usr/bin/env bash
# Start/stop the private Docker daemon `make images` uses on machines without a working Docker.
# Data root, exec root, socket, pid file and log all live under $FDP_CACHE/docker (so the
# image store and the build cache survive between runs); --iptables=false --bridge=none
# leaves the host's firewall and interfaces alone (builds use --network host).
# Usage: hack/images/dockerd.sh start|stop|status
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/images/lib.sh
. "$here/lib.sh"

# dockerd leaves its host-network namespace bind-mounted under the exec root after it exits:
# unmount that (and anything else left under the cache) so nothing of the run stays mounted.
unmount_leftovers() {
  awk -v root="$IMG_CACHE/" 'index($2, root) == 1 {print $2}' /proc/mounts | sort -r \
    | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}
running() { [ -s "$OWN_PID" ] && kill -0 "$(cat "$OWN_PID")" 2>/dev/null; }

case "${1:-}" in
  start)
    if running; then log "private dockerd already running (pid $(cat "$OWN_PID"))"; exit 0; fi
    mkdir -p "$IMG_CACHE/data" "$IMG_CACHE/exec" "$IMG_CACHE/run"
    rm -f "$OWN_SOCK" "$OWN_PID"
    setsid "$DEBIAN_DOCKERD" \
      --data-root "$IMG_CACHE/data" --exec-root "$IMG_CACHE/exec" \
      --host "unix://$OWN_SOCK" --pidfile "$OWN_PID" \
      --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false --bridge=none \
      >"$OWN_LOG" 2>&1 </dev/null 9>&- &
    for _ in $(seq 1 100); do
      if "$DEBIAN_DOCKER" -H "unix://$OWN_SOCK" version >/dev/null 2>&1; then
        log "private dockerd up (pid $(cat "$OWN_PID"), socket $OWN_SOCK)"; exit 0
      fi
      sleep 0.2
    done
    tail -20 "$OWN_LOG" >&2
    die "private dockerd did not start (log: $OWN_LOG)"
    ;;
  stop)
    if ! running; then unmount_leftovers; exit 0; fi
    pid=$(cat "$OWN_PID")
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then log "dockerd $pid still running after 30 s; killing"; kill -KILL "$pid"; fi
    unmount_leftovers
    log "private dockerd stopped"
    ;;
  status) if running; then echo "running (pid $(cat "$OWN_PID"), socket $OWN_SOCK)"; else echo stopped; fi ;;
  *) die "usage: $0 start|stop|status" ;;
esac
