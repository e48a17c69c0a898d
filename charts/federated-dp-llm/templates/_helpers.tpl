{{/* Chart name, fullname and labels. */}}
{{- define "fdp.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fdp.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fdp.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fdp.serviceAccountName" -}}
{{- default (include "fdp.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The namespaces to watch: the list, or the release namespace. */}}
{{- define "fdp.watchNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- join "," .Values.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs, shared by Role and ClusterRole. No wildcards. */}}
{{- define "fdp.rules" -}}
# Its own custom resources: watch them, patch kopf's annotations, write status.
- apiGroups: ["fdp.io"]
  resources: ["hospitalnodes", "privacypolicies", "federatedrouters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["fdp.io"]
  resources: ["hospitalnodes/status", "privacypolicies/status", "federatedrouters/status"]
  verbs: ["get", "patch", "update"]
# ownerReferences with blockOwnerDeletion on the router's children.
- apiGroups: ["fdp.io"]
  resources: ["federatedrouters/finalizers"]
  verbs: ["update"]
# The router's children (server-side apply = create + patch); stale ones are deleted.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps", "serviceaccounts"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Secrets only as needed: read the ones a spec names (to check their opt-in label), write the
# router CA and serving certificate, create each router's audit key once. No list/watch (the
# operator never enumerates Secrets), no delete (garbage collection removes the owned ones;
# the audit key outlives its router on purpose).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# The SQLite ledger's claim: created once, only its ownerReferences patched afterwards
# (spec.ledger.sqlite.whenDeleted). No delete: Retain keeps it, Delete leaves it to GC.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
# Events on node health transitions and handler failures.
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
