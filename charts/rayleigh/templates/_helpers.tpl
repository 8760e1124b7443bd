{{/* Chart name for resource names (nameOverride), truncated to a DNS label. */}}
{{- define "rayleigh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<name>, or <release> when it already contains the name.
Truncated to 48 characters so that the longest suffix (-gateway-routes) still fits a DNS label. */}}
{{- define "rayleigh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- $name := include "rayleigh.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 48 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 48 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "rayleigh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. Call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "rayleigh.labels" -}}
helm.sh/chart: {{ include "rayleigh.chart" .ctx | quote }}
{{ include "rayleigh.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service | quote }}
app.kubernetes.io/part-of: rayleigh
{{- end }}

{{/* Selector labels. app.kubernetes.io/name is always the chart's name (`rayleigh`), whatever
nameOverride says: the operator's per-model NetworkPolicies admit the gateway and operator pods by
app.kubernetes.io/name=rayleigh + app.kubernetes.io/component, and Deployment selectors cannot change
on upgrade. The release is told apart by app.kubernetes.io/instance. */}}
{{- define "rayleigh.selectorLabels" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name | quote }}
app.kubernetes.io/instance: {{ .ctx.Release.Name | quote }}
app.kubernetes.io/component: {{ .component | quote }}
{{- end }}

{{/* An image reference: repository:tag (tag defaults to the chart's appVersion). */}}
{{- define "rayleigh.image" -}}
{{- $tag := .image.tag | default .ctx.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end }}

{{/* The operator's ServiceAccount name as a quoted YAML scalar (a name such as "0" or "yes" must
stay a string wherever it is written, including templates/operator-rbac.yaml). */}}
{{- define "rayleigh.operatorServiceAccount" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "rayleigh.fullname" .)) .Values.operator.serviceAccount.name | quote }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name | quote }}
{{- end }}
{{- end }}

{{- define "rayleigh.apiKeysSecret" -}}
{{- default (printf "%s-api-keys" (include "rayleigh.fullname" .)) .Values.gateway.apiKeys.existingSecret }}
{{- end }}

{{/* The ConfigMap with every model's route: written by the operator, mounted by the gateway. */}}
{{- define "rayleigh.routesConfigMap" -}}
{{- if .Values.gateway.enabled }}
{{- default (printf "%s-gateway-routes" (include "rayleigh.fullname" .)) .Values.gateway.routesConfigMap }}
{{- else }}
{{- .Values.operator.externalGateway.routesConfigMap }}
{{- end }}
{{- end }}

{{/* Namespace of the gateway that serves this release's models. */}}
{{- define "rayleigh.gatewayNamespace" -}}
{{- if .Values.gateway.enabled }}
{{- .Release.Namespace }}
{{- else }}
{{- default .Release.Namespace .Values.operator.externalGateway.namespace }}
{{- end }}
{{- end }}

{{/* status.endpoint of the ModelDeployments. */}}
{{- define "rayleigh.endpoint" -}}
{{- if .Values.operator.endpoint }}
{{- .Values.operator.endpoint }}
{{- else if .Values.gateway.enabled }}
{{- printf "http://%s-gateway.%s.svc:%d/v1" (include "rayleigh.fullname" .) .Release.Namespace (int .Values.gateway.service.port) }}
{{- else }}
{{- fail "operator.endpoint: with gateway.enabled=false, set the URL clients reach the models at (the other release's gateway), e.g. http://rayleigh-gateway.rayleigh-system.svc:80/v1" }}
{{- end }}
{{- end }}

{{/* The bundled Redis runs only for this release's gateway. */}}
{{- define "rayleigh.redisBundled" -}}
{{- if and .Values.gateway.enabled .Values.redis.enabled }}true{{ end }}
{{- end }}

{{/* The Secret (key `password`) with the Redis password: redis.existingSecret, or the generated one
of the bundled Redis; empty for an external Redis without a password. */}}
{{- define "rayleigh.redisSecret" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if include "rayleigh.redisBundled" . }}
{{- printf "%s-redis-auth" (include "rayleigh.fullname" .) }}
{{- end }}
{{- end }}

{{- define "rayleigh.redisHost" -}}
{{- printf "%s-redis.%s.svc" (include "rayleigh.fullname" .) .Release.Namespace }}
{{- end }}

{{/* The Redis URL the gateway uses; $(REDIS_PASSWORD) is expanded by the kubelet from the pod's env
(the value never appears in the pod spec or the arguments). An external URL that already holds
user info is used as is. */}}
{{- define "rayleigh.redisURL" -}}
{{- if include "rayleigh.redisBundled" . }}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:6379/0" (include "rayleigh.redisHost" .) }}
{{- else if and .Values.redis.existingSecret (not (contains "@" .Values.redis.url)) }}
{{- printf "redis://:$(REDIS_PASSWORD)@%s" (trimPrefix "redis://" .Values.redis.url) }}
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
      kubernetes.io/metadata.name: {{ . | quote }}
{{- end }}
{{- else }}
- namespaceSelector: {}
{{- end }}
{{- end }}
