#!/usr/bin/env bash
# Make (once) the Python base image the Dockerfiles build FROM, without Docker Hub:
# a Debian bookworm minbase root filesystem with Debian's Python 3.11, made by mmdebstrap,
# cached as a tarball under $FDP_CACHE/docker/base/ and imported into the running daemon.
# Prints the local tag (pass it as the Dockerfiles' PYTHON_IMAGE build arg).
#
# Usage: hack/images/base-image.sh DOCKER-CLIENT-ARGS...   (e.g. /usr/bin/docker -H unix://…)
# The recipe (and the machine's local CA certificates) are hashed into the tag, so a change
# to either makes a new base; old tarballs can be deleted by hand.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=hack/images/lib.sh
. "$here/lib.sh"
[ $# -ge 1 ] || die "usage: $0 DOCKER-CLIENT [ARGS...]"
docker=("$@")

SUITE=bookworm
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates,passwd
# The egress proxy's CA certificates (and any other site-local CA) from the system's local CA
# directory: without them pip inside the build cannot reach PyPI. Hashed into the tag.
LOCAL_CA_DIR=/usr/local/share/ca-certificates
recipe="v2 $SUITE $PACKAGES nodocs $(cat "$LOCAL_CA_DIR"/*.crt 2>/dev/null | sha256sum | cut -c1-16)"
hash=$(printf '%s' "$recipe" | sha256sum | cut -c1-12)
TAG=fdp-local/python:3.11-$SUITE-$hash
TAR=$IMG_CACHE/base/python-$SUITE-$hash.tar

if "${docker[@]}" image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"; exit 0
fi
mkdir -p "$IMG_CACHE/base"
if [ ! -s "$TAR" ]; then
  command -v mmdebstrap >/dev/null || die "mmdebstrap missing (apt-get install mmdebstrap)"
  log "making the Python base image with mmdebstrap ($SUITE minbase; about 2 minutes, once)"
  start=$(date +%s)
  # Merged /usr through the hook (as Debian's official images), not the usrmerge package
  # (which pulls in perl, 50 MB). Docs, man pages and translations are left out; copyright
  # files stay.
  mmdebstrap --quiet --variant=minbase --format=tar --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="if ls $LOCAL_CA_DIR/*.crt >/dev/null 2>&1; then cp $LOCAL_CA_DIR/*.crt \"\$1$LOCAL_CA_DIR/\"; fi" \
    --customize-hook='chroot "$1" update-ca-certificates --fresh >/dev/null 2>&1' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*.log "$1"/var/log/apt/*' \
    "$SUITE" "$TAR.part.tar" >"$IMG_CACHE/base/mmdebstrap.log" 2>&1 \
  || { tail -30 "$IMG_CACHE/base/mmdebstrap.log" >&2; rm -f "$TAR.part.tar"; die "mmdebstrap failed"; }
  mv "$TAR.part.tar" "$TAR"
  log "base tarball $(du -m "$TAR" | cut -f1) MB in $(( $(date +%s) - start )) s: $TAR"
fi
log "importing $TAR as $TAG"
"${docker[@]}" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  "$TAR" "$TAG" >/dev/null
echo "$TAG"
