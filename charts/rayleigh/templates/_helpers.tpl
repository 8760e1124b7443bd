{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "rayleigh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart>, or <release> when it already contains the chart name. */}}
{{- define "rayleigh.fullname" -}}
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

{{- define "rayleigh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "rayleigh.labels" -}}
helm.sh/chart: {{ include "rayleigh.chart" .ctx }}
{{ include "rayleigh.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: rayleigh
{{- end }}

{{/* Selector labels. The operator's NetworkPolicies admit the gateway and operator pods by
app.kubernetes.io/name + app.kubernetes.io/component, so these must stay stable. */}}
{{- define "rayleigh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rayleigh.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "rayleigh.image" -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end }}

{{- define "rayleigh.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "rayleigh.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "rayleigh.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "rayleigh.fullname" .)) .Values.gateway.apiKeys.existingSecret }}
{{- end }}

{{- define "rayleigh.redisHost" -}}
{{- printf "%s-redis.%s.svc" (include "rayleigh.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The Redis URL the gateway uses; $(REDIS_PASSWORD) is expanded by the kubelet from the env. */}}
{{- define "rayleigh.redisURL" -}}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.existingSecret }}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "rayleigh.redisHost" .) }}
{{- else }}
{{- printf "redis://%s:6379/0" (include "rayleigh.redisHost" .) }}
{{- end }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* "auto" / "true" / "false" switches for Prometheus Operator kinds. */}}
{{- define "rayleigh.monitoringOn" -}}
{{- $v := toString .value -}}
{{- if eq $v "auto" -}}
{{- if .ctx.Capabilities.APIVersions.Has "monitoring.coreos.com/v1" }}true{{ end -}}
{{- else if eq $v "true" -}}
true
{{- end -}}
{{- end }}

{{/* Container security context shared by every container of the chart. */}}
{{- define "rayleigh.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* NetworkPolicy peers allowed to scrape metrics. */}}
{{- define "rayleigh.metricsFrom" -}}
{{- if .Values.networkPolicy.metricsNamespaces }}
{{- range .Values.networkPolicy.metricsNamespaces }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . }}
{{- end }}
{{- else }}
- namespaceSelector: {}
{{- end }}
{{- end }}
