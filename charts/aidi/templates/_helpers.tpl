{{/* Names, labels, images and the credentials every other template shares. */}}

{{- define "aidi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<name>`, or just the release name when it already contains the chart name. */}}
{{- define "aidi.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "aidi.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "aidi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "aidi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aidi
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "root" $ "component" "operator"). */}}
{{- define "aidi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aidi.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aidi.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "aidi.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* An image reference from {repository, tag, digest}: include with (dict "image" ... "default" TAG). */}}
{{- define "aidi.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .default .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "aidi.operator.image" -}}
{{- include "aidi.image" (dict "image" .Values.operator.image "default" .Chart.AppVersion) -}}
{{- end -}}

{{- define "aidi.job.image" -}}
{{- include "aidi.image" (dict "image" .Values.jobDefaults.image "default" .Chart.AppVersion) -}}
{{- end -}}

{{- define "aidi.fetch.image" -}}
{{- if .Values.jobDefaults.fetchImage.repository -}}
{{- include "aidi.image" (dict "image" .Values.jobDefaults.fetchImage "default" (default .Chart.AppVersion .Values.operator.image.tag)) -}}
{{- else -}}
{{- include "aidi.operator.image" . -}}
{{- end -}}
{{- end -}}

{{/* The S3 endpoint job pods use (AIDI_DATASPACE_ENDPOINT). */}}
{{- define "aidi.dataspace.endpoint" -}}
{{- if eq .Values.dataspace.mode "minio" -}}
{{- printf "http://%s-minio.%s.svc:%d" (include "aidi.fullname" .) .Release.Namespace (int .Values.minio.port) -}}
{{- else -}}
{{- .Values.dataspace.external.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "aidi.dataspace.secretName" -}}
{{- default (printf "%s-dataspace" (include "aidi.fullname" .)) .Values.dataspace.credentials.existingSecret -}}
{{- end -}}

{{- define "aidi.minio.secretName" -}}
{{- default (printf "%s-minio" (include "aidi.fullname" .)) .Values.minio.auth.existingSecret -}}
{{- end -}}

{{/*
The credentials the chart creates Secrets from, as YAML:
  dataspace: {accessKey, secretKey}   (unless dataspace.credentials.existingSecret)
  minio:     {rootUser, rootPassword} (minio mode, unless minio.auth.existingSecret)
Values win; otherwise the Secret of the previous release is reused (`lookup`), otherwise a random
key is generated. Computed once per render and kept on the root context, so the MinIO Secret, the
bucket-init Job and every team's copy agree.
*/}}
{{- define "aidi.credentials" -}}
{{- if not (hasKey .Values "__aidiCredentials") -}}
{{- $creds := dict -}}
{{- if not .Values.dataspace.credentials.existingSecret -}}
{{- $old := (lookup "v1" "Secret" .Release.Namespace (include "aidi.dataspace.secretName" .)).data | default dict -}}
{{- $access := .Values.dataspace.credentials.accessKey | default (get $old "accessKey" | b64dec) | default "aidi-dataspace" -}}
{{- $secret := .Values.dataspace.credentials.secretKey | default (get $old "secretKey" | b64dec) | default (randAlphaNum 40) -}}
{{- $_ := set $creds "dataspace" (dict "accessKey" $access "secretKey" $secret) -}}
{{- end -}}
{{- if and (eq .Values.dataspace.mode "minio") (not .Values.minio.auth.existingSecret) -}}
{{- $old := (lookup "v1" "Secret" .Release.Namespace (include "aidi.minio.secretName" .)).data | default dict -}}
{{- $user := .Values.minio.auth.rootUser | default (get $old "rootUser" | b64dec) | default "aidi-admin" -}}
{{- $password := .Values.minio.auth.rootPassword | default (get $old "rootPassword" | b64dec) | default (randAlphaNum 40) -}}
{{- $_ := set $creds "minio" (dict "rootUser" $user "rootPassword" $password) -}}
{{- end -}}
{{- $_ := set .Values "__aidiCredentials" $creds -}}
{{- end -}}
{{- toYaml (get .Values "__aidiCredentials") -}}
{{- end -}}

{{/* Checksum of a Secret's content: the chart's own values, or the live existing Secret's data. */}}
{{- define "aidi.secretChecksum" -}}
{{- $existing := (lookup "v1" "Secret" .root.Release.Namespace .name).data | default dict -}}
{{- toYaml (dict "values" .values "existing" $existing) | sha256sum -}}
{{- end -}}

{{/* The restricted pod security context every pod of the chart runs with. */}}
{{- define "aidi.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "aidi.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
Each team's own dataspace account, as YAML keyed by namespace: {bucket, accessKey, secretKey}
(docs/security.md, "The dataspace"). The team's bucket is `<dataspace.bucket>-<namespace>` unless
teams[].dataspace.bucket says otherwise; the account may read and write that bucket and only read the
shared `dataspace.bucket`. Values win; otherwise the team's Secret `aidi-dataspace` of the previous
release is reused (`lookup`), otherwise a random key is generated. Computed once per render, so the
team's Secret and the bucket-init Job agree. Empty with dataspace.credentials.existingSecret (then the
platform engineer creates every team's Secret).
*/}}
{{- define "aidi.teamDataspace" -}}
{{- if not (hasKey .Values "__aidiTeamDataspace") -}}
{{- $all := dict -}}
{{- if not .Values.dataspace.credentials.existingSecret -}}
{{- range $team := .Values.teams -}}
{{- $ns := $team.namespace -}}
{{- $want := $team.dataspace | default dict -}}
{{- $old := (lookup "v1" "Secret" $ns "aidi-dataspace").data | default dict -}}
{{- $bucket := $want.bucket | default (printf "%s-%s" $.Values.dataspace.bucket $ns | trunc 63 | trimSuffix "-") -}}
{{- $access := $want.accessKey | default (get $old "accessKey" | b64dec) | default (printf "aidi-%s" $ns | trunc 63) -}}
{{- $secret := $want.secretKey | default (get $old "secretKey" | b64dec) | default (randAlphaNum 40) -}}
{{- $_ := set $all $ns (dict "bucket" $bucket "accessKey" $access "secretKey" $secret) -}}
{{- end -}}
{{- end -}}
{{- $_ := set .Values "__aidiTeamDataspace" $all -}}
{{- end -}}
{{- toYaml (get .Values "__aidiTeamDataspace") -}}
{{- end -}}

{{/*
The namespaces the operator serves, as a JSON list; empty: every namespace. operator.watchNamespaces
when set; else, with teams listed, the teams' namespaces (the operator then has rights there only),
unless operator.clusterWide asks for every namespace.
*/}}
{{- define "aidi.operator.namespaces" -}}
{{- $op := .Values.operator -}}
{{- if $op.watchNamespaces -}}
{{- toJson $op.watchNamespaces -}}
{{- else if and .Values.teams (not $op.clusterWide) -}}
{{- $list := list -}}
{{- range .Values.teams }}{{ $list = append $list .namespace }}{{ end -}}
{{- toJson $list -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}
