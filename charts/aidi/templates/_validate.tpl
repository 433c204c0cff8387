{{/*
Cross-field rules values.schema.json cannot say. Every message names the value and shows the
`--set` that fixes it; all problems are reported at once. Included once, from
templates/validate.yaml, so `helm template`, `helm install` and GitOps renders all stop on them.
*/}}
{{- define "aidi.validate" -}}
{{- $errors := list -}}
{{- $v := .Values -}}
{{- $creds := $v.dataspace.credentials -}}

{{- if eq $v.dataspace.mode "external" -}}
{{- if not $v.dataspace.external.endpoint -}}
{{- $errors = append $errors "dataspace.mode=external needs the S3 endpoint: --set dataspace.external.endpoint=https://s3.example.com (or --set dataspace.mode=minio to run MinIO in the chart)" -}}
{{- end -}}
{{- if and (not $creds.existingSecret) (not (and $creds.accessKey $creds.secretKey)) -}}
{{- $errors = append $errors "dataspace.mode=external needs a credential for the bucket: --set dataspace.credentials.existingSecret=NAME (a Secret with keys accessKey and secretKey), or --set dataspace.credentials.accessKey=KEY,dataspace.credentials.secretKey=SECRET" -}}
{{- end -}}
{{- end -}}

{{- if and $creds.existingSecret (or $creds.accessKey $creds.secretKey) -}}
{{- $errors = append $errors "dataspace.credentials: existingSecret and accessKey/secretKey are both set; keep one: --set dataspace.credentials.accessKey=,dataspace.credentials.secretKey= (to use the Secret) or --set dataspace.credentials.existingSecret= (to use the keys)" -}}
{{- end -}}

{{- if eq $v.dataspace.mode "minio" -}}
{{- $auth := $v.minio.auth -}}
{{- if and $auth.existingSecret (or $auth.rootUser $auth.rootPassword) -}}
{{- $errors = append $errors "minio.auth: existingSecret and rootUser/rootPassword are both set; keep one: --set minio.auth.rootUser=,minio.auth.rootPassword= (to use the Secret) or --set minio.auth.existingSecret=" -}}
{{- end -}}
{{- if and $auth.rootPassword (not (regexMatch "^[A-Za-z0-9._~-]{8,}$" $auth.rootPassword)) -}}
{{- $errors = append $errors "minio.auth.rootPassword must be at least 8 characters from A-Z a-z 0-9 - . _ ~ (it is passed to mc inside a URL): --set minio.auth.rootPassword=$(openssl rand -hex 20)" -}}
{{- end -}}
{{- if and $auth.rootUser (lt (len $auth.rootUser) 3) -}}
{{- $errors = append $errors (printf "minio.auth.rootUser %q is shorter than MinIO's minimum of 3 characters: --set minio.auth.rootUser=aidi-admin" $auth.rootUser) -}}
{{- end -}}
{{- if and $creds.accessKey (eq $creds.accessKey (default "aidi-admin" $auth.rootUser)) -}}
{{- $errors = append $errors (printf "dataspace.credentials.accessKey %q is MinIO's root user; the dataspace user must be a separate, bucket-limited user: --set dataspace.credentials.accessKey=aidi-dataspace" $creds.accessKey) -}}
{{- end -}}
{{- if and $creds.secretKey (lt (len $creds.secretKey) 8) -}}
{{- $errors = append $errors "dataspace.credentials.secretKey is shorter than MinIO's minimum of 8 characters: --set dataspace.credentials.secretKey=$(openssl rand -hex 20)" -}}
{{- end -}}
{{- end -}}

{{- if and (not $v.operator.serviceAccount.create) (not $v.operator.serviceAccount.name) -}}
{{- $errors = append $errors "operator.serviceAccount.create=false needs the name of an existing ServiceAccount: --set operator.serviceAccount.name=NAME (or --set operator.serviceAccount.create=true)" -}}
{{- end -}}

{{- if and $v.console.enabled $v.console.ingress.enabled (not $v.console.ingress.host) -}}
{{- $errors = append $errors "console.ingress.enabled=true needs the host name users open: --set console.ingress.host=console.example.com (or --set console.ingress.enabled=false)" -}}
{{- end -}}

{{- $seen := dict -}}
{{- range $i, $team := $v.teams -}}
{{- if eq $team.namespace $.Release.Namespace -}}
{{- $errors = append $errors (printf "teams[%d].namespace %q is the release namespace, which holds the platform's own credentials; give the team its own: --set teams[%d].namespace=team-a" $i $team.namespace $i) -}}
{{- end -}}
{{- if hasKey $seen $team.namespace -}}
{{- $errors = append $errors (printf "teams[%d].namespace %q is listed twice (also teams[%v]); merge the entries or rename one: --set teams[%d].namespace=OTHER" $i $team.namespace (get $seen $team.namespace) $i) -}}
{{- end -}}
{{- $_ := set $seen $team.namespace $i -}}
{{- if and $v.operator.watchNamespaces (not (has $team.namespace $v.operator.watchNamespaces)) -}}
{{- $errors = append $errors (printf "teams[%d].namespace %q is not in operator.watchNamespaces, so its jobs would never start: --set operator.watchNamespaces={%s}" $i $team.namespace (join "," (append $v.operator.watchNamespaces $team.namespace))) -}}
{{- end -}}
{{- end -}}

{{- if $errors -}}
{{- fail (printf "\n\nThe values of the aidi chart have %d problem(s):\n  - %s\n" (len $errors) (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}
