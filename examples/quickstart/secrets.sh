#!/usr/bin/env bash
# The Secrets the quickstart names, generated here and never copied from the repository:
#   quickstart-jwt             the HS256 key clinicians' tokens are signed with
#   quickstart-hospital-ca     ca.crt of a throw-away CA for the demo hospitals
#   <node>-llm-tls             each demo hospital's serving certificate (its Service names)
# Each carries fdp.io/allow-router-mount: "true", the opt-in the operator requires before it
# mounts a Secret into a router (docs/security.md). Needs kubectl and openssl; idempotent
# (existing Secrets are kept, so a second run changes nothing, unless a node certificate is
# missing or the CA expires within 30 days: then the CA and every node certificate are made anew,
# since the CA's key is never kept). Keys only ever live in a 0700 temp dir and in pipes, never
# in a command line (/proc/PID/cmdline is readable by every local user).
#
# Usage: examples/quickstart/secrets.sh NAMESPACE
set -euo pipefail
NS="${1:?usage: $0 NAMESPACE}"
KUBECTL="${KUBECTL:-kubectl}"
umask 077
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"

exists() { "$KUBECTL" -n "$NS" get secret "$1" >/dev/null 2>&1; }
apply_labelled() {  # kubectl create secret ... --dry-run | label | apply
  "$KUBECTL" -n "$NS" create secret "$@" --dry-run=client -o yaml \
    | "$KUBECTL" label --local -f - fdp.io/allow-router-mount=true -o yaml \
    | "$KUBECTL" -n "$NS" apply -f - >/dev/null
}

if ! exists quickstart-jwt; then
  openssl rand -hex 32 | tr -d '\n' > jwt.key
  apply_labelled generic quickstart-jwt --from-file=secret=jwt.key
  echo "created quickstart-jwt"
fi

NODES=(cardiology neurology emergency guidelines)
ca_current() {  # the CA Secret exists and its certificate is valid for 30 more days
  "$KUBECTL" -n "$NS" get secret quickstart-hospital-ca -o jsonpath='{.data.ca\.crt}' 2>/dev/null |
    base64 -d 2>/dev/null | openssl x509 -noout -checkend 2592000 >/dev/null 2>&1
}
complete=1
ca_current || complete=0
for node in "${NODES[@]}"; do exists "$node-llm-tls" || complete=0; done
if (( complete )); then
  echo "quickstart-hospital-ca and every node certificate exist: keeping them"
  exit 0
fi
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
  -subj "/CN=quickstart demo hospitals CA" -keyout ca.key -out ca.crt 2>/dev/null
for node in "${NODES[@]}"; do
  svc="$node-llm"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$svc" \
    -keyout "$svc.key" -out "$svc.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local\nextendedKeyUsage=serverAuth\n' \
    "$svc" "$svc" "$NS" "$svc" "$NS" "$svc" "$NS" > "$svc.ext"
  openssl x509 -req -in "$svc.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 365 \
    -extfile "$svc.ext" -out "$svc.crt" 2>/dev/null
  apply_labelled tls "$svc-tls" --cert="$svc.crt" --key="$svc.key"
  echo "created $svc-tls"
done
# Last: its presence means every node certificate above exists.
apply_labelled generic quickstart-hospital-ca --from-file=ca.crt=ca.crt
echo "created quickstart-hospital-ca"
