{{/* Chart name, truncated for DNS. */}}
{{- define "opsbot.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-opsbot unless the release name already contains it. */}}
{{- define "opsbot.fullname" -}}
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

{{- define "opsbot.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "opsbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opsbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "opsbot.labels" -}}
helm.sh/chart: {{ include "opsbot.chart" . }}
{{ include "opsbot.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: opsbot
{{- end }}

{{- define "opsbot.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "opsbot.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-secrets" (include "opsbot.fullname" .)) }}
{{- end }}

{{/* database.type as opsbot sees it (its default is sqlite). */}}
{{- define "opsbot.databaseType" -}}
{{- dig "database" "type" "sqlite" .Values.config }}
{{- end }}

{{/* Replicas: 2 on postgres, 1 on sqlite unless set; sqlite allows only one. */}}
{{- define "opsbot.replicas" -}}
{{- $sqlite := eq (include "opsbot.databaseType" .) "sqlite" }}
{{- if kindIs "invalid" .Values.replicas }}
{{- ternary 1 2 $sqlite }}
{{- else }}
{{- if and $sqlite (gt (int .Values.replicas) 1) }}
{{- fail "replicas: SQLite allows one opsbot process; use database.type postgres for more replicas" }}
{{- end }}
{{- int .Values.replicas }}
{{- end }}
{{- end }}

{{/* The port of a host:port listen address. */}}
{{- define "opsbot.listenPort" -}}
{{- regexReplaceAll "^.*:" . "" }}
{{- end }}

{{/* opsbot.yaml: .Values.config with the chart's defaults filled in. */}}
{{- define "opsbot.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $as := dig "appservice" dict $cfg }}
{{- if not $as.listen }}
{{- $_ := set $as "listen" "0.0.0.0:29333" }}
{{- end }}
{{- if not $as.public_url }}
{{- $_ := set $as "public_url" (printf "http://%s.%s.svc.%s:%v" (include "opsbot.fullname" .) .Release.Namespace .Values.clusterDomain .Values.service.port) }}
{{- end }}
{{- $_ := set $cfg "appservice" $as }}
{{- $db := dig "database" dict $cfg }}
{{- if and (eq (include "opsbot.databaseType" .) "sqlite") (not $db.uri) }}
{{- $_ := set $db "uri" "/data/opsbot.db" }}
{{- $_ := set $cfg "database" $db }}
{{- end }}
{{- range $key := list "as_token" "hs_token" }}
{{- if hasKey $as $key }}
{{- fail (printf "config.appservice.%s: keep secrets out of the ConfigMap; set secret.* or existingSecret" $key) }}
{{- end }}
{{- end }}
{{- if hasKey (dig "encryption" dict $cfg) "pickle_key" }}
{{- fail "config.encryption.pickle_key: keep secrets out of the ConfigMap; set secret.pickleKey or existingSecret" }}
{{- end }}
{{- if hasKey (dig "encryption" dict $cfg) "dendrite_admin_token" }}
{{- fail "config.encryption.dendrite_admin_token: keep secrets out of the ConfigMap; set secret.dendriteAdminToken or existingSecret" }}
{{- end }}
{{- if regexMatch "://[^/@]*:[^/@]*@" (toString ($db.uri | default "")) }}
{{- fail "config.database.uri holds a password: set secret.databaseUri (OPSBOT_DATABASE_URI) or existingSecret instead" }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* The pod's security settings and volumes, shared by the Deployment and the registration Job. */}}
{{- define "opsbot.podCommon" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "opsbot.envFrom" -}}
envFrom:
  - secretRef:
      name: {{ include "opsbot.secretName" . }}
{{- with .Values.extraEnv }}
env:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
