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

{{/*
A part's Deployment (and autoscaler, budget, Service, hook) name; dict "root" $ "part" name. The fullname is cut
before the suffix goes on, never after: a long release's "-proxy" and "-issuer" names stay distinct and within
Kubernetes' 63 characters.
*/}}
{{- define "tollbooth.partName" -}}
{{- $prefix := include "tollbooth.fullname" .root | trunc (int (sub 62 (len .part))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix .part }}
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
{{- $repository := required "image.repository is empty: set it to the registry path where you pushed the image built from the repository's Dockerfile (no public registry serves a tollbooth image), e.g. --set image.repository=registry.example.com/tollbooth" .Values.image.repository }}
{{- printf "%s:%s" $repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the schema cannot say: relations between values. Each failure names the values and the fix.
The in-flight drain after SIGTERM takes up to 30 seconds (tollbooth serve), after the preStop delay.
*/}}
{{- define "tollbooth.validate" -}}
{{- with .Values.autoscaling }}
{{- if and .enabled (gt (int .minReplicas) (int .maxReplicas)) }}
{{- fail (printf "autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d): the autoscaler would be refused; lower minReplicas or raise maxReplicas" (int .minReplicas) (int .maxReplicas)) }}
{{- end }}
{{- end }}
{{- $needed := add .Values.preStopDelaySeconds 30 }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopDelaySeconds (%d) plus the 30 seconds the gateway takes to finish in-flight requests: set it to %d or more, or the kubelet kills pods mid-request" (int .Values.terminationGracePeriodSeconds) (int .Values.preStopDelaySeconds) (add1 $needed)) }}
{{- end }}
{{- end }}

{{/* A quantity times a number, "128Mi" 3 -> "384Mi", "250m" 2 -> "500m"; list quantity factor. */}}
{{- define "tollbooth.scaleQuantity" -}}
{{- $quantity := toString (index . 0) }}
{{- $number := regexFind "^[0-9]+([.][0-9]+)?" $quantity }}
{{- printf "%s%s" (mulf $number (index . 1) | toString) (trimPrefix $number $quantity) }}
{{- end }}

{{/*
A container's resources: resources.<component> is for one gateway process. With workers N > 1 the container runs
N workers and a supervisor: memory is multiplied by N+1 and CPU by N. dict "root" $ "component" name.
*/}}
{{- define "tollbooth.resources" -}}
{{- $workers := int .root.Values.workers }}
{{- $resources := deepCopy (index .root.Values.resources .component) }}
{{- if gt $workers 1 }}
{{- range $kind, $block := $resources }}
{{- if hasKey $block "memory" }}
{{- $_ := set $block "memory" (include "tollbooth.scaleQuantity" (list $block.memory (add1 $workers))) }}
{{- end }}
{{- if hasKey $block "cpu" }}
{{- $_ := set $block "cpu" (include "tollbooth.scaleQuantity" (list $block.cpu $workers)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* The config files, tollbooth.yaml and routes.yaml, as ConfigMap data: the mounted one and the check hook's. */}}
{{- define "tollbooth.configData" -}}
tollbooth.yaml: |
  {{- toYaml .Values.config | nindent 2 }}
routes.yaml: |
  {{- toYaml (dict "routes" .Values.routes) | nindent 2 }}
{{- end }}

{{/* A container's environment, as the config's ${VARIABLES} read it; dict "root" $ "component" name. */}}
{{- define "tollbooth.env" -}}
{{- $root := .root -}}
- name: TOLLBOOTH_ADMIN_PORT
  value: {{ index $root.Values.adminPorts .component | quote }}
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
    {{- include "tollbooth.env" (dict "root" $root "component" $component) | nindent 4 }}
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
  # Rollout: a deleted pod leaves the Services' endpoints at once (not ready, terminating), but kube-proxy and
  # ingress controllers learn it a moment later. The delay keeps serving through that moment; SIGTERM follows,
  # and the gateway finishes in-flight requests. An exec sleep, not the native sleep action (Kubernetes 1.29+).
  {{- if $root.Values.preStopDelaySeconds }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ $root.Values.preStopDelaySeconds | quote }}]
  {{- end }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  resources:
    {{- include "tollbooth.resources" (dict "root" $root "component" $component) | nindent 4 }}
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
