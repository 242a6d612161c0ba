{{/* Chart name, overridable with nameOverride. */}}
{{- define "agui-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, unless the release name already contains the chart name. */}}
{{- define "agui-gateway.fullname" -}}
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

{{- define "agui-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels, on every object. */}}
{{- define "agui-gateway.labels" -}}
helm.sh/chart: {{ include "agui-gateway.chart" . }}
{{ include "agui-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agui-gateway
{{- end }}

{{/* Labels that select the gateway's pods; immutable once installed. */}}
{{- define "agui-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agui-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "agui-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agui-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "agui-gateway.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* "true" when the gateway talks to the Kubernetes API (session registry or auth reviews). */}}
{{- define "agui-gateway.usesKubeApi" -}}
{{- if or (eq (toString .Values.config.registry) "kubernetes") (eq (toString .Values.config.auth) "kubernetes") }}true{{ end }}
{{- end }}

{{- define "agui-gateway.tokensSecretName" -}}
{{- .Values.tokens.existingSecret | default (printf "%s-tokens" (include "agui-gateway.fullname" .)) }}
{{- end }}

{{- define "agui-gateway.tokensMountPath" -}}
/etc/agui-gateway/tokens
{{- end }}

{{/* "true" when the logs live in NATS JetStream: stateless replicas, no volume. */}}
{{- define "agui-gateway.nats" -}}
{{- if eq (toString .Values.config.store) "nats" }}true{{ end }}
{{- end }}

{{/* "true" when the state dir is the chart's volume (a claim): store=files with persistence. */}}
{{- define "agui-gateway.persistent" -}}
{{- if and .Values.persistence.enabled (not (include "agui-gateway.nats" .)) }}true{{ end }}
{{- end }}

{{- define "agui-gateway.natsMountPath" -}}
/etc/agui-gateway/nats
{{- end }}

{{/*
Update strategy: the values' own, else Recreate for one pod on a ReadWriteOnce volume, or for
store=nats a rolling update that starts each new pod before stopping an old one.
*/}}
{{- define "agui-gateway.strategy" -}}
{{- if .Values.strategy }}
{{- toYaml .Values.strategy }}
{{- else if include "agui-gateway.nats" . }}
type: RollingUpdate
rollingUpdate:
  maxSurge: 1
  maxUnavailable: 0
{{- else }}
type: Recreate
{{- end }}
{{- end }}

{{/*
store=nats without topologySpreadConstraints: replicas on different nodes whenever the cluster
has them (tainted nodes left out), and on different zones where possible; each revision spreads
on its own (pod-template-hash), so a rolling update does not pile new pods next to old ones.
*/}}
{{- define "agui-gateway.spread" -}}
{{- $selector := include "agui-gateway.selectorLabels" . }}
{{- range $key, $when := dict "kubernetes.io/hostname" "DoNotSchedule" "topology.kubernetes.io/zone" "ScheduleAnyway" }}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $when }}
  {{- if eq $when "DoNotSchedule" }}
  nodeTaintsPolicy: Honor
  {{- end }}
  labelSelector:
    matchLabels:
      {{- $selector | nindent 6 }}
  matchLabelKeys:
    - pod-template-hash
{{- end }}
{{- end }}

{{- define "agui-gateway.claimName" -}}
{{- .Values.persistence.existingClaim | default (include "agui-gateway.fullname" .) }}
{{- end }}

{{/*
One config value as an environment string. Values files give every number as a float, which
Go would print in exponent form (1.048576e+07); whole numbers are printed as integers instead.
Lists (allowedOrigins) are joined with commas; booleans become 1 or 0.
*/}}
{{- define "agui-gateway.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- join "," $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "1" "0" $v }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (floor $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/*
GATEWAY_ALLOWED_HOSTS: config.allowedHosts, the ingress hosts, and the Service's in-cluster names
(probes and scrapes use the pod IP, which the gateway always accepts).
*/}}
{{- define "agui-gateway.allowedHosts" -}}
{{- $name := include "agui-gateway.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $hosts := concat (list) .Values.config.allowedHosts }}
{{- if .Values.ingress.enabled }}
{{- range .Values.ingress.hosts }}{{ $hosts = append $hosts .host }}{{ end }}
{{- end }}
{{- $hosts = concat $hosts (list $name (printf "%s.%s" $name $ns) (printf "%s.%s.svc" $name $ns) (printf "%s.%s.svc.cluster.local" $name $ns)) }}
{{- join "," (uniq $hosts) }}
{{- end }}

{{/* Checks that would otherwise only show as a crash-looping pod. */}}
{{- define "agui-gateway.validate" -}}
{{- $c := .Values.config }}
{{- if and (eq (toString $c.auth) "none") (not $c.allowAnonymous) (not (has (toString $c.host) (list "127.0.0.1" "::1" "localhost"))) }}
{{- fail "config.auth=none serves every session without authentication on a non-loopback address: set config.auth to token or kubernetes, or set config.allowAnonymous=true" }}
{{- end }}
{{- if and (eq (toString $c.registry) "kubernetes") (eq (toString $c.runnerToken) "true") .Values.rbac.create (not .Values.rbac.namespaces) }}
{{- fail "config.runnerToken=true reads the Secret ambient-runner-token-<session> of each session: list the project namespaces in rbac.namespaces (the chart grants get on secrets there only, never cluster-wide), or set config.runnerToken to auto or false, or rbac.create=false and grant it yourself" }}
{{- end }}
{{- end }}

{{/*
"true" when the gateway sends runner tokens (GATEWAY_RUNNER_TOKEN), else "false". config.runnerToken
auto: on, except with registry=kubernetes while the chart creates the RBAC and rbac.namespaces is
empty, where it could grant the Secrets only cluster-wide, which it never does.
*/}}
{{- define "agui-gateway.runnerToken" -}}
{{- $v := toString .Values.config.runnerToken }}
{{- if eq $v "auto" }}
{{- not (and (eq (toString .Values.config.registry) "kubernetes") .Values.rbac.create (not .Values.rbac.namespaces)) }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/* GATEWAY_WORKERS when config.workers is 0: the CPU limit rounded up ("1500m" -> 2), 1 without one. */}}
{{- define "agui-gateway.workers" -}}
{{- $cpu := toString (dig "limits" "cpu" "" (.Values.resources | default dict)) -}}
{{- if not $cpu -}}
1
{{- else if hasSuffix "m" $cpu -}}
{{- max 1 (div (add (trimSuffix "m" $cpu | atoi) 999) 1000) -}}
{{- else -}}
{{- max 1 (ceil (float64 $cpu) | int) -}}
{{- end -}}
{{- end }}
