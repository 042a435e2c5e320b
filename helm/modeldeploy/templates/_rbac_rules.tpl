{{/*
The operator's permissions, in one place. Every rule is used by the operator's code or by kopf, and
tests/helm/test_helm_rbac.py checks both directions against the API requests the real operator
makes (a fake API server's audit log): everything it calls is allowed, and nothing else is granted.
kopf runs standalone (no peering objects) with cluster scanning off (no CRD or Namespace access).
No Secrets: nothing the operator does reads or writes them.
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
# The children of a ModelDeployment, applied server-side (create + patch), and listed and watched
# (label app.kubernetes.io/managed-by=modeldeploy): the watch feeds the cache each reconcile reads,
# and its events undo hand edits and deletions. Nothing is deleted by the operator: children go
# with their owner through ownerReferences.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch]
# The claim named in spec.model.storage.pvc must exist (status StorageNotFound otherwise).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get]
# Events on ModelDeployments (Created, Reconciled, DriftCorrected, InvalidSpec, ...).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
