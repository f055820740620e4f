{{/* Chart name, truncated to 63 characters (a label value). */}}
{{- define "linktoken-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of every object. The release name alone when it already contains the chart name,
so `helm install linktoken-operator ...` gives `linktoken-operator`, not a doubled name.
*/}}
{{- define "linktoken-operator.fullname" -}}
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

{{- define "linktoken-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods; never change them (Deployment selectors are immutable). */}}
{{- define "linktoken-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "linktoken-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "linktoken-operator.labels" -}}
helm.sh/chart: {{ include "linktoken-operator.chart" . }}
{{ include "linktoken-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: linktoken-operator
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "linktoken-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "linktoken-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "linktoken-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The rules the operator needs in every namespace it manages: the same list for the ClusterRole
(all namespaces) and for each per-namespace Role. Each rule grants only calls the operator makes
(src/controller); tests/helm.rs runs the operator with nothing but these rules.
*/}}
{{- define "linktoken-operator.rules" -}}
# LinkTokens: the controller's reflector lists and watches them; each reconcile GETs its
# LinkToken fresh, because the cache can lag the operator's own status writes.
- apiGroups: ["atlasmigration.io"]
  resources: ["linktokens"]
  verbs: ["get", "list", "watch"]
# LinkTokens: merge-patch of metadata.finalizers (add atlasmigration.io/revoke-token, remove it
# once the token is revoked). No update, no delete.
- apiGroups: ["atlasmigration.io"]
  resources: ["linktokens"]
  verbs: ["patch"]
# Status: server-side apply of .status (conditions, observedGeneration, issuedFor, atlasError).
- apiGroups: ["atlasmigration.io"]
  resources: ["linktokens/status"]
  verbs: ["patch"]
# The token Secret's ownerReference has blockOwnerDeletion=true; with the
# OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) setting
# it requires update on the owner's finalizers subresource. Grants nothing else.
- apiGroups: ["atlasmigration.io"]
  resources: ["linktokens/finalizers"]
  verbs: ["update"]
# Secrets: metadata-only list/watch (PartialObjectMeta) maps Secret changes to LinkTokens
# without caching Secret data; get reads the named credentials Secret and the token Secret.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Secrets: server-side apply writes the token Secret (create is checked by the API server when
# the apply creates the object); merge-patch drops the ownerReference on release (Retain);
# delete removes the operator's old Secret after a tokenSecret.name change (uid precondition).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "patch", "delete"]
# ConfigMaps: get only, by name: the PEM CA bundle a LinkToken names in
# spec.source.caBundle.configMapKeyRef (an Ops Manager with a private CA). Never listed or watched.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get"]
# Events (events.k8s.io/v1) via kube's Recorder: create a new event, patch its series count
# when it repeats.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
Comma-separated, sorted, de-duplicated TCP ports the operator connects to: the API server's
(networkPolicy.apiServerPorts), the one of atlasUrl (explicit, else 443/80 by scheme) and the
sources' (networkPolicy.sourcePorts: an Ops Manager that LinkTokens hand their tokens to).
*/}}
{{- define "linktoken-operator.egressPorts" -}}
{{- $ports := dict }}
{{- range .Values.networkPolicy.apiServerPorts }}
{{- $_ := set $ports (toString (int .)) true }}
{{- end }}
{{- range .Values.networkPolicy.sourcePorts }}
{{- $_ := set $ports (toString (int .)) true }}
{{- end }}
{{- $u := urlParse .Values.atlasUrl }}
{{- $atlasPort := ternary "443" "80" (eq $u.scheme "https") }}
{{- if and (contains ":" $u.host) (not (hasSuffix "]" $u.host)) }}
{{- $atlasPort = last (splitList ":" $u.host) }}
{{- end }}
{{- $_ := set $ports $atlasPort true }}
{{- keys $ports | sortAlpha | join "," }}
{{- end }}

{{/*
Fails the render for an http:// atlasUrl whose host is not loopback, unless
allowInsecureAtlasUrl is set: the operator would refuse to start with it anyway (credentials
and link tokens would travel in cleartext), better to say so at install time.
*/}}
{{- define "linktoken-operator.checkAtlasUrl" -}}
{{- $u := urlParse .Values.atlasUrl }}
{{- if and (eq $u.scheme "http") (not .Values.allowInsecureAtlasUrl) }}
{{- $host := $u.host }}
{{- if hasPrefix "[" $host }}
{{- $host = trimPrefix "[" (first (splitList "]" $host)) }}
{{- else }}
{{- $host = first (splitList ":" $host) }}
{{- end }}
{{- if not (or (eq (lower $host) "localhost") (hasPrefix "127." $host) (eq $host "::1")) }}
{{- fail (printf "atlasUrl %s uses http:// for a host that is not loopback: credentials and link tokens would travel in cleartext; use https://, or set allowInsecureAtlasUrl: true" .Values.atlasUrl) }}
{{- end }}
{{- end }}
{{- end }}
