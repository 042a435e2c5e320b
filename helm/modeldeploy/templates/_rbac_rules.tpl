{{/*
The operator's permissions, in one place. Every rule is used by the operator's code or by kopf, and
tests/helm/test_helm_rbac.py checks both directions against the API requests the real operator
makes (a fake API server's audit log): everything it calls is allowed, and nothing else is granted.
kopf runs standalone (no peering objects) with cluster scanning off (no CRD or Namespace access).
Secrets: create only. The operator creates each ModelDeployment's admin token Secret
(`<name>-admin-token`, mounted by its pods) with a token it derives from its own key (a file the
kubelet mounts into its pod), so it never reads, lists, watches or changes a Secret: RBAC cannot
narrow a list or watch by label, and a read grant would be every Secret of every namespace.
*/}}
{{- define "modeldeploy.namespacedRules" -}}
# ModelDeployments: kopf lists and watches them (the operator reads them from that cache); the
# reconciler adds and removes its finalizer and writes their status.
- apiGroups: [serving.modeldeploy.io]
  resources: [modeldeployments]
  verbs: [list, watch, patch]
- apiGroups: [serving.modeldeploy.io]
  resources: [modeldeployments/status]
  verbs: [patch]
# The children of a ModelDeployment: created (a POST, which never takes over an existing object),
# then applied server-side (patch) while they carry its ownerReference, and listed and watched
# (label app.kubernetes.io/managed-by=modeldeploy): the watch feeds the cache each reconcile reads,
# and its events undo hand edits and deletions. Nothing is deleted by the operator: children go
# with their owner through ownerReferences.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [list, watch, create, patch]
# Each ModelDeployment's admin token Secret: created, and nothing else (see above).
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [list, watch, create, patch]
# autoscaling.mode hpa: the HorizontalPodAutoscaler on the External metric (its status shows in ours).
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch]
# Which pods are ready and where their admin port is: the EndpointSlices of each ModelDeployment's
# headless admin Service (they carry its labels), watched to push routing tables to each pod.
{{- if .Values.activator.enabled }}
# With the activator (scale to zero), also the EndpointSlices of each selector-less model Service:
# applied server-side by the operator (the ready pods, or the activator; an apply that creates also
# needs create), and deleted when no longer wanted.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch, create, patch, delete]
{{- else }}
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
{{- end }}
# The server pods (the Deployment's template labels), watched read-only: a container that crashes or
# cannot start shows in status.lastFailureInfo and Degraded=ContainerFailing (the Deployment's own
# status never says it).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch]
# The claim named in spec.model.storage.pvc must exist (status StorageNotFound otherwise), and the
# ConfigMap named in spec.warmup.requests must hold warmup requests (WarmupRequestsNotFound otherwise).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
# Events on ModelDeployments (Created, Reconciled, DriftCorrected, InvalidSpec, ...).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
