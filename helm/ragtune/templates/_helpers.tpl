{{/* Names, labels and the values shared by several templates. */}}

{{- define "ragtune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragtune.fullname" -}}
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

{{- define "ragtune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragtune.labels" -}}
helm.sh/chart: {{ include "ragtune.chart" . }}
app.kubernetes.io/name: {{ include "ragtune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ragtune
{{- end -}}

{{/* Selector labels of one component: include "ragtune.selectorLabels" (list . "api") */}}
{{- define "ragtune.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "ragtune.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ragtune.componentLabels" -}}
{{- $root := index . 0 -}}
{{ include "ragtune.labels" $root }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "ragtune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ragtune.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ragtune.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "ragtune.vllmImage" -}}
{{- printf "%s:%s" .Values.vllm.image.repository (.Values.vllm.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* vLLM: a StatefulSet behind a headless Service, so each replica has a stable DNS name. */}}
{{- define "ragtune.vllmName" -}}
{{- printf "%s-vllm" (include "ragtune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ragtune.vllmHeadless" -}}
{{- printf "%s-vllm-headless" (include "ragtune.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
RAGTUNE_ENGINE__URLS: a JSON list with every vLLM replica,
http://<statefulset>-<i>.<headless service>.<namespace>.svc.<cluster domain>:<port>, i < replicas.
ragtune keeps each replica's adapters in step with the registry, so it must address each one; a
ClusterIP Service would hide all but one. Scaling vLLM is a `helm upgrade` (the ConfigMap changes
and the API pods roll).
*/}}
{{- define "ragtune.engineUrls" -}}
{{- if .Values.vllm.enabled -}}
{{- $urls := list -}}
{{- $sts := include "ragtune.vllmName" . -}}
{{- $svc := include "ragtune.vllmHeadless" . -}}
{{- range $i := until (int .Values.vllm.replicas) -}}
{{- $urls = append $urls (printf "http://%s-%d.%s.%s.svc.%s:%d" $sts $i $svc $.Release.Namespace $.Values.clusterDomain (int $.Values.vllm.port)) -}}
{{- end -}}
{{- toJson $urls -}}
{{- else -}}
{{- if not .Values.externalEngine.urls -}}
{{- fail "vllm.enabled=false needs externalEngine.urls (every vLLM replica's base URL)" -}}
{{- end -}}
{{- toJson .Values.externalEngine.urls -}}
{{- end -}}
{{- end -}}

{{/* The official Qdrant chart's fullname (its _helpers.tpl), for the subchart's Service. */}}
{{- define "ragtune.qdrantFullname" -}}
{{- if .Values.qdrant.fullnameOverride -}}
{{- .Values.qdrant.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default "qdrant" .Values.qdrant.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ragtune.qdrantUrl" -}}
{{- if and .Values.qdrant.enabled .Values.externalQdrant.url -}}
{{- fail "set either qdrant.enabled (the Qdrant subchart) or externalQdrant.url, not both" -}}
{{- else if .Values.qdrant.enabled -}}
{{- printf "http://%s:6333" (include "ragtune.qdrantFullname" .) -}}
{{- else if .Values.externalQdrant.url -}}
{{- .Values.externalQdrant.url -}}
{{- else -}}
{{- fail "Qdrant: set qdrant.enabled=true (official chart) or externalQdrant.url" -}}
{{- end -}}
{{- end -}}

{{- define "ragtune.secretName" -}}
{{- printf "%s-secrets" (include "ragtune.fullname" .) -}}
{{- end -}}

{{- define "ragtune.databaseSecretName" -}}
{{- if .Values.database.url -}}
{{- include "ragtune.secretName" . -}}
{{- else -}}
{{- required "database: set database.existingSecret (a Secret holding the PostgreSQL URL) or database.url" .Values.database.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "ragtune.databaseSecretKey" -}}
{{- if .Values.database.url -}}database-url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end -}}

{{- define "ragtune.adminKeySecretName" -}}
{{- default (include "ragtune.secretName" .) .Values.adminKey.existingSecret -}}
{{- end -}}

{{- define "ragtune.adminKeySecretKey" -}}
{{- if .Values.adminKey.existingSecret -}}{{ .Values.adminKey.existingSecretKey }}{{- else -}}admin-key{{- end -}}
{{- end -}}

{{- define "ragtune.engineKeySecretName" -}}
{{- default (include "ragtune.secretName" .) .Values.engineApiKey.existingSecret -}}
{{- end -}}

{{- define "ragtune.engineKeySecretKey" -}}
{{- if .Values.engineApiKey.existingSecret -}}{{ .Values.engineApiKey.existingSecretKey }}{{- else -}}engine-api-key{{- end -}}
{{- end -}}

{{/* Pod and container security contexts: the chart's defaults, then a component's overrides. */}}
{{- define "ragtune.podSecurityContext" -}}
{{- $root := index . 0 -}}
{{- $override := index . 1 | default dict -}}
{{- toYaml (mergeOverwrite (deepCopy $root.Values.podSecurityContext) $override) -}}
{{- end -}}

{{- define "ragtune.securityContext" -}}
{{- $root := index . 0 -}}
{{- $override := index . 1 | default dict -}}
{{- toYaml (mergeOverwrite (deepCopy $root.Values.securityContext) $override) -}}
{{- end -}}

{{/* The base model folder: written by an init container (model.source=prepare) or on a PVC. */}}
{{- define "ragtune.modelVolume" -}}
- name: models
{{- if eq .Values.model.source "pvc" }}
  persistentVolumeClaim:
    claimName: {{ required "model.source=pvc needs model.existingClaim" .Values.model.existingClaim }}
    readOnly: true
{{- else if eq .Values.model.source "prepare" }}
  emptyDir:
    sizeLimit: {{ .Values.model.emptyDirSizeLimit }}
{{- else }}
{{- fail "model.source must be prepare or pvc" }}
{{- end }}
{{- end -}}

{{- define "ragtune.modelMount" -}}
- name: models
  mountPath: {{ .Values.model.mountPath }}
  {{- if eq .Values.model.source "pvc" }}
  readOnly: true
  {{- with .Values.model.subPath }}
  subPath: {{ . }}
  {{- end }}
  {{- end }}
{{- end -}}

{{/* `ragtune model prepare`: SmolLM2-135M-Instruct from the GGUF inside the image; no download. */}}
{{- define "ragtune.prepareModelInit" -}}
{{- if eq .Values.model.source "prepare" }}
- name: prepare-model
  image: {{ include "ragtune.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["model", "prepare", "--out", {{ .Values.model.dir | quote }}]
  securityContext:
    {{- include "ragtune.securityContext" (list . dict) | nindent 4 }}
  resources:
    {{- toYaml .Values.model.prepareResources | nindent 4 }}
  volumeMounts:
    {{- include "ragtune.modelMount" . | nindent 4 }}
    - name: tmp
      mountPath: /tmp
{{- end }}
{{- end -}}

{{- define "ragtune.adaptersVolume" -}}
- name: adapters
{{- if .Values.adapters.volume }}
  {{- toYaml .Values.adapters.volume | nindent 2 }}
{{- else if .Values.adapters.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.adapters.persistence.existingClaim | default (printf "%s-adapters" (include "ragtune.fullname" .)) }}
{{- else }}
{{- fail "the adapter store must be shared by the API and vLLM pods: adapters.persistence.enabled or adapters.volume" }}
{{- end }}
{{- end -}}

{{- define "ragtune.dataVolume" -}}
- name: data
{{- if .Values.data.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ .Values.data.persistence.existingClaim | default (printf "%s-data" (include "ragtune.fullname" .)) }}
{{- else }}
{{- fail "the data folder (uploads waiting for a worker) must be shared by API and worker pods: data.persistence.enabled" }}
{{- end }}
{{- end -}}

{{/* Environment of ragtune's containers (API and worker): the ConfigMap plus the secrets. */}}
{{- define "ragtune.env" -}}
- name: RAGTUNE_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "ragtune.databaseSecretName" . }}
      key: {{ include "ragtune.databaseSecretKey" . }}
{{- if .Values.qdrantApiKey.existingSecret }}
- name: RAGTUNE_QDRANT__API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.qdrantApiKey.existingSecret }}
      key: {{ .Values.qdrantApiKey.existingSecretKey }}
{{- end }}
{{- end -}}
