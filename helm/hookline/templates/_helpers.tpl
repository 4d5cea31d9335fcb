{{/* Names, labels and the configuration every component shares. */}}

{{- define "hookline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hookline.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hookline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hookline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hookline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "hookline.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hookline
{{- end -}}

{{/* Labels of one component: (dict "root" $ "component" "receiver") */}}
{{- define "hookline.componentLabels" -}}
{{ include "hookline.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hookline.componentSelector" -}}
{{ include "hookline.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hookline.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "hookline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hookline.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hookline.operatorServiceAccountName" -}}
{{- default (printf "%s-operator" (include "hookline.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "hookline.redisSecretName" -}}
{{- default (printf "%s-redis" (include "hookline.fullname" .)) .Values.redis.existingSecret -}}
{{- end -}}

{{- define "hookline.redisSecretKey" -}}
{{- if .Values.redis.existingSecret -}}{{ .Values.redis.existingSecretKey }}{{- else -}}url{{- end -}}
{{- end -}}

{{/* The dispatcher Deployment of a pool: (dict "root" $ "pool" $pool) */}}
{{- define "hookline.dispatcherName" -}}
{{- printf "%s-dispatcher-%s" (include "hookline.fullname" .root) .pool.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* A number as HOOKLINE_* wants it: integers without exponent or decimals. */}}
{{- define "hookline.num" -}}
{{- if or (kindIs "string" .) (kindIs "bool" .) -}}{{ . }}{{- else if eq (float64 .) (float64 (int64 .)) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- end -}}

{{/* The values, checked once: a bad combination fails the render with the reason. */}}
{{- define "hookline.validate" -}}
{{- $store := .Values.bodies.store -}}
{{- if not (has $store (list "inline" "gcs" "fs")) -}}
{{- fail (printf "bodies.store must be inline, gcs or fs, not %q" $store) -}}
{{- end -}}
{{- if and (eq $store "gcs") (not .Values.bodies.gcs.bucket) -}}
{{- fail "bodies.store=gcs needs bodies.gcs.bucket" -}}
{{- end -}}
{{- if and (eq $store "fs") (not .Values.bodies.fs.claimName) -}}
{{- fail "bodies.store=fs needs bodies.fs.claimName (a ReadWriteMany PersistentVolumeClaim shared by receivers and dispatchers)" -}}
{{- end -}}
{{- if gt (int64 .Values.bodies.inlineLimit) (int64 .Values.bodies.maxBodyBytes) -}}
{{- fail "bodies.inlineLimit must not exceed bodies.maxBodyBytes" -}}
{{- end -}}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) -}}
{{- fail "set redis.url or redis.existingSecret" -}}
{{- end -}}
{{- if not .Values.pools -}}
{{- fail "pools must name at least one dispatcher pool" -}}
{{- end -}}
{{- $seen := dict -}}
{{- range .Values.pools -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" (toString .name)) -}}
{{- fail (printf "pool name %q: lower-case letters, digits and '-' (it names a Deployment and a Redis stream, and is what an endpoint's spec.pool says)" (toString .name)) -}}
{{- end -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "pool %q is listed twice" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- if gt (int64 .minReplicas) (int64 .maxReplicas) -}}
{{- fail (printf "pool %q: minReplicas must not exceed maxReplicas" .name) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.operator.peering) (gt (int64 .Values.operator.replicas) 1) -}}
{{- fail "operator.replicas above 1 needs operator.peering (two standalone operators would handle the same endpoints)" -}}
{{- end -}}
{{- end -}}

{{/* Settings of every component: Redis prefix and timeout, tracing. */}}
{{- define "hookline.commonConfig" -}}
{{- $root := .root -}}
{{- $env := dict "HOOKLINE_PREFIX" $root.Values.redis.prefix "HOOKLINE_REDIS_TIMEOUT" (include "hookline.num" $root.Values.redis.timeout) -}}
{{- $_ := set $env "OTEL_SERVICE_NAME" (printf "hookline-%s" .component) -}}
{{- if $root.Values.tracing.enabled -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "otlp" -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_ENDPOINT" $root.Values.tracing.otlpEndpoint -}}
{{- $_ := set $env "OTEL_EXPORTER_OTLP_PROTOCOL" $root.Values.tracing.protocol -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER" $root.Values.tracing.sampler -}}
{{- $_ := set $env "OTEL_TRACES_SAMPLER_ARG" (toString $root.Values.tracing.ratio) -}}
{{- else -}}
{{- $_ := set $env "OTEL_TRACES_EXPORTER" "none" -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Settings of the components that read and write bodies (receiver, dispatchers). */}}
{{- define "hookline.bodyConfig" -}}
{{- $b := .Values.bodies -}}
{{- $env := dict "HOOKLINE_MAX_BODY_BYTES" (include "hookline.num" $b.maxBodyBytes) "HOOKLINE_BODY_RETENTION" (include "hookline.num" $b.retention) -}}
{{- if eq $b.store "gcs" -}}
{{- $_ := set $env "HOOKLINE_BODY_STORE" "gcs" -}}
{{- $_ := set $env "HOOKLINE_GCS_BUCKET" $b.gcs.bucket -}}
{{- $_ := set $env "HOOKLINE_INLINE_LIMIT" (include "hookline.num" $b.inlineLimit) -}}
{{- if $b.gcs.credentialsSecret -}}
{{- $_ := set $env "GOOGLE_APPLICATION_CREDENTIALS" (printf "/var/run/secrets/hookline/gcs/%s" $b.gcs.credentialsSecretKey) -}}
{{- end -}}
{{- else if eq $b.store "fs" -}}
{{- $_ := set $env "HOOKLINE_BODY_STORE" "fs" -}}
{{- $_ := set $env "HOOKLINE_BODY_DIR" "/var/lib/hookline/bodies" -}}
{{- $_ := set $env "HOOKLINE_INLINE_LIMIT" (include "hookline.num" $b.inlineLimit) -}}
{{- else -}}
{{/* inline: every accepted body fits the queue entry, so the store is never written. */}}
{{- $_ := set $env "HOOKLINE_BODY_STORE" "fs" -}}
{{- $_ := set $env "HOOKLINE_BODY_DIR" "/tmp/hookline/bodies" -}}
{{- $_ := set $env "HOOKLINE_INLINE_LIMIT" (include "hookline.num" $b.maxBodyBytes) -}}
{{- end -}}
{{- toYaml $env -}}
{{- end -}}

{{/* A component's `config` map, values stringified. */}}
{{- define "hookline.extraConfig" -}}
{{- $env := dict -}}
{{- range $k, $v := . -}}
{{- $_ := set $env $k (include "hookline.num" $v) -}}
{{- end -}}
{{- if $env -}}{{ toYaml $env }}{{- end -}}
{{- end -}}

{{- define "hookline.receiverConfig" -}}
{{- $env := merge (dict "HOOKLINE_RECEIVER_PORT" (toString .Values.receiver.port) "HOOKLINE_REQUEST_TIMEOUT" (include "hookline.num" .Values.receiver.requestTimeout)) (fromYaml (include "hookline.bodyConfig" .)) (fromYaml (include "hookline.commonConfig" (dict "root" . "component" "receiver"))) -}}
{{- $env = merge (fromYaml (include "hookline.extraConfig" .Values.receiver.config) | default dict) $env -}}
{{- toYaml $env -}}
{{- end -}}

{{- define "hookline.dispatcherConfig" -}}
{{- $d := .Values.dispatcher -}}
{{- $env := dict "HOOKLINE_DISPATCHER_PORT" (toString $d.port) "HOOKLINE_DELIVERY_TIMEOUT" (include "hookline.num" $d.deliveryTimeout) "HOOKLINE_SHUTDOWN_GRACE" (include "hookline.num" $d.shutdownGrace) -}}
{{- if $d.allowCidrs -}}
{{- $_ := set $env "HOOKLINE_ALLOW_CIDRS" (join "," $d.allowCidrs) -}}
{{- end -}}
{{- $env = merge $env (fromYaml (include "hookline.bodyConfig" .)) (fromYaml (include "hookline.commonConfig" (dict "root" . "component" "dispatcher"))) -}}
{{- $env = merge (fromYaml (include "hookline.extraConfig" $d.config) | default dict) $env -}}
{{- toYaml $env -}}
{{- end -}}

{{/* The namespaces the operator watches, comma-separated; empty: the whole cluster. A list
     always includes the release namespace: the scaler finds the dispatchers where the
     operator watches. */}}
{{- define "hookline.operatorNamespaces" -}}
{{- with .Values.operator.watchNamespaces -}}
{{- append . $.Release.Namespace | uniq | join "," -}}
{{- end -}}
{{- end -}}

{{- define "hookline.operatorConfig" -}}
{{- $o := .Values.operator -}}
{{- $env := dict "HOOKLINE_OPERATOR_PORT" (toString $o.port) "HOOKLINE_OPERATOR_INTERVAL" (include "hookline.num" $o.interval) "HOOKLINE_SIGNING_GRACE" (include "hookline.num" $o.signingGrace) -}}
{{- $_ := set $env "HOOKLINE_OPERATOR_NAMESPACES" (include "hookline.operatorNamespaces" .) -}}
{{- $_ := set $env "HOOKLINE_OPERATOR_PEERING" $o.peering -}}
{{- $env = merge $env (fromYaml (include "hookline.commonConfig" (dict "root" . "component" "operator"))) -}}
{{- $env = merge (fromYaml (include "hookline.extraConfig" $o.config) | default dict) $env -}}
{{- toYaml $env -}}
{{- end -}}

{{/* Pod annotations: Prometheus scraping and the checksums that roll a Deployment when
     its own configuration changes (and only then). (dict "root" $ "config" "<rendered>" "port" N) */}}
{{- define "hookline.podAnnotations" -}}
{{- $root := .root -}}
checksum/config: {{ .config | sha256sum }}
{{- if not $root.Values.redis.existingSecret }}
checksum/redis: {{ $root.Values.redis.url | sha256sum }}
{{- end }}
{{- if $root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with $root.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The pieces of every container: env from its ConfigMap and the Redis Secret. */}}
{{- define "hookline.env" -}}
- name: HOOKLINE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "hookline.redisSecretName" . }}
      key: {{ include "hookline.redisSecretKey" . }}
{{- /* Each span says which pod made it (the Jaeger UI shows these as process tags). */}}
- name: K8S_POD_NAME
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
- name: K8S_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: k8s.pod.name=$(K8S_POD_NAME),k8s.namespace.name=$(K8S_NAMESPACE)
{{- end -}}

{{/* Probes on the component's one HTTP port, named http. */}}
{{- define "hookline.probes" -}}
livenessProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 10
  timeoutSeconds: 2
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: http}
  periodSeconds: 5
  timeoutSeconds: 2
  failureThreshold: 2
startupProbe:
  httpGet: {path: /healthz, port: http}
  periodSeconds: 1
  failureThreshold: 30
{{- end -}}
