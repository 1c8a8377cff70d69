{{/* Names, labels and the pieces shared by the Deployments, Services and autoscalers. */}}

{{- define "tollbooth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollbooth.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "tollbooth.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "tollbooth.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "tollbooth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollbooth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tollbooth.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tollbooth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The Deployments as JSON, {part: [components]}: sidecar runs both components in one pod, split one per Deployment.
*/}}
{{- define "tollbooth.parts" -}}
{{- if eq .Values.layout "split" -}}
{"proxy": ["proxy"], "issuer": ["issuer"]}
{{- else -}}
{"gateway": ["proxy", "issuer"]}
{{- end -}}
{{- end }}

{{/* The part (Deployment) whose pods run a component; dict "root" $ "component" "proxy"|"issuer". */}}
{{- define "tollbooth.partOf" -}}
{{- if eq .root.Values.layout "split" }}{{ .component }}{{ else }}gateway{{ end }}
{{- end }}

{{/* A part's Deployment (and autoscaler, budget) name; dict "root" $ "part" name. */}}
{{- define "tollbooth.partName" -}}
{{- printf "%s-%s" (include "tollbooth.fullname" .root) .part | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollbooth.partSelectorLabels" -}}
{{ include "tollbooth.selectorLabels" .root }}
app.kubernetes.io/component: {{ .part }}
{{- end }}

{{/* The port of a listen address, "0.0.0.0:8080" -> 8080: config.*.listen is the one place ports are set. */}}
{{- define "tollbooth.listenPort" -}}
{{- regexFind "[0-9]+$" . }}
{{- end }}

{{/* The image reference: the tag defaults to the chart's appVersion. */}}
{{- define "tollbooth.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* One container: dict "root" $ "component" "proxy"|"issuer". It runs its listener and its own admin listener. */}}
{{- define "tollbooth.container" -}}
{{- $root := .root }}
{{- $component := .component }}
{{- $config := $root.Values.config -}}
- name: {{ $component }}
  image: {{ include "tollbooth.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
    - serve
    - --config
    - /etc/tollbooth/tollbooth.yaml
    - --only
    - {{ $component }}
    - --only
    - admin
    - --workers
    - {{ $root.Values.workers | quote }}
  env:
    - name: TOLLBOOTH_ADMIN_PORT
      value: {{ index $root.Values.adminPorts $component | quote }}
    # config.proxy.allowed_hosts reads these: the names in-cluster callers give the proxy Service.
    - name: TOLLBOOTH_PROXY_SERVICE
      value: {{ include "tollbooth.partName" (dict "root" $root "part" "proxy") | quote }}
    - name: TOLLBOOTH_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    {{- if $root.Values.redis.existingSecret }}
    - name: REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ $root.Values.redis.existingSecret }}
          key: {{ $root.Values.redis.existingSecretKey }}
    {{- else if $root.Values.redis.url }}
    - name: REDIS_URL
      value: {{ $root.Values.redis.url | quote }}
    {{- end }}
    {{- range $root.Values.secretEnv }}
    - name: {{ .name }}
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .key }}
    {{- end }}
    {{- range $name, $value := $root.Values.env }}
    - name: {{ $name }}
      value: {{ $value | quote }}
    {{- end }}
  ports:
    - name: {{ $component }}
      containerPort: {{ include "tollbooth.listenPort" (index $config $component).listen }}
    - name: admin-{{ $component }}
      containerPort: {{ index $root.Values.adminPorts $component }}
  # /healthz: the process is up. /readyz?degraded=ok: the pod can serve. A Redis outage alone leaves it in the
  # Services (it serves on its last known revocations and spools audit events) unless audit.on_failure is deny.
  livenessProbe:
    httpGet:
      path: /healthz
      port: admin-{{ $component }}
    periodSeconds: 10
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz?degraded=ok
      port: admin-{{ $component }}
    periodSeconds: 5
    failureThreshold: 2
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml (index $root.Values.resources $component) | nindent 4 }}
  volumeMounts:
    # The whole ConfigMap as a directory, never with subPath: a subPath mount is a copy made at start that
    # never receives ConfigMap updates, so routes edits would not reach the running gateway.
    - name: config
      mountPath: /etc/tollbooth
      readOnly: true
    - name: data
      mountPath: /var/lib/tollbooth
    - name: tmp
      mountPath: /tmp
    {{- if $root.Values.keys.existingSecret }}
    - name: keys
      mountPath: {{ $config.issuer.keys_dir }}
      readOnly: true
    {{- end }}
{{- end }}
