{{/* The chart's name and version, as the helm.sh/chart label takes them. */}}
{{- define "strait.chart" -}}
{{ .Chart.Name }}-{{ .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The standard labels of every object. */}}
{{- define "strait.labels" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: gateway
helm.sh/chart: {{ include "strait.chart" . }}
{{- end -}}

{{/* The labels that select the gateway's pods. */}}
{{- define "strait.selector" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{/* The image, its tag defaulting to the chart's appVersion. */}}
{{- define "strait.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The cluster's name: required, and a DNS label. */}}
{{- define "strait.cluster" -}}
{{- $cluster := required "values: cluster is required (this cluster's name in the mesh)" .Values.cluster -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $cluster) -}}
{{- fail (printf "values: cluster %q is not a DNS label (lower-case letters, digits and '-', at most 63)" $cluster) -}}
{{- end -}}
{{- $cluster -}}
{{- end -}}
