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

{{/* The Redis URL the gateway uses (in RAYLEIGH_GATEWAY_REDIS_URL, never in its arguments). It holds
no password when the chart has a password Secret: the gateway reads the password from the mounted
file (--redis-password-file, which wins over a URL's), so a URL written for older charts
(`user:$(REDIS_PASSWORD)@host`) loses its password part here and keeps its user. With Sentinel and
no redis.url, only the scheme counts (the host is the master's name: Sentinel says where it is). */}}
{{- define "rayleigh.redisURL" -}}
{{- $r := .Values.redis }}
{{- $tls := default (dict) $r.tls }}
{{- $sentinel := default (dict) $r.sentinel }}
{{- if include "rayleigh.redisBundled" . }}
{{- printf "redis://%s:6379/0" (include "rayleigh.redisHost" .) }}
{{- else if $r.url }}
{{- if include "rayleigh.redisSecret" . }}
{{- $url := regexReplaceAll "^(rediss?://):[^@/]*@" $r.url "${1}" }}
{{- regexReplaceAll "^(rediss?://)([^@/:]+):[^@/]*@" $url "${1}${2}@" }}
{{- else }}
{{- $r.url }}
{{- end }}
{{- else if $sentinel.hosts }}
{{- printf "%s://%s/0" (ternary "rediss" "redis" (eq (toString $tls.enabled) "true")) $sentinel.masterName }}
{{- end }}
{{- end }}

{{/* Where the gateway finds its Redis files: mounted Secrets, read-only. */}}
{{- define "rayleigh.redisPasswordFile" -}}/etc/rayleigh/redis-auth/password{{- end }}
{{- define "rayleigh.redisCAFile" -}}/etc/rayleigh/redis-ca/ca.crt{{- end }}
{{- define "rayleigh.redisCertDir" -}}/etc/rayleigh/redis-client{{- end }}

{{/* Combinations of redis.* values that cannot work, refused with what to change (JSON Schema
cannot compare two values with a message that says why). Rendered with the gateway only. */}}
{{- define "rayleigh.redisValidate" -}}
{{- $r := .Values.redis }}
{{- $tls := default (dict) $r.tls }}
{{- $sentinel := default (dict) $r.sentinel }}
{{- $tlsOn := eq (toString $tls.enabled) "true" }}
{{- if $r.enabled }}
{{- if $sentinel.hosts }}
{{- fail "redis.sentinel.hosts is set, but redis.enabled=true runs the bundled single-node Redis, which has no Sentinel: set redis.enabled=false to use your Sentinel-monitored Redis" }}
{{- end }}
{{- if $tlsOn }}
{{- fail "redis.tls.enabled=true, but the bundled Redis (redis.enabled=true) serves no TLS: set redis.enabled=false and redis.url=rediss://HOST:PORT/DB for a Redis that does, or redis.tls.enabled=false" }}
{{- end }}
{{- if $r.username }}
{{- fail "redis.username is set, but the bundled Redis (redis.enabled=true) has only its default user (password from redis.existingSecret or the generated Secret): leave redis.username empty, or set redis.enabled=false for an external Redis with ACL users" }}
{{- end }}
{{- end }}
{{- if and $tls.caSecret (not $tlsOn) }}
{{- fail "redis.tls.caSecret is set, but redis.tls.enabled=false: set redis.tls.enabled=true with a rediss:// redis.url, or remove redis.tls.caSecret" }}
{{- end }}
{{- if and $tls.clientCertSecret (not $tlsOn) }}
{{- fail "redis.tls.clientCertSecret is set, but redis.tls.enabled=false: a client certificate is presented only over TLS; set redis.tls.enabled=true with a rediss:// redis.url, or remove redis.tls.clientCertSecret" }}
{{- end }}
{{- if and (not $r.enabled) $r.url }}
{{- if and $tlsOn (hasPrefix "redis://" $r.url) }}
{{- fail "redis.tls.enabled=true, but redis.url is a plain redis:// URL: write it rediss://HOST:PORT/DB (TLS), or set redis.tls.enabled=false" }}
{{- end }}
{{- if and (not $tlsOn) (hasPrefix "rediss://" $r.url) }}
{{- fail "redis.url is a rediss:// (TLS) URL, but redis.tls.enabled=false: set redis.tls.enabled=true too (and redis.tls.caSecret when the server's certificate is from a private CA)" }}
{{- end }}
{{- if and (contains "$(REDIS_PASSWORD)" $r.url) (not $r.existingSecret) }}
{{- fail "redis.url refers to $(REDIS_PASSWORD), but redis.existingSecret is empty: set redis.existingSecret to the Secret (key `password`) and drop the password from the URL (the gateway reads it from the mounted Secret)" }}
{{- end }}
{{- end }}
{{- if and $sentinel.hosts (not $sentinel.masterName) }}
{{- fail "redis.sentinel.hosts needs redis.sentinel.masterName: the name the Sentinels monitor the master under (`sentinel monitor NAME ...`, often mymaster)" }}
{{- end }}
{{- if and $sentinel.masterName (not $sentinel.hosts) }}
{{- fail "redis.sentinel.masterName needs redis.sentinel.hosts: the Sentinels to ask for the master, as a list of host:port (port 26379 by default)" }}
{{- end }}
{{- if and (not $r.enabled) (not $r.url) (not $sentinel.hosts) }}
{{- fail "redis: set redis.enabled=true (bundled Redis), redis.url (an external one) or redis.sentinel.hosts with redis.sentinel.masterName (a Sentinel-monitored one): the gateway's rate limits need Redis" }}
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
