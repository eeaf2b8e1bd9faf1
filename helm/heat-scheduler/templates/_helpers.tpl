{{/* The chart's name. */}}
{{- define "heat-scheduler.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: a DNS label, at most 63 characters. */}}
{{- define "heat-scheduler.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "heat-scheduler.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object carries. */}}
{{- define "heat-scheduler.labels" -}}
helm.sh/chart: {{ include "heat-scheduler.chart" . }}
{{ include "heat-scheduler.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: heat
{{- end }}

{{/* The labels that select the scheduler's pods. */}}
{{- define "heat-scheduler.selectorLabels" -}}
app.kubernetes.io/name: {{ include "heat-scheduler.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "heat-scheduler.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "heat-scheduler.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "heat-scheduler.schedulerName" -}}
{{- default (include "heat-scheduler.fullname" .) .Values.config.schedulerName }}
{{- end }}

{{- define "heat-scheduler.runnerNamespace" -}}
{{- default .Release.Namespace .Values.runnerPods.namespace }}
{{- end }}

{{- define "heat-scheduler.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret and key holding the database URL. */}}
{{- define "heat-scheduler.databaseSecret" -}}
{{- default (printf "%s-database" (include "heat-scheduler.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{- define "heat-scheduler.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}url{{ end }}
{{- end }}

{{/* The address runner pods dial: the Service, so that any replica may answer. */}}
{{- define "heat-scheduler.advertiseAddress" -}}
{{- printf "%s.%s.svc:%d" (include "heat-scheduler.fullname" .) .Release.Namespace (int .Values.service.port) }}
{{- end }}

{{/* The Secret and key holding the first admin token. */}}
{{- define "heat-scheduler.adminTokenSecret" -}}
{{- default (printf "%s-admin-token" (include "heat-scheduler.fullname" .)) .Values.adminToken.existingSecret }}
{{- end }}

{{- define "heat-scheduler.adminTokenKey" -}}
{{- if .Values.adminToken.existingSecret }}{{ .Values.adminToken.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* Plaintext beyond loopback needs a decision: TLS, or insecure on purpose. */}}
{{- define "heat-scheduler.checkTransport" -}}
{{- if and (not .Values.tls.secretName) (not .Values.insecure) }}
{{- fail "give tls.secretName (a Secret with tls.crt and tls.key) to serve TLS, or insecure=true to serve plaintext on the pod network (e.g. behind a mesh that encrypts)" }}
{{- end }}
{{- end }}
