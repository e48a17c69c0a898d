# shellcheck shell=bash
# Sourced by up.sh, down.sh, realnode.sh and load-images.sh: a cluster NAME becomes paths
# ($CACHE_ROOT/realnode/NAME, removed with rm -rf by a root down), a kwok cluster and a node
# name, so it must be one plain lowercase DNS label. `down.sh ../../..` used to remove $HOME.
check_cluster_name() {  # check_cluster_name NAME: exit 2 unless NAME is [a-z0-9-], 1-40 chars
  local n="$1"
  if [[ ! "$n" =~ ^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$ ]]; then
    printf 'invalid cluster name %q: use 1-40 of [a-z0-9-], starting and ending alphanumeric\n' "$n" >&2
    exit 2
  fi
}
