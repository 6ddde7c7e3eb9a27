{{/* Labels every object of the release carries. */}}
{{- define "phalanx.labels" -}}
app.kubernetes.io/part-of: phalanx
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* An image reference: image "phalanx-scheduler" . */}}
{{- define "phalanx.image" -}}
{{- $root := index . 1 -}}
{{ $root.Values.image.registry }}/{{ index . 0 }}:{{ $root.Values.image.tag | default $root.Chart.AppVersion }}
{{- end -}}
