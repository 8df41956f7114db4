{{/*
Names, labels and the few shared snippets every template uses.
*/}}

{{/*
Chart name, overridable with nameOverride.
*/}}
{{- define "trainscale.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: release-derived, 63 characters at most (DNS label). When the release
name already contains the chart name it is used as is.
*/}}
{{- define "trainscale.fullname" -}}
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

{{/*
Chart name and version for the helm.sh/chart label.
*/}}
{{- define "trainscale.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: the stable subset used in Deployment selectors (immutable once created).
*/}}
{{- define "trainscale.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trainscale.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels of every object.
*/}}
{{- define "trainscale.labels" -}}
helm.sh/chart: {{ include "trainscale.chart" . }}
{{ include "trainscale.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainscale
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels and selector labels of the operator component.
*/}}
{{- define "trainscale.operator.labels" -}}
{{ include "trainscale.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "trainscale.operator.selectorLabels" -}}
{{ include "trainscale.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "trainscale.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trainscale.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The operator image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "trainscale.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" .Values.image.registry .Values.image.repository }}
{{- end }}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/*
Annotations of the CRDs the chart installs.
*/}}
{{- define "trainscale.crdAnnotations" -}}
{{- if .Values.crds.keep }}
helm.sh/resource-policy: keep
{{- end }}
{{- end }}

{{/*
Render one CRD file from files/crds/ with the chart's labels and annotations merged into its
metadata. The file itself is never templated, so the chart's copy of the TrainingJob CRD is
byte-for-byte the generated manifests/crd/ file (files/crds/ holds a symlink to it).
Usage: include "trainscale.crd" (list $ "files/crds/x.yaml")
*/}}
{{- define "trainscale.crd" -}}
{{- $root := index . 0 }}
{{- $path := index . 1 }}
{{- $raw := $root.Files.Get $path }}
{{- if not $raw }}
{{- fail (printf "%s is missing or empty: generate it with `trainscale crd -o manifests/crd/trainingjobs.trainscale.dev.yaml` (make crd)" $path) }}
{{- end }}
{{- range $doc := regexSplit "(?m)^---\\s*$" $raw -1 }}
{{- $crd := fromYaml $doc }}
{{- if hasKey $crd "Error" }}
{{- fail (printf "%s is not valid YAML: %s" $path $crd.Error) }}
{{- end }}
{{- if $crd }}
{{- $meta := $crd.metadata }}
{{- $labels := merge (include "trainscale.labels" $root | fromYaml) (default dict $meta.labels) }}
{{- $_ := set $meta "labels" $labels }}
{{- $annotations := merge (include "trainscale.crdAnnotations" $root | fromYaml) (default dict $meta.annotations) }}
{{- if $annotations }}
{{- $_ := set $meta "annotations" $annotations }}
{{- end }}
---
{{ toYaml $crd }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Verbs the operator needs on the namespaced objects it manages, shared by the ClusterRole
(all namespaces) and the per-namespace Roles (watchNamespaces).
*/}}
{{- define "trainscale.rbac.namespacedRules" -}}
# The TrainingJobs themselves: watch them, patch finalizers/annotations (kopf's progress
# storage) and spec.replicas (the autoscaler).
- apiGroups: ["trainscale.dev"]
  resources: ["trainingjobs"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["trainscale.dev"]
  resources: ["trainingjobs/status"]
  verbs: ["get", "patch", "update"]
# The scale subresource: how the autoscaler writes spec.replicas.
- apiGroups: ["trainscale.dev"]
  resources: ["trainingjobs/scale"]
  verbs: ["get", "patch", "update"]
# Worker pods, the rendezvous pod and its Service.
- apiGroups: [""]
  resources: ["pods", "services"]
  verbs: ["create", "delete", "get", "list", "watch", "patch"]
# An Event for every create/delete/scale, through either events API.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
What kopf needs cluster-wide in every mode: discover CRDs and namespaces.
*/}}
{{- define "trainscale.rbac.discoveryRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
The cluster-wide, read-only view the autoscaler reads where GPUs are (root context): nodes
(allocatable nvidia.com/gpu: the GPUs per node its placement model needs) with
operator.clusterView.nodes, every pod bound to a node (the free GPUs that end the wait after
unschedulable pods) with operator.clusterView.pods; both whenever cluster arbitration is on,
which needs them.
*/}}
{{- define "trainscale.rbac.clusterViewRules" -}}
{{- $arbitration := .Values.operator.arbitration.enabled }}
{{- if or $arbitration .Values.operator.clusterView.nodes }}
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list"]
{{- end }}
{{- if or $arbitration .Values.operator.clusterView.pods }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
{{- end }}
{{- end }}

{{/*
Cluster arbitration (operator.arbitration.enabled) divides GPUs between jobs, so besides the
cluster view above it reads, cluster-wide and read-only, PriorityClass values and every
TrainingJob.
*/}}
{{- define "trainscale.rbac.arbitrationRules" -}}
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["list"]
- apiGroups: ["trainscale.dev"]
  resources: ["trainingjobs"]
  verbs: ["list"]
{{- end }}

{{/*
kopf peering: watch all peering objects of the kind, create the shared one if it is missing
(a chart cannot create an instance of a CRD it installs in the same release), and read/patch
only that one (keep-alives). Argument: list $ "clusterkopfpeerings"|"kopfpeerings".
*/}}
{{- define "trainscale.rbac.peeringRules" -}}
{{- $root := index . 0 }}
{{- $resource := index . 1 }}
- apiGroups: ["kopf.dev"]
  resources: [{{ $resource | quote }}]
  verbs: ["list", "watch", "create"]
- apiGroups: ["kopf.dev"]
  resources: [{{ $resource | quote }}]
  resourceNames: [{{ $root.Values.operator.peering.name | quote }}]
  verbs: ["get", "patch"]
{{- end }}

{{/*
Refuse value combinations that would produce a broken or unsafe install.
*/}}
{{- define "trainscale.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.peering.enabled) }}
{{- fail (printf "operator.replicas=%v needs operator.peering.enabled=true: without peering every replica would act on every TrainingJob" .Values.operator.replicas) }}
{{- end }}
{{- if lt (int .Values.operator.replicas) 0 }}
{{- fail (printf "operator.replicas=%v must be >= 0" .Values.operator.replicas) }}
{{- end }}
{{- if and .Values.operator.podDisruptionBudget.enabled (lt (int .Values.operator.replicas) 2) }}
{{- fail (printf "operator.podDisruptionBudget.enabled needs operator.replicas >= 2 (got %v): with one replica the budget would block every node drain" .Values.operator.replicas) }}
{{- end }}
{{- range .Values.operator.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}
{{- fail (printf "operator.watchNamespaces: %q is not a valid namespace name (globs are not supported: the chart creates a Role in each namespace)" .) }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$" .Values.operator.peering.name) }}
{{- fail (printf "operator.peering.name: %q is not a valid object name" .Values.operator.peering.name) }}
{{- end }}
{{- with .Values.prometheus }}
{{- if and .bearerToken.serviceAccountToken .bearerToken.secretName }}
{{- fail "prometheus.bearerToken: give serviceAccountToken or secretName, not both" }}
{{- end }}
{{- if and (or .bearerToken.serviceAccountToken .bearerToken.secretName) .basicAuth.secretName }}
{{- fail "prometheus: give a bearer token (prometheus.bearerToken) or basic auth (prometheus.basicAuth.secretName), not both" }}
{{- end }}
{{- if and .tls.insecureSkipVerify .tls.caSecretName }}
{{- fail "prometheus.tls: insecureSkipVerify=true ignores tls.caSecretName; give one of them" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Where the operator finds the Prometheus secrets the chart mounts (prometheus.* values).
*/}}
{{- define "trainscale.prometheusSecretsDir" -}}
/etc/trainscale/prometheus
{{- end }}

{{/*
The Secrets holding Prometheus credentials, as a YAML list of {name, dir, secret}: each is
mounted read-only under trainscale.prometheusSecretsDir/<dir> (files the operator re-reads).
*/}}
{{- define "trainscale.prometheusSecretVolumes" -}}
{{- $p := .Values.prometheus }}
{{- $out := list }}
{{- if and $p.bearerToken.secretName (not $p.bearerToken.serviceAccountToken) }}
{{- $out = append $out (dict "name" "prometheus-bearer-token" "dir" "bearer-token" "secret" $p.bearerToken.secretName) }}
{{- end }}
{{- if $p.basicAuth.secretName }}
{{- $out = append $out (dict "name" "prometheus-basic-auth" "dir" "basic-auth" "secret" $p.basicAuth.secretName) }}
{{- end }}
{{- if $p.tls.caSecretName }}
{{- $out = append $out (dict "name" "prometheus-ca" "dir" "ca" "secret" $p.tls.caSecretName) }}
{{- end }}
{{- if $p.tls.clientCertSecretName }}
{{- $out = append $out (dict "name" "prometheus-client-cert" "dir" "client-cert" "secret" $p.tls.clientCertSecretName) }}
{{- end }}
{{- toYaml $out }}
{{- end }}
