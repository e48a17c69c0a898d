#!/usr/bin/env bash
# One real node (containerd + kubelet) beside the kwok-simulated ones, plus kube-proxy,
# CoreDNS and metrics-server, all as host processes. Called by up.sh / down.sh when
# FDP_REAL_NODES=1; see docs/real-node.md.
#
# Usage: hack/cluster/realnode.sh net-up NAME      # bridge, sysctls, guard rules (before kwokctl)
#        hack/cluster/realnode.sh start NAME       # containerd, kubelet, kube-proxy, CoreDNS, metrics-server
#        hack/cluster/realnode.sh down NAME        # remove everything the real node created
#        hack/cluster/realnode.sh status           # prints the name of the active real-node cluster, if any
#
# Network: everything of the node lives on one bridge the run creates, fdpbr0 = 10.244.0.1/24:
# node IP, pod gateway, kubelet, CoreDNS and metrics-server listen there. The control plane
# stays on 127.0.0.1 (kwokctl's binary runtime binds components to bindAddress but its own
# clients always dial 127.0.0.1, so bindAddress=10.244.0.1 does not start). Pods reach the
# apiserver through the kubernetes.default Service: the apiserver advertises 10.244.0.1:<its
# port> (a loopback endpoint is invalid in Endpoints, so route_localnet DNAT cannot serve a
# Service), and a small forwarder (realnode/tcp-forward.py) listens on exactly that address and
# port and relays to 127.0.0.1. kwok puts every local address in the serving certificate and
# up.sh adds the Service IP 10.96.0.1, so in-cluster clients verify it as usual.
# Guard rules (chains FDP-RN, FDP-RN-OUT) stop anything pods or DNATed host traffic would send
# to an interface other than fdpbr0/lo, so nothing leaves the machine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/cluster/versions.env
source "$HERE/versions.env"
CACHE_ROOT="${FDP_CACHE_DIR:-$HOME/.cache/federated-dp-llm}"
BIN="$CACHE_ROOT/k8s/$K8S_VERSION/bin"
RN_ROOT="$CACHE_ROOT/realnode"
BRIDGE=fdpbr0
NODE_IP=10.244.0.1
POD_CIDR=10.244.0.0/24
CLUSTER_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
SANDBOX_IMAGE=fdp.local/pause:1
METRICS_PORT=4443
ACTIVE_FILE="$RN_ROOT/ACTIVE"
# containerd's root (content store, snapshots, metadata) is shared by every real-node cluster:
# there is only one at a time, and images loaded once then survive down/up under any name.
IMAGE_STORE="$RN_ROOT/containerd-root"
# Host paths kubelet, containerd, runc and the CNI plugins write outside their configured roots.
# net-up notes which existed before; down removes those it created and, in the others, only
# entries made since the node started.
HOST_PATHS=(/var/lib/kubelet /var/lib/cni /run/containerd/runc /run/containerd/s /run/containerd/fifo
  /run/containerd /run/netns /var/log/pods /var/log/containers)
# kubelet and kube-proxy change these host sysctls; net-up saves them and down restores them.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables vm.overcommit_memory
  vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet)

START=$(date +%s)
log() { printf '[realnode +%3ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }
die() { log "error: $*"; exit 1; }

cmd="${1:-}"; NAME="${2:-${FDP_CLUSTER_NAME:-fdp}}"
# shellcheck source=hack/cluster/name.sh
source "$HERE/name.sh"
[[ "$cmd" == status ]] || check_cluster_name "$NAME"
RN="$RN_ROOT/$NAME"
NODE_NAME="$NAME-real"
KUBECONFIG_FILE="$CACHE_ROOT/kubeconfig-$NAME"
kubectl() { "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" "$@"; }

# ---------------------------------------------------------------- one at a time
# The bridge, node IP and host paths (/var/log/pods, iptables chains) are machine-wide, so only
# one real-node cluster may exist. ACTIVE names it; the flock serialises up/down.
lock() {
  mkdir -p "$RN_ROOT"
  exec 8>"$RN_ROOT/lock"
  flock -w 120 8 || die "another real-node up/down holds $RN_ROOT/lock"
}
check_active() {
  if [[ -s "$ACTIVE_FILE" ]]; then
    local other; other=$(cat "$ACTIVE_FILE")
    [[ "$other" == "$NAME" ]] || die "real-node cluster '$other' is already up on this machine (one at a time): run hack/cluster/down.sh $other first"
  fi
}

# ---------------------------------------------------------------- packages
ensure_packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  [[ -x /usr/bin/docker ]] || missing+=(docker.io)
  command -v gcc >/dev/null || missing+=(gcc libc6-dev)
  command -v conntrack >/dev/null || missing+=(conntrack)
  if (( ${#missing[@]} )); then
    log "installing ${missing[*]} with apt-get"
    apt-get install -y --no-install-recommends "${missing[@]}" >"$RN_ROOT/apt.log" 2>&1 || {
      apt-get update >>"$RN_ROOT/apt.log" 2>&1
      apt-get install -y --no-install-recommends "${missing[@]}" >>"$RN_ROOT/apt.log" 2>&1 || die "apt-get failed (see $RN_ROOT/apt.log)"
    }
  fi
}

# ---------------------------------------------------------------- network
net_up() {
  mkdir -p "$RN"
  if [[ ! -s "$RN/sysctls.saved" ]]; then
    for s in "${SYSCTLS[@]}"; do
      v=$(sysctl -n "$s" 2>/dev/null) && printf '%s=%s\n' "$s" "$v"
    done > "$RN/sysctls.saved"
  fi
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    echo created > "$RN/bridge.created"
  fi
  # No IPv6 on the bridge: a link-local address would let pods reach host listeners on [::].
  sysctl -qw "net.ipv6.conf.$BRIDGE.disable_ipv6=1" 2>/dev/null || true
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Guard: forwarded pod traffic may only go back into the bridge; host traffic that
  # kube-proxy DNATed (e.g. to a kwok fake pod's IP) may only go to the bridge or loopback.
  iptables -w -N FDP-RN 2>/dev/null || iptables -w -F FDP-RN
  iptables -w -A FDP-RN -i "$BRIDGE" -o "$BRIDGE" -j RETURN
  iptables -w -A FDP-RN -i "$BRIDGE" -j REJECT
  iptables -w -A FDP-RN -o "$BRIDGE" ! -s "$CLUSTER_CIDR" -j REJECT
  # Nothing from another interface is forwarded into the bridge (a neighbour spoofing a pod
  # source address included: rp_filter is off on these machines).
  iptables -w -A FDP-RN ! -i "$BRIDGE" -o "$BRIDGE" -j REJECT
  iptables -w -C FORWARD -j FDP-RN 2>/dev/null || iptables -w -I FORWARD 1 -j FDP-RN
  # The node's own listeners. The kubelet (10250, anonymous AlwaysAllow: whoever reaches it
  # can exec into every pod), metrics-server, CoreDNS and the apiserver forwarder listen on
  # 10.244.0.1. Pods may reach only DNS and the apiserver through the kubernetes Service
  # (DNATed from 10.96.0.1:443); nothing outside the bridge may reach the node's addresses
  # (Linux accepts a packet for any local address on any interface). The host's own clients
  # (apiserver -> kubelet, metrics-server -> kubelet) arrive on lo.
  iptables -w -N FDP-RN-IN 2>/dev/null || iptables -w -F FDP-RN-IN
  iptables -w -A FDP-RN-IN -i lo -j RETURN
  iptables -w -A FDP-RN-IN -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  iptables -w -A FDP-RN-IN ! -i "$BRIDGE" -d "$POD_CIDR" -j DROP
  iptables -w -A FDP-RN-IN -i "$BRIDGE" -d "$NODE_IP" -p udp --dport 53 -j RETURN
  iptables -w -A FDP-RN-IN -i "$BRIDGE" -d "$NODE_IP" -p tcp --dport 53 -j RETURN
  iptables -w -A FDP-RN-IN -i "$BRIDGE" -m conntrack --ctstate DNAT --ctorigdst 10.96.0.1 --ctorigdstport 443 -j RETURN
  iptables -w -A FDP-RN-IN -i "$BRIDGE" -j REJECT
  iptables -w -C INPUT -j FDP-RN-IN 2>/dev/null || iptables -w -I INPUT 1 -j FDP-RN-IN
  # Service IPs route to the bridge (source 10.244.0.1), never to the default gateway: a
  # ClusterIP without kube-proxy rules then goes nowhere instead of off the machine.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE" src "$NODE_IP"
  # Host traffic kube-proxy DNATed may only leave by the bridge or loopback. This must look at
  # the final output device, which the filter OUTPUT chain does not see (it matches the device
  # chosen before nat OUTPUT re-routed the packet), hence mangle POSTROUTING.
  iptables -w -t mangle -N FDP-RN-OUT 2>/dev/null || iptables -w -t mangle -F FDP-RN-OUT
  iptables -w -t mangle -A FDP-RN-OUT -o lo -j RETURN
  iptables -w -t mangle -A FDP-RN-OUT -o "$BRIDGE" -j RETURN
  iptables -w -t mangle -A FDP-RN-OUT -m conntrack --ctstate DNAT -j DROP
  iptables -w -t mangle -C POSTROUTING -j FDP-RN-OUT 2>/dev/null || iptables -w -t mangle -I POSTROUTING 1 -j FDP-RN-OUT
}

# ---------------------------------------------------------------- pause image
# A docker-save style tar (manifest.json + config + one layer) around the static pause binary;
# cached per source hash, imported into containerd's k8s.io namespace.
pause_tar() {
  local src="$HERE/realnode/pause.c" h out
  h=$(sha256sum "$src" | cut -c1-12)
  out="$RN_ROOT/pause-$h.tar"
  if [[ ! -s "$out" ]]; then
    local d; d=$(mktemp -d)
    gcc -static -Os -o "$d/pause" "$src"
    strip "$d/pause" 2>/dev/null || true
    python3 - "$d" "$out" "$SANDBOX_IMAGE" <<'PY'
import hashlib, io, json, os, sys, tarfile
d, out, ref = sys.argv[1:4]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.USTAR_FORMAT) as t:
    ti = t.gettarinfo(os.path.join(d, "pause"), arcname="pause")
    ti.uid = ti.gid = 0; ti.uname = ti.gname = ""; ti.mtime = 0; ti.mode = 0o755
    with open(os.path.join(d, "pause"), "rb") as f:
        t.addfile(ti, f)
layer_bytes = layer.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
config = json.dumps({
    "architecture": "amd64", "os": "linux",
    "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created_by": "hack/cluster/realnode/pause.c (gcc -static)"}],
}, sort_keys=True).encode()
cfg_name = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": cfg_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(out, "w") as t:
    for name, data in (("layer.tar", layer_bytes), (cfg_name, config), ("manifest.json", manifest)):
        ti = tarfile.TarInfo(name); ti.size = len(data); ti.mode = 0o644
        t.addfile(ti, io.BytesIO(data))
PY
    rm -rf "$d"
  fi
  echo "$out"
}

# ---------------------------------------------------------------- processes
pidfile() { echo "$RN/pids/$1.pid"; }
running() { local p; p=$(cat "$(pidfile "$1")" 2>/dev/null) && kill -0 "$p" 2>/dev/null; }
spawn() {  # spawn NAME CMD... : background, own session, log + pid under $RN
  local n="$1"; shift
  if running "$n"; then log "$n already running (pid $(cat "$(pidfile "$n")"))"; return; fi
  mkdir -p "$RN/pids" "$RN/logs"
  setsid "$@" >>"$RN/logs/$n.log" 2>&1 </dev/null 8>&- &
  echo $! > "$(pidfile "$n")"
  log "started $n (pid $!, log $RN/logs/$n.log)"
}
stop_procs() {  # stop_procs NAME...: SIGTERM to all, then wait (10 s at most) and SIGKILL
  local n p pids=()
  for n in "$@"; do
    p=$(cat "$(pidfile "$n")" 2>/dev/null) || continue
    kill -0 "$p" 2>/dev/null && { kill "$p" 2>/dev/null; pids+=("$p"); log "stopping $n (pid $p)"; }
    rm -f "$(pidfile "$n")"
  done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    (( alive )) || return 0
    sleep 0.2
  done
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
  return 0
}
stop_proc() {
  local n="$1" p
  p=$(cat "$(pidfile "$n")" 2>/dev/null) || return 0
  if kill -0 "$p" 2>/dev/null; then
    kill "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null || true
    log "stopped $n (pid $p)"
  fi
  rm -f "$(pidfile "$n")"
}
wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local t="$1" what="$2"; shift 2
  for _ in $(seq 1 "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  die "timed out after ${t}s waiting for $what"
}

CTR_SOCK() { echo "$RN/run/containerd.sock"; }
ctr_() { ctr --address "$(CTR_SOCK)" "$@"; }

# put FILE: stdin to FILE only when the content differs. A running kube-proxy exits as soon as
# its config file is written (even with the same bytes), and up.sh runs again on a live node.
put() {
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat > "$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; else mv "$tmp" "$1"; fi
}

write_configs() {
  mkdir -p "$RN"/{containerd/state,containerd/opt,run,cni/net.d,kubelet,coredns,metrics-server} "$IMAGE_STORE"
  put "$RN/containerd.toml" <<EOF
version = 2
root = "$IMAGE_STORE"
state = "$RN/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$(CTR_SOCK)"
[ttrpc]
  address = "$RN/run/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$RN/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SANDBOX_IMAGE"
  # The VM withholds CAP_SYS_RESOURCE: without this runc cannot set oom_score_adj -998.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$RN/cni/net.d"
EOF
  # bridge + host-local + portmap; containerd itself runs the loopback plugin for lo.
  put "$RN/cni/net.d/10-fdp.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "fdp",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "rangeStart": "10.244.0.10",
              "gateway": "$NODE_IP"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "/var/lib/cni/networks"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  # Pods with dnsPolicy Default get this; never the host's resolvers (nothing may leave).
  echo "nameserver $NODE_IP" | put "$RN/resolv.conf"
  put "$RN/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
# The apiserver presents no client certificate to kubelets (kwok's PKI), so logs/exec and
# metrics-server connect anonymously; acceptable only because we listen on the run's own address.
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$(CTR_SOCK)
clusterDNS: [$NODE_IP]
clusterDomain: cluster.local
resolvConf: $RN/resolv.conf
serializeImagePulls: false
maxPods: 60
podCIDR: $POD_CIDR
# Images arrive by load-images.sh, never from a registry: do not garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
EOF
  put "$RN/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $CLUSTER_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
clientConnection:
  kubeconfig: $KUBECONFIG_FILE
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false, masqueradeAll: false}
EOF
  # No forward plugin: names outside cluster.local get REFUSED instead of reaching a resolver.
  put "$RN/coredns/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $NODE_IP
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $KUBECONFIG_FILE
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
  put "$RN/metrics-server/apiservice.yaml" <<EOF
# metrics-server runs on the host; the aggregator reaches it through an ExternalName Service
# (kwok's own trick), so it does not depend on kube-proxy.
apiVersion: v1
kind: Service
metadata: {name: metrics-server, namespace: kube-system, labels: {fdp.io/real-node: "true"}}
spec:
  type: ExternalName
  externalName: "$NODE_IP"
  ports: [{name: https, port: $METRICS_PORT, protocol: TCP}]
---
apiVersion: apiregistration.k8s.io/v1
kind: APIService
metadata: {name: v1beta1.metrics.k8s.io, labels: {fdp.io/real-node: "true"}}
spec:
  group: metrics.k8s.io
  version: v1beta1
  insecureSkipTLSVerify: true
  groupPriorityMinimum: 100
  versionPriority: 100
  service: {name: metrics-server, namespace: kube-system, port: $METRICS_PORT}
EOF
}

start() {
  [[ -s "$KUBECONFIG_FILE" ]] || die "no kubeconfig $KUBECONFIG_FILE (run up.sh)"
  for b in kubelet kube-proxy coredns metrics-server; do [[ -x "$BIN/$b" ]] || die "missing $BIN/$b (run hack/cluster/build.sh)"; done
  write_configs
  spawn containerd containerd --config "$RN/containerd.toml"
  wait_for 30 containerd ctr_ version
  local tar; tar=$(pause_tar)
  local images; images=$(ctr_ -n k8s.io images ls -q)  # not piped into grep -q: pipefail + SIGPIPE
  if ! grep -qxF "$SANDBOX_IMAGE" <<<"$images"; then
    ctr_ -n k8s.io images import "$tar" >/dev/null
    log "imported $SANDBOX_IMAGE"
  fi
  spawn kubelet "$BIN/kubelet" --config "$RN/kubelet/config.yaml" --kubeconfig "$KUBECONFIG_FILE" \
    --root-dir "$RN/kubelet/root" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" \
    --node-labels "fdp.io/real-node=true" --v 1
  local port; port=$(grep -oE 'kubeApiserverPort: [0-9]+' "$CACHE_ROOT/kwok/clusters/$NAME/kwok.yaml" | awk '{print $2}')
  [[ -n "$port" ]] || die "cannot read kubeApiserverPort of '$NAME'"
  spawn apiserver-forward python3 "$HERE/realnode/tcp-forward.py" "$NODE_IP" "$port" 127.0.0.1 "$port"
  spawn kube-proxy "$BIN/kube-proxy" --config "$RN/kube-proxy.yaml" --v 1
  spawn coredns "$BIN/coredns" -conf "$RN/coredns/Corefile"
  spawn metrics-server "$BIN/metrics-server" --bind-address "$NODE_IP" --secure-port "$METRICS_PORT" \
    --cert-dir "$RN/metrics-server/certs" --kubeconfig "$KUBECONFIG_FILE" \
    --authentication-kubeconfig "$KUBECONFIG_FILE" --authorization-kubeconfig "$KUBECONFIG_FILE" \
    --kubelet-preferred-address-types InternalIP --kubelet-insecure-tls --kubelet-use-node-status-port \
    --node-selector fdp.io/real-node=true --metric-resolution 15s
  kubectl apply -f "$RN/metrics-server/apiservice.yaml" >/dev/null
  wait_for 90 "node $NODE_NAME Ready" \
    bash -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_FILE' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
  wait_for 60 "metrics APIService available" \
    bash -c "'$BIN/kubectl' --kubeconfig '$KUBECONFIG_FILE' get apiservice v1beta1.metrics.k8s.io -o jsonpath='{.status.conditions[?(@.type==\"Available\")].status}' | grep -qx True"
  echo "$NAME" > "$ACTIVE_FILE"
  log "real node $NODE_NAME Ready ($NODE_IP, label fdp.io/real-node=true)"
}

# ---------------------------------------------------------------- down
down() {
  # Best effort: every step runs even when an earlier one found nothing to remove.
  set +e +o pipefail
  local active; active=$(cat "$ACTIVE_FILE" 2>/dev/null)
  if [[ -n "$active" && "$active" != "$NAME" ]]; then
    # The bridge, chains and host paths belong to the cluster that is up: leave them alone.
    log "real-node cluster '$active' is the one up, not '$NAME': only removing $RN"
    rm -rf "$RN"
    return 0
  fi
  log "removing real node of '$NAME'"
  # Delete the node object first (if the apiserver is still up) so nothing schedules there.
  [[ -s "$KUBECONFIG_FILE" ]] && timeout 10 "$BIN/kubectl" --kubeconfig "$KUBECONFIG_FILE" delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  stop_procs metrics-server coredns kube-proxy apiserver-forward kubelet
  # Pod sandboxes and containers: stop them via containerd while it is still up.
  if running containerd; then
    for c in $(ctr_ -n k8s.io tasks ls -q 2>/dev/null); do ctr_ -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr_ -n k8s.io tasks ls -q 2>/dev/null); do ctr_ -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true; done
    for c in $(ctr_ -n k8s.io containers ls -q 2>/dev/null); do ctr_ -n k8s.io containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_proc containerd
  # Shims of this containerd (their command line names our state dir or socket).
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $(CTR_SOCK)" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
  # Leftover container processes: everything in the kubepods cgroups.
  local cg
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods /sys/fs/cgroup/unified/kubepods; do
    [[ -d "$cg" ]] || continue
    find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | while read -r p; do kill -9 "$p" 2>/dev/null || true; done
  done
  sleep 0.5
  # Mounts: kubelet volumes (tmpfs for secrets/tokens), containerd's rootfs overlays and shm,
  # network namespaces. Deepest first.
  mount | awk '{print $3}' | grep -E "^($RN/|/run/containerd/|/run/netns/|/var/lib/kubelet/)" | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
  # Network namespaces of our pods: the CNI names them cni-<uuid>.
  for ns in /run/netns/cni-*; do [[ -e "$ns" ]] && { umount -l "$ns" 2>/dev/null || true; rm -f "$ns"; }; done
  # cgroups kubelet created (kubepods tree), deepest first.
  for cg in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [[ -d "$cg" ]] && find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  # iptables: kube-proxy's KUBE-* chains, CNI's CNI-* chains, our guard chains.
  local t
  for t in filter nat mangle; do
    iptables-save -t "$t" 2>/dev/null | grep -E '^-A ' | grep -E -- '-j (KUBE-|CNI-|FDP-RN)' | sed 's/^-A/-D/' |
      while read -r rule; do eval "iptables -w -t $t $rule" 2>/dev/null || true; done
    for ch in $(iptables-save -t "$t" 2>/dev/null | grep -oE '^:(KUBE-|CNI-|FDP-RN)[^ ]*' | tr -d ':'); do
      iptables -w -t "$t" -F "$ch" 2>/dev/null || true
    done
    for ch in $(iptables-save -t "$t" 2>/dev/null | grep -oE '^:(KUBE-|CNI-|FDP-RN)[^ ]*' | tr -d ':'); do
      iptables -w -t "$t" -X "$ch" 2>/dev/null || true
    done
  done
  ip6tables-save 2>/dev/null | grep -q 'KUBE-' && for t in filter nat mangle; do
    ip6tables-save -t "$t" 2>/dev/null | grep -E '^-A ' | grep -E -- '-j KUBE-' | sed 's/^-A/-D/' |
      while read -r rule; do eval "ip6tables -w -t $t $rule" 2>/dev/null || true; done
    for ch in $(ip6tables-save -t "$t" 2>/dev/null | grep -oE '^:KUBE-[^ ]*' | tr -d ':'); do
      ip6tables -w -t "$t" -F "$ch" 2>/dev/null || true; done
    for ch in $(ip6tables-save -t "$t" 2>/dev/null | grep -oE '^:KUBE-[^ ]*' | tr -d ':'); do
      ip6tables -w -t "$t" -X "$ch" 2>/dev/null || true; done
  done
  command -v conntrack >/dev/null && conntrack -D -s "$CLUSTER_CIDR" >/dev/null 2>&1 || true
  # Pod veths go with their namespaces; the bridge goes last.
  for v in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do ip link del "$v" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  # Host paths kubelet/containerd/runc/CNI write outside their configured roots.
  rm -rf "$RN/kubelet" "$RN/containerd/state" "$RN/run" 2>/dev/null
  local hp
  # Without net-up's record (started + preexisting) every host path counts as the host's own:
  # a missing list must never read as "none existed before, remove them all".
  if [[ ! -e "$RN/started" || ! -e "$RN/preexisting" ]]; then
    log "no record of the host paths before this node ($RN/started, preexisting): leaving them"
    HOST_PATHS=()
  fi
  for hp in "${HOST_PATHS[@]}"; do
    [[ -e "$hp" ]] || continue
    # /run/containerd/{s,fifo} are shared with every containerd on the machine (also the private
    # dockerd's): never removed wholesale.
    if ! grep -qxF "$hp" "$RN/preexisting" 2>/dev/null && [[ "$hp" != /run/containerd/s && "$hp" != /run/containerd/fifo ]]; then
      [[ "$hp" == /run/containerd ]] && continue  # handled through its children below
      rm -rf "$hp"
    else
      # Remove only entries made since we started that nothing listens on.
      find "$hp" -mindepth 1 -maxdepth 1 -newer "$RN/started" 2>/dev/null | while read -r f; do
        if [[ -S "$f" ]] && python3 -c 'import socket,sys; socket.socket(socket.AF_UNIX).connect(sys.argv[1])' "$f" 2>/dev/null; then
          continue
        fi
        rm -rf "$f"
      done
    fi
  done
  rmdir /run/containerd/s /run/containerd/fifo 2>/dev/null
  [[ -e "$RN/preexisting" ]] && { grep -qxF /run/containerd "$RN/preexisting" || rmdir /run/containerd 2>/dev/null; }
  # Host sysctls back to what they were before net-up.
  if [[ -s "$RN/sysctls.saved" ]]; then
    while IFS= read -r kv; do sysctl -qw "$kv" 2>/dev/null || true; done < "$RN/sysctls.saved"
    rm -f "$RN/sysctls.saved"
  fi
  # The node's files go (its logs move to realnode/logs.last); the shared image store stays
  # (fast next start) unless asked.
  if [[ -d "$RN/logs" ]]; then rm -rf "$RN_ROOT/logs.last"; mv "$RN/logs" "$RN_ROOT/logs.last"; fi
  rm -rf "$RN"
  if [[ "${FDP_REAL_NODE_KEEP_IMAGES:-1}" != 1 ]]; then
    mount | awk '{print $3}' | grep -E "^$IMAGE_STORE/" | sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$IMAGE_STORE"
  fi
  # The control plane goes too, still under the lock: a concurrent `up.sh NAME` then either
  # finished before this down or starts from nothing, never from half a cluster.
  KWOK_WORKDIR="$CACHE_ROOT/kwok" "$BIN/kwokctl" delete cluster --name "$NAME" >>"$CACHE_ROOT/kwok/kwokctl-$NAME.log" 2>&1
  if [[ "$(cat "$ACTIVE_FILE" 2>/dev/null)" == "$NAME" ]]; then rm -f "$ACTIVE_FILE"; fi
  log "real node of '$NAME' removed"
}

case "$cmd" in
  net-up)
    lock; check_active; ensure_packages; mkdir -p "$RN"
    if [[ ! -e "$RN/started" ]]; then
      for p in "${HOST_PATHS[@]}"; do [[ -e "$p" ]] && echo "$p"; done > "$RN/preexisting"
      touch "$RN/started"
    fi
    net_up; echo "$NAME" > "$ACTIVE_FILE" ;;
  start) lock; check_active; start ;;
  down) lock; down ;;
  status) cat "$ACTIVE_FILE" 2>/dev/null || true ;;
  *) echo "usage: $0 net-up|start|down NAME | status" >&2; exit 2 ;;
esac
