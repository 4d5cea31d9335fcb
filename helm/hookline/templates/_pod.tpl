{{/* The parts of a pod spec every component shares:
     (dict "root" $ "component" "receiver" "values" .Values.receiver "sa" "name" "automount" false) */}}
{{- define "hookline.podSpec" -}}
{{- $root := .root -}}
{{- $v := .values -}}
serviceAccountName: {{ .sa }}
automountServiceAccountToken: {{ .automount }}
{{- /* No docker-style service links: for a Service hookline-receiver the kubelet would set
     HOOKLINE_RECEIVER_PORT=tcp://IP:80 and the like, which collide with hookline's own
     HOOKLINE_* settings (the pods find each other through DNS, never these variables). */}}
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | default 30 }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Volumes of a component: /tmp always, the body volume or GCS key where bodies are read. */}}
{{- define "hookline.volumes" -}}
{{- $root := .root -}}
volumes:
  - name: tmp
    emptyDir:
      sizeLimit: 256Mi
{{- if .bodies }}
{{- if eq $root.Values.bodies.store "fs" }}
  - name: bodies
    persistentVolumeClaim:
      claimName: {{ $root.Values.bodies.fs.claimName }}
{{- else if and (eq $root.Values.bodies.store "gcs") $root.Values.bodies.gcs.credentialsSecret }}
  - name: gcs-credentials
    secret:
      secretName: {{ $root.Values.bodies.gcs.credentialsSecret }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "hookline.volumeMounts" -}}
{{- $root := .root -}}
volumeMounts:
  - name: tmp
    mountPath: /tmp
{{- if .bodies }}
{{- if eq $root.Values.bodies.store "fs" }}
  - name: bodies
    mountPath: /var/lib/hookline/bodies
{{- else if and (eq $root.Values.bodies.store "gcs") $root.Values.bodies.gcs.credentialsSecret }}
  - name: gcs-credentials
    mountPath: /var/run/secrets/hookline/gcs
    readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* The container: (dict "root" $ "name" "receiver" "args" (list "receiver") "port" 8080
     "configMap" "name" "resources" {...} "extraEnv" [...] "env" [...] "bodies" true) */}}
{{- define "hookline.container" -}}
{{- $root := .root -}}
- name: {{ .name }}
  image: {{ include "hookline.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args:
    {{- toYaml .args | nindent 4 }}
  envFrom:
    - configMapRef:
        name: {{ .configMap }}
  env:
    {{- include "hookline.env" $root | nindent 4 }}
    {{- with .env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with .extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ .port }}
      protocol: TCP
  {{- include "hookline.probes" . | nindent 2 }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  {{- include "hookline.volumeMounts" . | nindent 2 }}
{{- end -}}
