#!/usr/bin/env bash
# Static local storage for the real node: a default StorageClass `fdp-local`
# (no provisioner, WaitForFirstConsumer) and N `local` PersistentVolumes backed by
# directories under the cluster's cache, each pinned to the real node. What a cloud
# cluster's default provisioner does for a SQLite router's ledger claim, without one.
# Idempotent; hack/cluster/down.sh removes the directories with the rest of the node.
#
# Usage: hack/cluster/local-volumes.sh KUBECTL NODE DIR [COUNT] [SIZE]
set -euo pipefail
KUBECTL="$1"; NODE="$2"; DIR="$3"; COUNT="${4:-8}"; SIZE="${5:-2Gi}"
mkdir -p "$DIR"
{
  cat <<YAML
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fdp-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
  labels: {fdp.io/local-cluster: "true"}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
reclaimPolicy: Retain
YAML
  for i in $(seq 1 "$COUNT"); do
    path="$DIR/pv$i"
    mkdir -p "$path"
    # Any pod user may write (uid 10001 for the router); the directory is the cluster's own.
    chmod 0777 "$path"
    cat <<YAML
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: fdp-local-$NODE-$i
  labels: {fdp.io/local-cluster: "true"}
spec:
  capacity: {storage: $SIZE}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: fdp-local
  local: {path: $path}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$NODE]}]
YAML
  done
} | "$KUBECTL" apply -f - >/dev/null
echo "storage: StorageClass fdp-local (default) with $COUNT local volumes of $SIZE on $NODE under $DIR" >&2
