{{/* The injector's serving certificate, made once: an upgrade keeps the one the cluster holds
     (so the webhook's caBundle and the gateway's certificate stay a pair). A dict with ca, crt
     and key, PEM, memoized per render in .Values so the Secret and the webhook agree. */}}
{{- define "strait.injectorTLS" -}}
{{- if not .Values._injectorTLS -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace "strait-injector-tls" -}}
{{- if $existing -}}
{{- $_ := set .Values "_injectorTLS" (dict "ca" (index $existing.data "ca.crt" | b64dec) "crt" (index $existing.data "tls.crt" | b64dec) "key" (index $existing.data "tls.key" | b64dec)) -}}
{{- else -}}
{{- $ca := genCA "strait-injector-ca" 3650 -}}
{{- $name := printf "strait-injector.%s.svc" .Release.Namespace -}}
{{- $cert := genSignedCert $name nil (list $name (printf "%s.cluster.local" $name)) 3650 $ca -}}
{{- $_ := set .Values "_injectorTLS" (dict "ca" $ca.Cert "crt" $cert.Cert "key" $cert.Key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
