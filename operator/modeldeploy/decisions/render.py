"""Pure functions: a ModelDeployment spec → the manifests of its children.

Nothing here does I/O. `render_all` returns the ConfigMap, the Deployment, the Service, the
headless admin Service, the PodDisruptionBudget, the HPA (autoscaling mode hpa) and (when the
operator knows its own pods) a NetworkPolicy, as plain dicts ready for server-side apply;
`render_token_secret` the admin token Secret, which the operator only ever creates. The
Deployment's pod template carries a hash of everything that needs a restart (the pod spec, the
batching and monitoring files) but not of `models.config` or `routing.json`: the server polls those,
and the operator pushes routing tables, so version, label and weight changes need no restart.

What the traffic decision (traffic.py) says the servers may load and route now comes in as
`Serving`; without it, the spec's own versions and table are rendered.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from modelserver import contract  # ports and paths shared with the server (pure Python)

from modeldeploy.api import v1alpha1 as api
from modeldeploy.api.v1alpha1 import ModelDeploymentSpec
from modeldeploy.decisions import serverconfig, traffic
from modeldeploy.decisions.autoscale import external_metric_name
from modeldeploy.decisions.queries import MD_LABEL

DEFAULT_SERVER_IMAGE = "ghcr.io/modeldeploy/model-server:0.1.0"
CONFIG_HASH_ANNOTATION = "serving.modeldeploy.io/config-hash"
RENDERED_HASH_ANNOTATION = "serving.modeldeploy.io/rendered-hash"
OWNER_LABEL = "serving.modeldeploy.io/model-deployment"
GRPC_PORT = contract.GRPC_PORT
HTTP_PORT = contract.REST_PORT
PRESTOP_SLEEP_SECONDS = serverconfig.PRESTOP_SLEEP_SECONDS


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the children."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Defaults:
    """Operator-wide settings (command-line flags)."""

    server_image: str = DEFAULT_SERVER_IMAGE
    # The operator's own pods (namespace and labels): the NetworkPolicy admits only them to the
    # servers' admin port. Unknown (an operator outside the cluster): no NetworkPolicy is rendered.
    operator_namespace: str = ""
    operator_pod_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Serving:
    """What the servers may load and route now (traffic.Decision): the model config's versions
    (None: the spec's policy) and the routing document."""

    versions: tuple[int, ...] | None
    routing: dict[str, Any]
    replicas: int | None = -1  # the Deployment's replicas (-1: from the spec; None: an HPA owns them)


def default_serving(spec: ModelDeploymentSpec, owner_name: str) -> Serving:
    table = traffic.spec_table(spec, 0)
    return Serving(tuple(spec.model.versions) if spec.model.versions else None,
                   table.document(api.model_name(spec, owner_name)))


ADMIN_PORT = contract.ADMIN_PORT
TOKEN_KEY = serverconfig.ADMIN_TOKEN_KEY


def selector_labels(owner: Owner) -> dict[str, str]:
    return {"app.kubernetes.io/name": "model-server", "app.kubernetes.io/instance": owner.name}


def common_labels(owner: Owner) -> dict[str, str]:
    return {
        **selector_labels(owner),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "modeldeploy",
        "app.kubernetes.io/managed-by": "modeldeploy",
        OWNER_LABEL: owner.name,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _meta(owner: Owner, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": common_labels(owner),
        "ownerReferences": [owner_reference(owner)],
    }


def configmap_name(owner: Owner) -> str:
    return f"{owner.name}-config"


def render_configmap(spec: ModelDeploymentSpec, owner: Owner, serving: Serving) -> dict[str, Any]:
    name = api.model_name(spec, owner.name)
    data = {
        serverconfig.MODELS_CONFIG: serverconfig.models_config(spec, name, serving.versions),
        serverconfig.ROUTING_CONFIG: serverconfig.routing_config(serving.routing),
        serverconfig.MONITORING_CONFIG: serverconfig.monitoring_config(),
    }
    if spec.batching and spec.batching.enabled:
        data[serverconfig.BATCHING_CONFIG] = serverconfig.batching_config(spec.batching)
    warmup = serverconfig.warmup_config(spec)
    if warmup is not None:
        data[serverconfig.WARMUP_CONFIG] = warmup
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(owner, configmap_name(owner)), "data": data}


def _model_volume(spec: ModelDeploymentSpec) -> tuple[dict[str, Any], str]:
    """The pod volume holding the model, and the subPath to mount; with storage.uri, the emptyDir
    the server downloads versions into (mounted at serverconfig.MODEL_CACHE_DIR)."""
    storage = spec.model.storage
    if storage.uri:
        limit = {"sizeLimit": str(storage.cache_size_limit)} if storage.cache_size_limit is not None else {}
        return {"name": "model-cache", "emptyDir": limit}, ""
    if storage.pvc:
        return {
            "name": "model",
            "persistentVolumeClaim": {"claimName": storage.pvc.claim_name, "readOnly": storage.pvc.read_only},
        }, storage.pvc.sub_path
    if storage.host_path:
        return {"name": "model", "hostPath": {"path": storage.host_path.path, "type": "Directory"}}, ""
    assert storage.image is not None
    return {
        "name": "model",
        "image": {"reference": storage.image.reference, "pullPolicy": storage.image.pull_policy},
    }, storage.image.sub_path


def _storage_credentials(spec: ModelDeploymentSpec, pod: dict[str, Any], container: dict[str, Any]) -> None:
    """storage.credentials: the Secret's keys as the server's environment (referenced, never read
    by the operator; a missing Secret keeps the pod from starting, as kubectl describe shows), and
    the ServiceAccount workload identity maps to a cloud role."""
    creds = spec.model.storage.credentials
    if creds is None:
        return
    if creds.secret_ref is not None:
        container["envFrom"] = [{"secretRef": {"name": creds.secret_ref.name}}]
    if creds.service_account_name:
        pod["serviceAccountName"] = creds.service_account_name


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, Any] = {"cpu": str(r.cpu), "memory": str(r.memory)}
    limits: dict[str, Any] = {"memory": str(r.memory)}
    if r.cpu_limit is not None:
        limits["cpu"] = str(r.cpu_limit)
    if r.gpu:
        limits[r.gpu_resource_name] = str(r.gpu)
        requests[r.gpu_resource_name] = str(r.gpu)
    return {"requests": requests, "limits": limits}


def _tolerations(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    tolerations = [copy.deepcopy(t) for t in (spec.placement.tolerations if spec.placement else None) or []]
    gpu_name = spec.resources.gpu_resource_name
    if spec.resources.gpu and not any(t.get("key") == gpu_name for t in tolerations):
        tolerations.append({"key": gpu_name, "operator": "Exists", "effect": "NoSchedule"})
    return tolerations


def _probe(path: str, period: int, failures: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def render_pod_spec(spec: ModelDeploymentSpec, owner: Owner, defaults: Defaults) -> dict[str, Any]:
    to_zero = spec.autoscaling is not None and spec.autoscaling.to_zero is not None
    name = api.model_name(spec, owner.name)
    volume, sub_path = _model_volume(spec)
    model_mount: dict[str, Any] = {"name": "model", "mountPath": serverconfig.model_base_path(name), "readOnly": True}
    if spec.model.storage.uri:
        model_mount = {"name": "model-cache", "mountPath": serverconfig.MODEL_CACHE_DIR}
    if sub_path:
        model_mount["subPath"] = sub_path
    container: dict[str, Any] = {
        "name": "model-server",
        "image": spec.server.image or defaults.server_image,
        # a crash's last log lines become its termination message, which status reports
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "imagePullPolicy": spec.server.image_pull_policy,
        "command": ["model-server"],
        "args": serverconfig.server_args(spec),
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
        ],
        # The root filesystem is read-only: caches that default to $HOME (CUDA's JIT cache in
        # ~/.nv, TensorFlow's and Keras' in ~/.keras) go to the writable /tmp volume instead.
        "env": [{"name": "HOME", "value": "/tmp"}, *serverconfig.tracing_env(spec, owner.namespace, owner.name)],
        "resources": _resources(spec),
        # Warmup gates traffic: ready only when every configured model has an AVAILABLE version.
        # With scale to zero a request waits for these probes: they look every second.
        "readinessProbe": _probe(contract.HEALTH_READY_PATH, period=1 if to_zero else 2, failures=2),
        "livenessProbe": _probe(contract.HEALTH_LIVE_PATH, period=10, failures=3),
        # Slow loads (big models, warmup): up to 10 minutes before liveness takes over.
        "startupProbe": _probe(contract.HEALTH_LIVE_PATH, period=1 if to_zero else 5, failures=600 if to_zero else 120),
        # Keep serving while endpoints drop the pod; the server drains in-flight requests on SIGTERM.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SLEEP_SECONDS}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "config", "mountPath": serverconfig.CONFIG_DIR, "readOnly": True},
            {"name": "admin-token", "mountPath": serverconfig.ADMIN_TOKEN_DIR, "readOnly": True},
            model_mount,
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": spec.server.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [
            {"name": "config", "configMap": {"name": configmap_name(owner)}},
            {"name": "admin-token", "secret": {"secretName": token_secret_name(owner.name), "defaultMode": 0o440,
                                               "items": [{"key": TOKEN_KEY, "path": TOKEN_KEY}]}},
            volume,
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    }
    requests = spec.warmup.requests
    if spec.warmup.enabled and spec.warmup.effective_source == api.WarmupSource.config_map and requests is not None:
        # the user's requests, as a file the server reads at each version's load
        pod["volumes"].append({"name": "warmup-requests", "configMap": {
            "name": requests.name, "items": [{"key": requests.key, "path": serverconfig.WARMUP_REQUESTS_FILE}]}})
        container["volumeMounts"].append({"name": "warmup-requests", "mountPath": serverconfig.WARMUP_REQUESTS_DIR,
                                          "readOnly": True})
    _storage_credentials(spec, pod, container)
    tolerations = _tolerations(spec)
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.placement and spec.placement.node_selector:
        pod["nodeSelector"] = dict(spec.placement.node_selector)
    if spec.placement and spec.placement.affinity:
        pod["affinity"] = copy.deepcopy(spec.placement.affinity)
    return pod


def config_hash(pod_spec: dict[str, Any], configmap: dict[str, Any]) -> str:
    """Hash of what needs a restart: the pod spec and every config file except the two the server
    polls (models.config, routing.json)."""
    polled = (serverconfig.MODELS_CONFIG, serverconfig.ROUTING_CONFIG)
    files = {k: v for k, v in configmap["data"].items() if k not in polled}
    blob = json.dumps({"pod": pod_spec, "files": files}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render_deployment(
    spec: ModelDeploymentSpec, owner: Owner, defaults: Defaults, configmap: dict[str, Any], replicas: int | None = -1
) -> dict[str, Any]:
    pod_spec = render_pod_spec(spec, owner, defaults)
    chash = config_hash(pod_spec, configmap)
    deployment_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner)},
        # Never below the wanted capacity: a new pod must be ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "minReadySeconds": 5,
        "revisionHistoryLimit": 5,
        "progressDeadlineSeconds": 900,
        "template": {
            "metadata": {
                "labels": common_labels(owner),
                "annotations": {
                    CONFIG_HASH_ANNOTATION: chash,
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(HTTP_PORT),
                    "prometheus.io/path": contract.METRICS_PATH,
                },
            },
            "spec": pod_spec,
        },
    }
    if replicas == -1:  # no decision given: the spec's (the autoscaler's floor when it scales)
        replicas = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
        if spec.autoscaling and spec.autoscaling.mode == api.AutoscalingMode.hpa:
            replicas = None
    if replicas is not None:  # with an HPA, the operator leaves replicas to it (no field manager of ours)
        deployment_spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner, owner.name), "spec": deployment_spec}


def _model_ports() -> list[dict[str, Any]]:
    return [
        {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
        {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
    ]


def render_service(owner: Owner, scale_to_zero: bool = False) -> dict[str, Any]:
    """The clients' Service. With scale to zero it has no selector: the operator writes its
    EndpointSlices (the ready pods, or the activator while there are none: decisions.scaletozero)."""
    spec: dict[str, Any] = {"type": "ClusterIP", "ports": _model_ports()}
    if not scale_to_zero:
        spec["selector"] = selector_labels(owner)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(owner, owner.name), "spec": spec}


def token_secret_name(owner_name: str) -> str:
    return f"{owner_name}-admin-token"


def admin_service_name(owner_name: str) -> str:
    return f"{owner_name}-admin"


def render_token_secret(owner: Owner, token: str) -> dict[str, Any]:
    """The admin port's bearer token, derived from the operator's key (admintoken.py): created, never
    read or updated by the operator (plan.secret_action)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(owner, token_secret_name(owner.name)),
            "type": "Opaque", "stringData": {TOKEN_KEY: token}}


def render_admin_service(owner: Owner, scale_to_zero: bool = False) -> dict[str, Any]:
    """Headless (no virtual IP, no load balancing): its EndpointSlices list each ready pod's admin
    address, which the operator calls directly. Model clients use the other Service. With scale to
    zero they also list the model ports, which the operator copies into the other's slices."""
    ports = [{"name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP", "appProtocol": "http"}]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, admin_service_name(owner.name)),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(owner),
            "ports": ports + (_model_ports() if scale_to_zero else []),
        },
    }


def render_network_policy(owner: Owner, defaults: Defaults) -> dict[str, Any]:
    """Model ports open to every client; the admin port only to the operator's own pods."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(owner, owner.name),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": GRPC_PORT, "protocol": "TCP"}, {"port": HTTP_PORT, "protocol": "TCP"}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": defaults.operator_namespace}},
                           "podSelector": {"matchLabels": dict(defaults.operator_pod_labels)}}],
                 "ports": [{"port": ADMIN_PORT, "protocol": "TCP"}]},
            ],
        },
    }


def render_hpa(spec: ModelDeploymentSpec, owner: Owner) -> dict[str, Any]:
    """autoscaling.mode hpa: an autoscaling/v2 HPA on the External metric the chart's prometheus-adapter
    rules serve, selected to this ModelDeployment (the adapter groups by it, one series each)."""
    a = spec.autoscaling
    assert a is not None
    per_replica = a.metric in (api.Metric.rps, api.Metric.in_flight)
    target = {"type": "AverageValue", "averageValue": _quantity(a.target)} if per_replica else {
        "type": "Value", "value": _quantity(a.target)}
    out: dict[str, Any] = {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(owner, owner.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": a.min_replicas, "maxReplicas": a.max_replicas,
            "metrics": [{"type": "External", "external": {
                "metric": {"name": external_metric_name(a.metric),
                           "selector": {"matchLabels": {MD_LABEL: owner.name}}},
                "target": target}}],
        },
    }
    if a.behavior is not None:
        out["spec"]["behavior"] = {k: v for k, v in {
            "scaleUp": _hpa_rules(a.behavior.scale_up), "scaleDown": _hpa_rules(a.behavior.scale_down)}.items() if v}
    return out


def _hpa_rules(rules: Any) -> dict[str, Any] | None:
    if rules is None:
        return None
    out: dict[str, Any] = {}
    if rules.stabilization_window_seconds is not None:
        out["stabilizationWindowSeconds"] = rules.stabilization_window_seconds
    if rules.policies:
        out["policies"] = [{"type": p.type, "value": p.value, "periodSeconds": p.period_seconds} for p in rules.policies]
        out["selectPolicy"] = "Max"
    return out or None


def _quantity(value: float) -> str:
    """A target as a Kubernetes quantity (milli-units when fractional)."""
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def render_pdb(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner, owner.name),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def with_rendered_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp a manifest with the hash of itself, so the operator can tell an unchanged child cheaply
    (a new top level and metadata; the rest is shared with `obj`)."""
    digest = hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    meta = obj["metadata"]
    return {**obj, "metadata": {**meta, "annotations": {**meta.get("annotations", {}), RENDERED_HASH_ANNOTATION: digest}}}


def in_sync(desired: Any, live: Any) -> bool:
    """Whether every field we render has its rendered value in the live object (the server may add more)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(in_sync(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(desired) == len(live) and all(in_sync(a, b) for a, b in zip(desired, live, strict=True))
    return bool(desired == live)


def child_refs(owner_name: str) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child `render_all` may render for a ModelDeployment, in its
    order (the NetworkPolicy only when the operator knows its own pods): what the operator watches.
    The token Secret is not one of them: the operator creates it and never reads it (admintoken.py)."""
    return [("v1", "ConfigMap", f"{owner_name}-config"),
            ("apps/v1", "Deployment", owner_name), ("v1", "Service", owner_name),
            ("v1", "Service", admin_service_name(owner_name)), ("policy/v1", "PodDisruptionBudget", owner_name),
            ("networking.k8s.io/v1", "NetworkPolicy", owner_name),
            ("autoscaling/v2", "HorizontalPodAutoscaler", owner_name)]


def config_hash_of(children: list[dict[str, Any]]) -> str:
    """The restart hash the rendered Deployment's pod template carries."""
    deployment = next(c for c in children if c["kind"] == "Deployment")
    return str(deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION])


def render_all(spec: ModelDeploymentSpec, owner: Owner, defaults: Defaults | None = None,
               serving: Serving | None = None) -> list[dict[str, Any]]:
    """Every child but the token Secret (plan.secret_action), in apply order (the ConfigMap
    before the pods that mount it)."""
    defaults = defaults or Defaults()
    to_zero = spec.autoscaling is not None and spec.autoscaling.to_zero is not None
    configmap = render_configmap(spec, owner, serving or default_serving(spec, owner.name))
    children = [
        configmap,
        render_deployment(spec, owner, defaults, configmap, serving.replicas if serving else -1),
        render_service(owner, to_zero),
        render_admin_service(owner, to_zero),
        render_pdb(owner),
    ]
    if spec.autoscaling and spec.autoscaling.mode == api.AutoscalingMode.hpa:
        children.append(render_hpa(spec, owner))
    if defaults.operator_namespace and defaults.operator_pod_labels:
        children.append(render_network_policy(owner, defaults))
    return [with_rendered_hash(c) for c in children]
