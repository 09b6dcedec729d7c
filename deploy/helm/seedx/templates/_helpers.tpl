{{/* Names -------------------------------------------------------------------------------- */}}
{{- define "seedx.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "seedx.fullname" -}}
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

{{/* A DNS-1123 name for a model or de-tokenizer ("first_stage" -> "first-stage"). */}}
{{- define "seedx.dnsName" -}}
{{- . | lower | replace "_" "-" | replace "." "-" | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "seedx.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "seedx.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------- */}}
{{- define "seedx.selectorLabels" -}}
app.kubernetes.io/name: {{ include "seedx.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .model }}
seedx.io/model: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "seedx.labels" -}}
{{ include "seedx.selectorLabels" . }}
app.kubernetes.io/part-of: seedx
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* image: repository:tag or repository@digest */}}
{{- define "seedx.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* Settings -> environment ----------------------------------------------------------------
A settings map becomes SEEDX_<PROCESS>_<FIELD> variables (pydantic-settings names): a map at the
top level is a nested group (`__`), a map or list below it (or a list at the top) is passed as
JSON, strings as they are, numbers and booleans as JSON scalars (so 8388608 is not 8.388608e+06),
and null is left out (the class default applies). */}}
{{- define "seedx.envValue" -}}
{{- if kindIs "string" . -}}
{{- . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{- define "seedx.settingsEnv" -}}
{{- $prefix := .prefix -}}
{{- range $key, $value := .settings }}
{{- if kindIs "map" $value }}
{{- range $field, $inner := $value }}
{{- if not (kindIs "invalid" $inner) }}
- name: {{ printf "%s%s__%s" $prefix (upper $key) (upper $field) }}
  value: {{ include "seedx.envValue" $inner | quote }}
{{- end }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
- name: {{ printf "%s%s" $prefix (upper $key) }}
  value: {{ include "seedx.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The transport of one process: the Redis URL (from a Secret) and the shared groups. */}}
{{- define "seedx.transportEnv" -}}
- name: {{ .prefix }}REDIS__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "seedx.redisSecretName" .root }}
      key: {{ include "seedx.redisSecretKey" .root }}
{{- with .root.Values.redis.external.sentinel }}
{{- if and .enabled .passwordSecret (not $.root.Values.redis.bundled) }}
- name: {{ $.prefix }}REDIS__SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .passwordSecret }}
      key: {{ .passwordSecretKey }}
{{- end }}
{{- end }}
{{ include "seedx.settingsEnv" (dict "prefix" .prefix "settings" (dict "redis" .root.Values.transport.redis "queue" .root.Values.transport.queue)) }}
{{- end -}}

{{/* Redis ------------------------------------------------------------------------------------ */}}
{{- define "seedx.redisSecretName" -}}
{{- if and (not .Values.redis.bundled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecret -}}
{{- else -}}
{{- printf "%s-redis" (include "seedx.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "seedx.redisSecretKey" -}}
{{- if and (not .Values.redis.bundled) .Values.redis.external.existingSecret -}}
{{- .Values.redis.external.existingSecretKey -}}
{{- else -}}
url
{{- end -}}
{{- end -}}

{{- define "seedx.redisHost" -}}
{{- printf "%s-redis.%s.svc" (include "seedx.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "seedx.redisUrl" -}}
{{- if .Values.redis.bundled -}}
{{- printf "redis://%s:6379/0" (include "seedx.redisHost" .) -}}
{{- else -}}
{{- $url := required "redis.bundled=false needs redis.external.url or redis.external.existingSecret" .Values.redis.external.url -}}
{{- if and .Values.redis.external.sentinel.enabled (not (regexMatch "^rediss?\\+sentinel://" $url)) -}}
{{- fail "redis.external.sentinel.enabled needs a redis+sentinel://[user:password@]host:port[,host:port...]/<master-set>/<db> URL in redis.external.url" -}}
{{- end -}}
{{- $url -}}
{{- end -}}
{{- end -}}

{{/* host:port of Redis for KEDA */}}
{{- define "seedx.redisAddress" -}}
{{- if .Values.redis.bundled -}}
{{- printf "%s:6379" (include "seedx.redisHost" .) -}}
{{- else -}}
{{- required "keda with an external Redis needs redis.external.address (host:port)" .Values.redis.external.address -}}
{{- end -}}
{{- end -}}

{{/* Models -------------------------------------------------------------------------------- */}}
{{- define "seedx.servingRoot" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.models.mountPath) .Values.models.servingDir -}}
{{- end -}}

{{- define "seedx.modelClaim" -}}
{{- default (printf "%s-models" (include "seedx.fullname" .)) .Values.models.cache.existingClaim -}}
{{- end -}}

{{/* The model volume of a worker pod: an emptyDir for the tiny demo, else the cache PVC. */}}
{{- define "seedx.modelVolume" -}}
- name: models
{{- if .Values.models.tiny.enabled }}
  emptyDir:
    sizeLimit: 2Gi
{{- else }}
  persistentVolumeClaim:
    claimName: {{ include "seedx.modelClaim" . }}
    readOnly: true
{{- end }}
{{- end -}}

{{/* Init containers of the tiny demo: write a tiny release tree, convert it. */}}
{{- define "seedx.tinyInit" -}}
{{- $root := .root -}}
{{- $src := printf "%s/tiny-release" (trimSuffix "/" $root.Values.models.mountPath) -}}
- name: make-tiny
  image: {{ include "seedx.image" $root.Values.images.worker }}
  imagePullPolicy: {{ $root.Values.images.worker.pullPolicy }}
  command: ["seedx", "make-tiny", {{ $src | quote }}, "--seed", "0"]
  securityContext: {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  resources: {{- toYaml .resources | nindent 4 }}
  volumeMounts:
    - {name: models, mountPath: {{ $root.Values.models.mountPath | quote }}}
    - {name: tmp, mountPath: /tmp}
- name: convert
  image: {{ include "seedx.image" $root.Values.images.worker }}
  imagePullPolicy: {{ $root.Values.images.worker.pullPolicy }}
  command: ["seedx", "convert", {{ $src | quote }}, {{ include "seedx.servingRoot" $root | quote }}, "--dtype", {{ $root.Values.models.tiny.dtype | quote }}, "--quiet"]
  securityContext: {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  resources: {{- toYaml .resources | nindent 4 }}
  volumeMounts:
    - {name: models, mountPath: {{ $root.Values.models.mountPath | quote }}}
    - {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* GPU resources merged into a stage's resources. */}}
{{- define "seedx.workerResources" -}}
{{- $res := deepCopy (default (dict) .resources) -}}
{{- if and .root.Values.gpu.enabled (gt (int (default 0 .gpus)) 0) -}}
{{- $limits := default (dict) $res.limits -}}
{{- $_ := set $limits .root.Values.gpu.resourceName (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Scheduling: the item's own nodeSelector/tolerations win over the stage's; GPU tolerations
only when GPUs are used. */}}
{{- define "seedx.workerScheduling" -}}
{{- $nodeSelector := default .stage.nodeSelector .item.nodeSelector -}}
{{- $tolerations := default .stage.tolerations .item.tolerations -}}
{{- if not .root.Values.gpu.enabled }}{{ $tolerations = default (list) .item.tolerations }}{{ end -}}
{{- with $nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .stage.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Worker drain: queue.shutdown_grace_s plus a margin. */}}
{{- define "seedx.workerGraceSeconds" -}}
{{- add (int (ceil .Values.transport.queue.shutdown_grace_s)) (int .Values.shutdown.marginSeconds) -}}
{{- end -}}

{{/* Placement -------------------------------------------------------------------------------- */}}
{{/* "true" when the GPU groups of placement.groups replace the per-model/per-de-tokenizer
Deployments (placement.layout=colocated). */}}
{{- define "seedx.colocated" -}}
{{- if eq .Values.placement.layout "colocated" }}true{{ end -}}
{{- end -}}

{{/* A settings map as JSON {env name: value} with the names and values of seedx.settingsEnv: the
environment of one process of a colocated group (colocate.py gives it to that process only). */}}
{{- define "seedx.settingsEnvMap" -}}
{{- $out := dict -}}
{{- range $key, $value := .settings }}
{{- if kindIs "map" $value }}
{{- range $field, $inner := $value }}
{{- if not (kindIs "invalid" $inner) }}
{{- $_ := set $out (printf "%s%s__%s" $.prefix (upper $key) (upper $field)) (include "seedx.envValue" $inner) }}
{{- end }}
{{- end }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $out (printf "%s%s" $.prefix (upper $key)) (include "seedx.envValue" $value) }}
{{- end }}
{{- end }}
{{- toJson $out -}}
{{- end -}}

{{/* Jobs one worker takes at once: its heartbeat's capacity, from its merged `settings` (the
defaults are LLMWorkerSettings.capacity and DiffusionWorkerSettings.held_jobs = 2 x max_batch;
tests/deploy/test_chart.py checks them against the classes). */}}
{{- define "seedx.workerCapacity" -}}
{{- if eq .stage "llm" -}}
{{- default 32 .settings.capacity -}}
{{- else -}}
{{- default (mul 2 (default 4 .settings.max_batch)) .settings.capacity -}}
{{- end -}}
{{- end -}}

{{/* The triggers of one job stream seedx:jobs:<stage>:<model> in a ScaledObject; `settings`: the
worker's merged settings. KEDA's HPA takes the largest replica count any trigger asks for.
- keda.prometheus.serverAddress set: one trigger on the gateway's seedx_queue_load (queued +
  delivered-unacknowledged jobs over the live workers' capacity), a Value target of
  keda.<stage>.targetLoad: the HPA asks ready pods x load / targetLoad = jobs / (capacity x
  targetLoad) replicas. ignoreNullValues false: a gateway no longer scraped is an error (KEDA
  keeps the replicas it has), not a load of 0 that would scale busy workers in.
- otherwise two redis-streams triggers on Redis itself: the group's lag (jobs not yet delivered)
  against keda.<stage>.lagCount per replica, and its pending entries (delivered, not yet
  acknowledged) against the worker's capacity, so a stage whose workers hold pulled jobs keeps
  the replicas that hold them (lag alone reads 0 while every worker is full). The larger of two
  counts is at least half their sum: it can under-count, never over-count (docs/deploy.md). */}}
{{- define "seedx.kedaTriggers" -}}
{{- $root := .root -}}
{{- $k := $root.Values.keda -}}
{{- $scale := index $k .stage -}}
{{- if $k.prometheus.serverAddress }}
- type: prometheus
  metricType: Value
  metadata:
    serverAddress: {{ $k.prometheus.serverAddress | quote }}
    query: {{ printf "max(seedx_queue_load{namespace=%q, service=\"%s-gateway\", stage=%q, model=%q})" $root.Release.Namespace (include "seedx.fullname" $root) .stage .model | quote }}
    threshold: {{ $scale.targetLoad | toString | quote }}
    activationThreshold: "0"
    ignoreNullValues: "false"
{{- else }}
{{- $stream := printf "seedx:jobs:%s:%s" .stage .model }}
- type: redis-streams
  metadata:
    {{- include "seedx.kedaRedisStream" (dict "root" $root "stream" $stream) | nindent 4 }}
    lagCount: {{ $scale.lagCount | toString | quote }}
    activationLagCount: "0"
  {{- include "seedx.kedaRedisAuth" $root }}
- type: redis-streams
  metadata:
    {{- include "seedx.kedaRedisStream" (dict "root" $root "stream" $stream) | nindent 4 }}
    pendingEntriesCount: {{ include "seedx.workerCapacity" . | quote }}
  {{- include "seedx.kedaRedisAuth" $root }}
{{- end }}
{{- end -}}

{{/* Where a redis-streams trigger reads `stream` of the `workers` consumer group. */}}
{{- define "seedx.kedaRedisStream" -}}
{{- $root := .root -}}
address: {{ include "seedx.redisAddress" $root | quote }}
databaseIndex: {{ if $root.Values.redis.bundled }}"0"{{ else }}{{ $root.Values.redis.external.database | toString | quote }}{{ end }}
enableTLS: {{ and (not $root.Values.redis.bundled) $root.Values.redis.external.tls | toString | quote }}
stream: {{ .stream | quote }}
consumerGroup: workers
{{- end -}}

{{- define "seedx.kedaRedisAuth" -}}
{{- if or .Values.keda.passwordSecret.name .Values.redis.bundled }}
  authenticationRef:
    name: {{ include "seedx.fullname" . }}-redis
{{- end }}
{{- end -}}
