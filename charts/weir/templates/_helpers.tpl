{{/* The chart's name, or nameOverride. */}}
{{- define "weir.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 54 | trimSuffix "-" }}
{{- end }}

{{/* The release's base name: the release name when it already contains the chart's. */}}
{{- define "weir.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The operator's Deployment, Service, Lease and RBAC objects are named so. */}}
{{- define "weir.operatorName" -}}
{{- printf "%s-operator" (include "weir.fullname" .) }}
{{- end }}

{{/* Labels that select the operator's pods. */}}
{{- define "weir.selectorLabels" -}}
app.kubernetes.io/name: {{ include "weir.name" . }}-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "weir.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "weir.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: weir
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "weir.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weir.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "weir.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "weir.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) }}
{{- end }}

{{/* Namespaces of the runtime pods that NetworkPolicies cover, as a list. */}}
{{- define "weir.networkPolicyNamespaces" -}}
{{- if .Values.networkPolicy.namespaces }}
{{- toYaml .Values.networkPolicy.namespaces }}
{{- else }}
{{- toYaml (list (default .Release.Namespace .Values.watchNamespace)) }}
{{- end }}
{{- end }}

{{/*
What the operator does to the objects of the StreamJobs it watches, and nothing more:
read and finalize StreamJobs and write their status; server-side apply (create + patch)
and watch the kinds it renders; delete a job's Deployment on cleanup and its
ScaledObject when autoscaling is turned off; list pods to scrape their lag and watch them
to give them their partitions as soon as they start; write Events.
*/}}
{{- define "weir.operatorRules" -}}
- apiGroups: [weir.dev]
  resources: [streamjobs]
  verbs: [get, list, watch, patch]
- apiGroups: [weir.dev]
  resources: [streamjobs/status]
  verbs: [get, patch]
# Owner references with blockOwnerDeletion need update on the owner's finalizers.
- apiGroups: [weir.dev]
  resources: [streamjobs/finalizers]
  verbs: [update]
# Savepoints: one recorded for every savepoint taken, the ones users ask for taken, old
# ones deleted by retention.
- apiGroups: [weir.dev]
  resources: [streamjobsavepoints]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [weir.dev]
  resources: [streamjobsavepoints/status]
  verbs: [get, patch]
# Every child kind: watched, server-side applied, deleted once the job no longer renders it.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
# Each job's admin token, generated once into a Secret the job owns.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
