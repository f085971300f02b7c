{{/* The release-scoped name of every object. */}}
{{- define "flex-auth.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "flex-auth.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: pdp
{{- end -}}

{{- define "flex-auth.labels" -}}
{{ include "flex-auth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "flex-auth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The ConfigMap the policy package comes from. */}}
{{- define "flex-auth.policyConfigMap" -}}
{{- if eq .Values.policy.source "existingConfigMap" -}}
{{- required "policy.existingConfigMap is required with policy.source=existingConfigMap" .Values.policy.existingConfigMap -}}
{{- else if has .Values.policy.source (list "example" "inline") -}}
{{- printf "%s-policy" (include "flex-auth.fullname" .) -}}
{{- else -}}
{{- fail (printf "policy.source must be example, inline or existingConfigMap, not %q" .Values.policy.source) -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap the registry comes from. */}}
{{- define "flex-auth.registryConfigMap" -}}
{{- if eq .Values.registry.source "existingConfigMap" -}}
{{- required "registry.existingConfigMap is required with registry.source=existingConfigMap" .Values.registry.existingConfigMap -}}
{{- else if has .Values.registry.source (list "example" "inline") -}}
{{- printf "%s-registry" (include "flex-auth.fullname" .) -}}
{{- else -}}
{{- fail (printf "registry.source must be example, inline or existingConfigMap, not %q" .Values.registry.source) -}}
{{- end -}}
{{- end -}}

{{/* Refuse settings that cannot work, at render time. */}}
{{- define "flex-auth.validate" -}}
{{- $needed := add .Values.preStopSleepSeconds .Values.shutdownGraceSeconds -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + shutdownGraceSeconds (%d), or Kubernetes kills flex-auth mid-drain" (int .Values.terminationGracePeriodSeconds) (int $needed)) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) -}}
{{- fail "tls.secretName is required with tls.enabled" -}}
{{- end -}}
{{- if and .Values.tls.clientAllowedSans (not .Values.tls.clientCA.secretName) -}}
{{- fail "tls.clientAllowedSans needs tls.clientCA.secretName" -}}
{{- end -}}
{{- if and (or .Values.auth.jwks.url .Values.auth.jwks.existingSecret .Values.auth.hs256.existingSecret) (or (not .Values.auth.issuer) (not .Values.auth.audiences)) -}}
{{- fail "auth.issuer and auth.audiences are required with a JWKS or an HS256 secret" -}}
{{- end -}}
{{- if and .Values.auth.jwks.url .Values.auth.jwks.existingSecret -}}
{{- fail "auth.jwks: set url or existingSecret, not both" -}}
{{- end -}}
{{- end -}}
