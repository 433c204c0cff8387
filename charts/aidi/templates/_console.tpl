{{/* Names and the image of the web console (templates/console*.yaml, docs/console.md). */}}

{{- define "aidi.console.name" -}}
{{- printf "%s-console" (include "aidi.fullname" .) -}}
{{- end -}}

{{/* The console image; an empty repository means the operator image (it carries `aidi` and aiohttp). */}}
{{- define "aidi.console.image" -}}
{{- if .Values.console.image.repository -}}
{{- include "aidi.image" (dict "image" .Values.console.image "default" (default .Chart.AppVersion .Values.operator.image.tag)) -}}
{{- else -}}
{{- include "aidi.operator.image" . -}}
{{- end -}}
{{- end -}}
