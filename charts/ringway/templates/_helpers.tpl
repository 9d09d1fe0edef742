{{/*
The release's full name: the release name, or `<release>-ringway` when the
release name does not already say ringway. Kept within 63 characters with
room for the `-operator-metrics` suffix.
*/}}
{{- define "ringway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 46 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 46 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The operator's Deployment, ServiceAccount and roles. */}}
{{- define "ringway.operator" -}}
{{- printf "%s-operator" (include "ringway.fullname" .) -}}
{{- end -}}

{{- define "ringway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ringway.operator" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The standard labels every object of the release carries. */}}
{{- define "ringway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ringway
{{- end -}}

{{/* What selects the operator's pods; never changes across upgrades. */}}
{{- define "ringway.operatorSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ringway.operatorLabels" -}}
{{ include "ringway.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "ringway.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The sidecar injector's webhook Service (a DNS label: at most 63). */}}
{{- define "ringway.webhookService" -}}
{{- printf "%s-webhook" (include "ringway.operator" .) -}}
{{- end -}}

{{/* The sidecar injector's MutatingWebhookConfiguration. */}}
{{- define "ringway.webhookConfiguration" -}}
{{- printf "%s-sidecar-injector" (include "ringway.operator" .) -}}
{{- end -}}

{{/* The Secret holding the webhook's CA and serving certificate. */}}
{{- define "ringway.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "ringway.operator" .) -}}
{{- end -}}

{{/*
The sidecars' control Secret, one per namespace with injected pods
(sidecar::CONTROL_SECRET in dataplane/api/src/sidecar.rs; the operator's
`rbac` test checks that they are equal).
*/}}
{{- define "ringway.sidecarControlSecret" -}}
ringway-sidecar-control
{{- end -}}

{{/*
The rules of a files/rbac/ file, each limited by resourceNames to one
object: (dict "root" $ "file" "files/rbac/…" "name" "<object>").
*/}}
{{- define "ringway.namedRules" -}}
{{- $rules := .root.Files.Get .file | fromYamlArray -}}
{{- range $rules }}
{{- $_ := set . "resourceNames" (list $.name) }}
{{- end }}
{{- toYaml $rules -}}
{{- end -}}
