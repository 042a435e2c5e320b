"""The ModelDeployment API: pydantic v2 models, the single source of truth for the CRD.

`crdgen` turns these models into `crds/modeldeployments.yaml`; the operator parses every custom
resource's spec with `ModelDeploymentSpec.model_validate` before rendering anything. Validators here
mirror the CRD's CEL rules (so an out-of-date CRD in a cluster cannot let a broken spec through) and
add the checks CEL cannot express cheaply (rollout steps increasing).

Fields for later issues (canary `traffic`, progressive `rollout`, `autoscaling`) are declared now so
that the CRD does not change shape when they are implemented.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from modelserver.config import storage_uri
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "serving.modeldeploy.io"
ROLLOUT_COMMAND_ANNOTATION = f"{GROUP}/rollout-command"  # modeldeploy promote/abort during a rollout: <verb>@<generation>
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ["md"]
FIELD_MANAGER = "modeldeploy"  # the server-side apply field manager of every object the operator writes

QUANTITY_PATTERN = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
LABEL_PATTERN = r"^[a-zA-Z][a-zA-Z0-9_-]{0,62}$"
MODEL_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"

# A marker the CRD generator turns into an int-or-string schema (Kubernetes quantities).
INT_OR_STRING: dict[str, Any] = {"x-kubernetes-int-or-string": True}
FRONTEND_WORKERS_PATTERN = r"^(auto|[1-9][0-9]?)$"
MAX_FRONTEND_WORKERS = 64
PRESERVE: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


# --- spec ---------------------------------------------------------------------------------------


class PVCSource(_Model):
    """A PersistentVolumeClaim holding `<subPath>/<version>/saved_model.pb` directories."""

    claim_name: str = Field(min_length=1, max_length=253, description="name of the PVC in the same namespace")
    sub_path: str = Field("", max_length=1024, description="directory of the model inside the volume")
    read_only: bool = Field(True, description="mount read-only")


class HostPathSource(_Model):
    """A directory on the node (development clusters such as kind)."""

    path: str = Field(min_length=1, pattern=r"^/", description="absolute path on the node")


class ImageSource(_Model):
    """An OCI image holding the model files, mounted as an image volume (Kubernetes >= 1.31)."""

    reference: str = Field(min_length=1, description="image reference, e.g. registry/models/classifier:3")
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    sub_path: str = Field("", max_length=1024, description="directory of the model inside the image")


class SecretRef(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                      description="a Secret in the same namespace")


class StorageCredentials(_Model):
    """How the pods reach object storage: a Secret whose keys become the server's environment
    (AWS_ACCESS_KEY_ID, AZURE_STORAGE_ACCOUNT_KEY, ...), and/or a ServiceAccount for workload
    identity (EKS IRSA or Pod Identity, GKE and AKS workload identity)."""

    secret_ref: SecretRef | None = Field(None, description="a Secret whose keys become the server's environment "
                                         "(envFrom); the operator references it and never reads it")
    service_account_name: str | None = Field(None, min_length=1, max_length=253,
                                             pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                                             description="the pods' ServiceAccount (workload identity)")


STORAGE_KINDS = "storage.pvc, storage.hostPath, storage.image, storage.uri"


class Storage(_Model):
    """Where the SavedModel versions live: exactly one of pvc, hostPath, image, uri."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "(has(self.pvc) ? 1 : 0) + (has(self.hostPath) ? 1 : 0) + (has(self.image) ? 1 : 0) "
                "+ (has(self.uri) ? 1 : 0) == 1",
                f"exactly one of {STORAGE_KINDS} must be set",
            ),
            ("has(self.uri) || (!has(self.credentials) && !has(self.cacheSizeLimit))",
             "storage.credentials and storage.cacheSizeLimit need storage.uri"),
        )
    )

    pvc: PVCSource | None = None
    host_path: HostPathSource | None = None
    image: ImageSource | None = None
    uri: str | None = Field(None, max_length=2048, pattern=storage_uri.URI_PATTERN,
                            description="object storage the pods download versions from: s3://BUCKET/PREFIX, "
                            "gs://BUCKET/PREFIX, az://CONTAINER/PREFIX, abfss://CONTAINER@ACCOUNT.dfs.core.windows.net/"
                            "PREFIX, or an https:// URL (the model-server's --model_base_path forms)")
    credentials: StorageCredentials | None = Field(None, description="with uri: how the pods authenticate "
                                                   "(default: the environment the node and cluster give them)")
    cache_size_limit: int | str | None = Field(
        None, description="with uri: the size limit of the pods' download cache, an emptyDir (default: none)",
        json_schema_extra=INT_OR_STRING)

    @model_validator(mode="after")
    def _exactly_one(self) -> Storage:
        if sum(x is not None for x in (self.pvc, self.host_path, self.image, self.uri)) != 1:
            raise ValueError(f"exactly one of {STORAGE_KINDS} must be set")
        if self.uri is None and (self.credentials is not None or self.cache_size_limit is not None):
            raise ValueError("storage.credentials and storage.cacheSizeLimit need storage.uri")
        if self.uri is not None:
            try:
                storage_uri.parse(self.uri)
            except ValueError as exc:
                raise ValueError(f"storage.uri: {exc}") from None
        return self


class ModelSpec(_Model):
    name: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="name in the serving API (default: metadata.name)"
    )
    storage: Storage
    versions: list[int] | None = Field(
        None,
        min_length=1,
        max_length=32,
        description="versions to load (TF Serving 'specific' policy); omitted: the latest version",
        json_schema_extra={"x-kubernetes-list-type": "set", "items": {"type": "integer", "minimum": 0}},
    )
    latest_versions: int = Field(
        1, ge=1, le=32, description="with no versions listed: how many of the newest versions to load"
    )

    @field_validator("versions")
    @classmethod
    def _unique(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if len(set(v)) != len(v):
                raise ValueError("model.versions must not repeat a version")
            if any(x < 0 for x in v):
                raise ValueError("model.versions must be >= 0")
        return v


class Traffic(_Model):
    canary: int = Field(0, ge=0, le=100, description="% of requests without version or label sent to 'canary'")


class Prometheus(_Model):
    url: str = Field(pattern=r"^https?://", description="Prometheus base URL")


class Analysis(_Model):
    """The checks of each step, from Prometheus, on each version's own series in the same window.
    Each check judges two metrics, each Pass, High (fails the check), Low or Inconclusive:
    latency (the Mann-Whitney U rank test on the two versions' latency histograms: High only when
    significant at `confidence` and the new p99 is above `maxLatencyRatio` x the old p99 and above
    it by more than `minLatencyDeltaMs`) and errors (every answer but OK: High only when the rate
    is above `maxErrorRate`, significantly by an exact binomial test, and significantly above the
    old version's by Fisher's exact test). Too few requests is Inconclusive: the step waits."""

    max_error_rate: float = Field(0.01, ge=0, le=1, description="the new version's error ratio over the window")
    max_latency_ratio: float = Field(1.2, ge=1, description="its p99 against the old version's p99 in the same window")
    min_latency_delta_ms: float = Field(1.0, ge=0, description="and by more than this many ms (a difference that matters)")
    max_latency_ms: float | None = Field(None, gt=0, description="and an absolute p99 bound (ms)")
    confidence: float = Field(0.99, ge=0.5, lt=1, description="of the statistical tests (1 - their false alarm rate)")
    min_requests: int = Field(100, ge=1, description="answers of each version in the window before a check can judge")
    failure_threshold: int = Field(2, ge=1, le=100, description="failed checks in a rollout before it is rolled back")
    interval_seconds: int | None = Field(None, ge=1, le=3600, description="between checks (default: stepSeconds, at most 60)")
    inconclusive_seconds: int | None = Field(
        600, ge=1, description="a step whose checks stay Inconclusive this long is rolled back (null: wait forever)")
    max_divergence: float | None = Field(
        None, ge=0, description="shadow: the largest absolute output difference that at most 1% of mirrored requests "
        "may exceed (none: not checked)")
    min_top1_agreement: float | None = Field(
        None, ge=0, le=1, description="shadow: the share of rows whose top-1 class both versions agree on")


class Shadow(_Model):
    """Before any user request goes to the new version: the server mirrors `percent` % of the stable
    version's answered predictions to it, compares its answers and its time on the same inputs, and
    discards them; the rollout's checks judge that for `seconds` before the first step."""

    percent: float = Field(10, gt=0, le=100, description="of the stable version's requests mirrored")
    seconds: int | None = Field(None, ge=1, le=86400, description="how long (default: stepSeconds)")


class Rollout(_Model):
    """Progressive rollout: a change of versionLabels.stable steps the new version's share of the
    unlabelled traffic up through `steps`, checking each step in Prometheus, and promotes it or rolls
    it back by itself (status.rollout)."""

    steps: list[int] = Field(
        min_length=1, max_length=20, description="canary % per step, increasing", json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": 100}}
    )
    step_seconds: int = Field(300, ge=1, le=86400)
    analysis: Analysis = Field(default_factory=lambda: Analysis.model_validate({}), json_schema_extra={"default": {}})
    prometheus: Prometheus | None = Field(None, description="default: the operator's --prometheus-url")
    shadow: Shadow | None = Field(None, description="judge the new version on mirrored requests before the first step")

    @field_validator("steps")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(not 1 <= x <= 100 for x in v):
            raise ValueError("rollout.steps must be between 1 and 100")
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("rollout.steps must be strictly increasing")
        return v


class WarmupSource(StrEnum):
    model = "model"
    generated = "generated"
    config_map = "configMap"


class WarmupGenerate(_Model):
    """Warmup requests the server makes from each version's own signatures at load time."""

    signatures: list[str] | None = Field(
        None, max_length=64, description="signatures to warm (default: every one whose generated requests run)",
        json_schema_extra={"items": {"type": "string", "minLength": 1}})
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1], min_length=1, max_length=16, description="batch sizes of the requests",
        json_schema_extra={"items": {"type": "integer", "minimum": 1, "maximum": 65536}, "default": [1]})
    count: int = Field(1, ge=1, le=1000, description="requests per batch size and signature")
    data: Literal["zero", "random"] = Field("zero", description="input values: zeros, or random values of each dtype")
    seed: int = Field(0, ge=0, description="random seed (data: random)")


class ConfigMapKey(_Model):
    name: str = Field(min_length=1, max_length=253, description="a ConfigMap in the ModelDeployment's namespace")
    key: str = Field(min_length=1, max_length=253, description="its key holding the requests")


class Warmup(_Model):
    """Warmup before a version takes traffic. Where the requests come from (`source`): `model`, the
    SavedModel's own assets.extra/tf_serving_warmup_requests (TF Serving's file; none: no warmup);
    `generated`, made by the server from each version's signatures (`generate`); `configMap`, REST API
    bodies from a ConfigMap key (`requests`). Default: `generated` when `generate` is set, `configMap`
    when `requests` is set, else `model`; the chosen source replaces the model's own file."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.source) || self.source != 'configMap' || has(self.requests)",
             "warmup.source configMap needs warmup.requests (a ConfigMap name and key)"),
            ("has(self.source) || !has(self.generate) || !has(self.requests)",
             "warmup.generate and warmup.requests are both set: say which wins with warmup.source"),
        )
    )

    enabled: bool = Field(True, description="replay warmup requests before a version is ready")
    request_iterations: int = Field(1, ge=1, le=1000, description="--num_request_iterations_for_warmup")
    source: WarmupSource | None = None
    generate: WarmupGenerate | None = None
    requests: ConfigMapKey | None = None

    @model_validator(mode="after")
    def _source(self) -> Warmup:
        if self.source == WarmupSource.config_map and self.requests is None:
            raise ValueError("warmup.source configMap needs warmup.requests (a ConfigMap name and key)")
        if self.source is None and self.generate is not None and self.requests is not None:
            raise ValueError("warmup.generate and warmup.requests are both set: say which wins with warmup.source")
        return self

    @property
    def effective_source(self) -> WarmupSource:
        if self.source is not None:
            return self.source
        if self.generate is not None:
            return WarmupSource.generated
        if self.requests is not None:
            return WarmupSource.config_map
        return WarmupSource.model


class Batching(_Model):
    """Server-side batching (`--enable_batching` with a batching parameters file).

    The rules match the server's (TF Serving's): allowed batch sizes increase and the last one is
    the largest batch that runs, i.e. `maxExecutionBatchSize` when large batches are split, else
    `maxBatchSize`; a split execution batch is never larger than `maxBatchSize`.
    """

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.allowedBatchSizes) || size(self.allowedBatchSizes) == 0 || "
                "self.allowedBatchSizes[size(self.allowedBatchSizes) - 1] == "
                "((has(self.enableLargeBatchSplitting) && self.enableLargeBatchSplitting && "
                "has(self.maxExecutionBatchSize)) ? self.maxExecutionBatchSize : self.maxBatchSize)",
                "the last of batching.allowedBatchSizes must equal batching.maxBatchSize "
                "(batching.maxExecutionBatchSize when enableLargeBatchSplitting is on)",
            ),
            (
                "!has(self.maxExecutionBatchSize) || self.maxExecutionBatchSize <= self.maxBatchSize",
                "batching.maxExecutionBatchSize must not exceed batching.maxBatchSize",
            ),
        )
    )

    enabled: bool = True
    max_batch_size: int = Field(32, ge=1, le=65536)
    batch_timeout_micros: int = Field(2000, ge=0, le=10_000_000)
    num_batch_threads: int = Field(2, ge=1, le=256)
    max_enqueued_batches: int = Field(100, ge=1, le=1_000_000)
    allowed_batch_sizes: list[int] | None = Field(
        None, max_length=64, json_schema_extra={"items": {"type": "integer", "minimum": 1}}
    )
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int | None = Field(None, ge=1, le=65536)

    @property
    def largest_execution_batch(self) -> int:
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size

    @model_validator(mode="after")
    def _allowed(self) -> Batching:
        sizes = self.allowed_batch_sizes or []
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError("batching.allowedBatchSizes must be increasing")
        if self.max_execution_batch_size is not None and self.max_execution_batch_size > self.max_batch_size:
            raise ValueError("batching.maxExecutionBatchSize must not exceed batching.maxBatchSize")
        if sizes and sizes[-1] != self.largest_execution_batch:
            raise ValueError(
                "the last of batching.allowedBatchSizes must equal batching.maxBatchSize "
                "(batching.maxExecutionBatchSize when enableLargeBatchSplitting is on)"
            )
        return self


class Resources(_Model):
    gpu: int = Field(0, ge=0, le=16, description="GPUs per pod (limits.<gpuResourceName>)")
    gpu_resource_name: str = Field("nvidia.com/gpu", min_length=1)
    cpu: int | str = Field("1", description="CPU request per pod", json_schema_extra=INT_OR_STRING)
    memory: int | str = Field("2Gi", description="memory request and limit per pod", json_schema_extra=INT_OR_STRING)
    cpu_limit: int | str | None = Field(None, description="CPU limit (default: none)", json_schema_extra=INT_OR_STRING)

    @field_validator("cpu", "memory", "cpu_limit")
    @classmethod
    def _quantity(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, str) and not re.match(QUANTITY_PATTERN, v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity")
        return v


class Placement(_Model):
    """Passed through to the pod spec as written."""

    node_selector: dict[str, str] | None = None
    tolerations: list[dict[str, Any]] | None = Field(None, json_schema_extra={"items": {"type": "object", **PRESERVE}})
    affinity: dict[str, Any] | None = Field(None, json_schema_extra={"type": "object", **PRESERVE})


class AutoscalingMode(StrEnum):
    operator = "operator"
    hpa = "hpa"


class Metric(StrEnum):
    latency_p50 = "latencyP50Ms"
    latency_p95 = "latencyP95Ms"
    latency_p99 = "latencyP99Ms"
    rps = "requestsPerSecond"  # per ready replica
    in_flight = "inFlightRequests"  # per ready replica (requests received and not yet answered)


class ScalingPolicy(_Model):
    type: Literal["Percent", "Pods"]
    value: int = Field(ge=1, le=10000)
    period_seconds: int = Field(15, ge=1, le=1800)


class ScalingRules(_Model):
    """As autoscaling/v2's HPAScalingRules: a stabilization window and rate limits (the policy
    allowing the largest change wins)."""

    stabilization_window_seconds: int | None = Field(None, ge=0, le=3600)
    policies: list[ScalingPolicy] | None = Field(None, min_length=1, max_length=10)


class ScalingBehavior(_Model):
    scale_up: ScalingRules | None = Field(None, description="default: no stabilization, max(+100%, +4 pods) per 15 s")
    scale_down: ScalingRules | None = Field(None, description="default: 300 s stabilization, -100% per 15 s")


HPA_ZERO = ("autoscaling.minReplicas 0 needs mode: operator (a HorizontalPodAutoscaler scales to zero only "
            "behind the HPAScaleToZero alpha feature gate)")


class ScaleToZero(_Model):
    """With `minReplicas: 0`: the limits of scaling to zero and back. While no pod is ready, the
    Service's requests wait in the activator (at most `maxHeldRequests`, each at most
    `holdTimeoutSeconds` or its client's deadline) and the first one scales the Deployment up."""

    idle_seconds: int = Field(300, ge=5, le=7 * 86400,
                              description="no inference request for this long: the Deployment goes to 0 replicas")
    max_held_requests: int = Field(100, ge=0, le=100000,
                                   description="requests held while no pod is ready; beyond: REST 429 / gRPC "
                                               "RESOURCE_EXHAUSTED with Retry-After")
    hold_timeout_seconds: int = Field(300, ge=1, le=3600,
                                      description="a held request waits at most this long for a ready pod; then "
                                                  "REST 503 / gRPC UNAVAILABLE (the model is starting)")


class Autoscaling(_Model):
    """Replicas that follow a metric from Prometheus: by the operator itself (`mode: operator`, the
    HPA algorithm as Kubernetes implements it), or by an autoscaling/v2 HPA on an External metric
    (`mode: hpa`, with the chart's prometheus-adapter rules). `minReplicas: 0` (mode operator) scales
    to zero after `scaleToZero.idleSeconds` without a request, and back at the first one."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must be <= maxReplicas"),
                               ("!has(self.mode) || self.mode != 'hpa' || !has(self.minReplicas) || self.minReplicas >= 1",
                                HPA_ZERO))
    )

    mode: AutoscalingMode = AutoscalingMode.operator
    min_replicas: int = Field(1, ge=0, le=1000, description="0: scale to zero when idle (mode operator; see scaleToZero)")
    max_replicas: int = Field(ge=1, le=1000)
    metric: Metric = Metric.latency_p99
    target: float = Field(gt=0, description="the metric's target (ms for latencies; per replica for rates)")
    prometheus: Prometheus | None = Field(None, description="default: the operator's --prometheus-url")
    interval_seconds: int = Field(15, ge=1, le=600, description="how often the operator evaluates (mode operator)")
    window_seconds: int = Field(60, ge=10, le=3600, description="the rate window of the queries")
    tolerance: float = Field(0.1, ge=0, le=1, description="no change while |value/target - 1| is within it")
    behavior: ScalingBehavior | None = None
    scale_to_zero: ScaleToZero | None = Field(None, description="the limits of minReplicas: 0 (defaults when absent)")

    @property
    def to_zero(self) -> ScaleToZero | None:
        """The scale-to-zero limits when minReplicas is 0 (the defaults unless given), else None."""
        if self.min_replicas > 0:
            return None
        return self.scale_to_zero or ScaleToZero.model_validate({})

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must be <= maxReplicas")
        if self.mode == AutoscalingMode.hpa and self.min_replicas == 0:
            raise ValueError(HPA_ZERO)
        return self


class Server(_Model):
    """The model-server container."""

    image: str | None = Field(None, description="image (default: the operator's --server-image)")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    config_poll_seconds: int = Field(
        1, ge=1, le=300, description="--model_config_file_poll_wait_seconds (label changes take effect without restart)"
    )
    extra_args: list[str] | None = Field(
        None, max_length=64, description="more tensorflow_model_server flags", json_schema_extra={"items": {"type": "string", "pattern": "^--[a-z_]+(=.*)?$"}}
    )
    termination_grace_period_seconds: int = Field(60, ge=1, le=3600)
    enable_profiler: bool = Field(
        False, description="serve TensorFlow's profiler on the gRPC port (--enable_profiler; captures in the pod's /tmp)")
    enable_reload_config_rpc: bool = Field(
        False, description="serve ModelService.HandleReloadConfigRequest, unauthenticated on the gRPC port "
                           "(--enable_reload_config_rpc): a client could replace the served models")
    frontend_workers: int | str | None = Field(
        None, description="processes that accept and decode requests beside the model process (--frontend_workers): "
                          "a number, or auto (from the pod's CPU limit); unset: one process",
        json_schema_extra={"x-kubernetes-int-or-string": True, "x-string-pattern": FRONTEND_WORKERS_PATTERN,
                           "x-minimum": 1, "x-maximum": MAX_FRONTEND_WORKERS})

    @field_validator("frontend_workers")
    @classmethod
    def _workers(cls, v: int | str | None) -> int | str | None:
        if v is None or v == "auto":
            return v
        n = int(v) if isinstance(v, str) and v.isdigit() else v
        if not isinstance(n, int) or not 1 <= n <= MAX_FRONTEND_WORKERS:
            raise ValueError(f"frontendWorkers must be auto or a number from 1 to {MAX_FRONTEND_WORKERS}")
        return n


class Tracing(_Model):
    """OpenTelemetry traces of the pods' requests: rendered as the model-server container's
    standard OTEL_* environment (exporter otlp, endpoint, protocol, service name, a parent-based
    ratio sampler)."""

    endpoint: str = Field(pattern=r"^https?://", description="the OTLP collector, e.g. http://otel-collector.monitoring:4317")
    protocol: Literal["grpc", "http/protobuf"] = Field(
        "grpc", description="OTLP over gRPC (port 4317 by convention) or HTTP (4318)")
    sampling_ratio: float = Field(
        1.0, ge=0, le=1, description="share of new traces sampled; a client's sampled traceparent is always followed")
    service_name: str | None = Field(None, max_length=253, description="OTEL_SERVICE_NAME (default: the model's name)")


class Observability(_Model):
    tracing: Tracing | None = None


class PayloadLogging(_Model):
    """Sampled inference requests and answers sent as CloudEvents to an HTTP sink (model-server's
    --payload_log_* flags), from a bounded queue: serving never waits for the sink."""

    url: str = Field(pattern=r"^https?://", description="the sink, e.g. http://payload-sink.monitoring/events")
    mode: Literal["request", "response", "all"] = Field("all", description="what is sent")
    sample_rate: float = Field(1.0, ge=0, le=1, description="share of inference requests logged")
    queue_size: int = Field(1000, ge=1, le=1_000_000, description="events waiting for the sink, at most (more: dropped)")


class ModelDeploymentSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.versionLabels) || !has(self.model.versions) || "
                "self.versionLabels.all(k, self.versionLabels[k] in self.model.versions)",
                "every versionLabels entry must name a version listed in model.versions",
            ),
            (
                "!has(self.traffic) || self.traffic.canary == 0 || (has(self.versionLabels) && "
                "'stable' in self.versionLabels && 'canary' in self.versionLabels)",
                "traffic.canary > 0 needs versionLabels 'stable' and 'canary'",
            ),
        )
    )

    model: ModelSpec
    version_labels: dict[str, int] | None = Field(
        None,
        max_length=32,
        description="label -> version (labels move without a pod restart)",
        json_schema_extra={"additionalProperties": {"type": "integer", "minimum": 0}, "x-kubernetes-map-type": "granular"},
    )
    traffic: Traffic | None = None
    rollout: Rollout | None = None
    warmup: Warmup = Field(default_factory=lambda: Warmup.model_validate({}), json_schema_extra={"default": {}})
    batching: Batching | None = None
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}), json_schema_extra={"default": {}})
    placement: Placement | None = None
    replicas: int = Field(1, ge=0, le=1000, description="pod count when autoscaling is off")
    autoscaling: Autoscaling | None = None
    server: Server = Field(default_factory=lambda: Server.model_validate({}), json_schema_extra={"default": {}})
    observability: Observability | None = None
    logging: PayloadLogging | None = None

    @field_validator("version_labels")
    @classmethod
    def _labels(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        for k, ver in (v or {}).items():
            if not re.match(LABEL_PATTERN, k):
                raise ValueError(f"version label {k!r} must match {LABEL_PATTERN}")
            if ver < 0:
                raise ValueError(f"version label {k!r} must name a version >= 0")
        return v

    @model_validator(mode="after")
    def _cross(self) -> ModelDeploymentSpec:
        if self.version_labels and self.model.versions is not None:
            missing = {k: v for k, v in self.version_labels.items() if v not in self.model.versions}
            if missing:
                raise ValueError(f"every versionLabels entry must name a version listed in model.versions: {missing}")
        if self.traffic and self.traffic.canary > 0:
            labels = self.version_labels or {}
            if "stable" not in labels or "canary" not in labels:
                raise ValueError("traffic.canary > 0 needs versionLabels 'stable' and 'canary'")
        return self


# --- status -------------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    true = "True"
    false = "False"
    unknown = "Unknown"


class Condition(_Model):
    type: str
    status: ConditionStatus
    reason: str = Field(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = ""
    observed_generation: int | None = None
    last_transition_time: str | None = None


class WarmupStatus(_Model):
    source: str = Field(description="model | generated | requests")
    records: int = Field(description="warmup requests (file records, or generated/given requests)")
    requests: int = Field(description="requests replayed (records x requestIterations)")
    seconds: float = Field(description="time the warmup took")
    skipped: dict[str, str] | None = Field(None, description="signatures left out (generated requests they refused)",
                                           json_schema_extra={"additionalProperties": {"type": "string"}})


class DownloadStatus(_Model):
    seconds: float = Field(description="how long the download took (the longest of the pods that report it)")
    bytes: int = Field(description="bytes downloaded (0: found in the pod's cache)")
    cached: bool = Field(False, description="found in the pod's cache, nothing downloaded")


class VersionStatus(_Model):
    version: int
    state: str = Field(description="Pending | Loading | Available | Unloading | Unloaded | Failed | Unknown")
    message: str | None = Field(None, description="the server's error message for this version")
    labels: list[str] | None = None
    warmup: WarmupStatus | None = Field(None, description="the warmup replayed before the version turned available")
    source: str | None = Field(None, description="with storage.uri: where the version was downloaded from")
    download: DownloadStatus | None = Field(None, description="with storage.uri: its download into the pods")


class RolloutStatus(_Model):
    """A progressive rollout's progress (kept here, never in the spec, so it survives a restart)."""

    phase: Literal["Progressing", "Promoting", "Succeeded", "Failed"]
    from_version: int
    to_version: int
    generation: int = Field(description="the spec generation the rollout belongs to")
    step: int = Field(-1, description="index into rollout.steps (-1: loading the new version)")
    weight: int = Field(0, description="the new version's share of unlabelled requests (%)")
    step_started: float = 0.0
    last_check: float = 0.0
    failed_checks: int = 0
    message: str = ""
    analysis: dict[str, Any] | None = Field(None, json_schema_extra={"type": "object", **PRESERVE})
    reason: str | None = Field(None, description="why a Failed rollout went back: RolledBack, Aborted, LoadFailed, "
                               "Inconclusive")
    command: str | None = Field(None, description="the last promote/abort command acted on (verb@generation)")
    shadow_started: float | None = Field(None, description="when the new version began to get mirrored requests "
                                         "(Unix seconds; while it shadows, before the first step)")


class FailureInfo(_Model):
    """A server container that is failing (as KServe's lastFailureInfo): what the kubelet reports."""

    pod: str
    container: str
    reason: str = Field(description="CrashLoopBackOff, ImagePullBackOff, Error, ... (the kubelet's)")
    exit_code: int | None = Field(None, description="of its last termination")
    message: str | None = Field(None, description="its last termination message: the end of its log")
    restart_count: int = 0
    time: str | None = Field(None, description="when it last terminated")


class RoutingShadow(_Model):
    label: str = Field(description="the label whose version gets the mirrored requests")
    percent: float = Field(description="of the source label's answered requests")
    source: str = "stable"


class RoutingStatus(_Model):
    """The routing table in force (labels and weights), how it is delivered, and where it is live."""

    generation: int = Field(description="the ModelDeployment generation the table was made from")
    labels: dict[str, int] = Field(default_factory=dict, json_schema_extra={"additionalProperties": {"type": "integer"}})
    weights: dict[str, int] = Field(default_factory=dict, json_schema_extra={"additionalProperties": {"type": "integer"}})
    shadow: RoutingShadow | None = Field(None, description="requests mirrored to another label (a rollout's shadow)")
    delivery: Literal["Push", "ConfigMap"] = Field(
        "Push", description="Push: sent to every ready pod's admin port and confirmed; ConfigMap: the pods "
                            "cannot be reached, routing.json carries it (live after the kubelet's refresh)")
    summary: str | None = Field(None, description="the split, e.g. canary=10%,stable=90% (printer column)")
    live_pods: int | None = Field(None, description="ready pods serving this table")
    ready_pods: int | None = None
    waiting: list[str] | None = Field(None, description="why the spec's labels and traffic are not live everywhere yet")
    failed: list[str] | None = Field(None, description="versions the spec's labels need that failed to load")


class ScaleRecord(_Model):
    at: float = Field(description="Unix seconds")
    replicas: int | None = None
    change: int | None = None


class AutoscalerStatus(_Model):
    """What the autoscaler measured and decided (mode operator), or what the HPA reports (mode hpa)."""

    mode: str
    metric: str
    target: float
    value: float | None = Field(None, description="the metric now (none: missing; replicas are held)")
    current_replicas: int | None = None
    ready_replicas: int | None = None
    desired_replicas: int | None = None
    reason: str | None = Field(None, description="ScaleUp, ScaleDown, WithinTolerance, ScaleDownStabilized, Limited, "
                                                 "Bounds, MetricUnavailable, NoReadyPods")
    message: str | None = None
    summary: str | None = Field(None, description="metric value/target (printer column)")
    last_evaluation: float | None = None
    last_scale_time: str | None = Field(None, description="when replicas last changed (RFC 3339)")
    recommendations: list[ScaleRecord] | None = Field(None, description="the stabilization windows' history")
    scale_events: list[ScaleRecord] | None = Field(None, description="the rate limits' history")


class ColdStartStatus(_Model):
    """The last cold start: from the first held request to its answer, in parts (seconds)."""

    started: str | None = Field(None, description="when the first request was held (RFC 3339)")
    seconds: float | None = Field(None, description="first held request -> its answer")
    scheduled_seconds: float | None = Field(None, description="first held request -> the pod scheduled")
    loaded_seconds: float | None = Field(None, description="scheduled -> the model loaded (the server started, "
                                                           "the model read; until the pod was known ready)")
    warmed_up_seconds: float | None = Field(None, description="the warmup the server reports")
    first_answer_seconds: float | None = Field(None, description="released to the ready pod -> the first held "
                                                                 "request answered")


class ScaleToZeroStatus(_Model):
    held_requests: int | None = Field(None, description="requests waiting in the activator now")
    waiting_since: str | None = Field(None, description="since when the oldest held request waits (RFC 3339)")
    requests_in_idle_window: float | None = Field(None, description="inference requests in the last idleSeconds "
                                                                   "(Prometheus), as last measured")
    awake_since: float | None = Field(None, description="when the Deployment last left zero (Unix seconds)")
    last_cold_start: ColdStartStatus | None = None
    message: str | None = None


class ModelDeploymentStatus(_Model):
    observed_generation: int | None = None
    conditions: list[Condition] | None = Field(
        None, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}
    )
    replicas: int | None = None
    desired_replicas: int | None = Field(
        None, description="pods the server Deployment wants (spec.replicas, or autoscaling.minReplicas)"
    )
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    model_name: str | None = None
    versions: list[VersionStatus] | None = None
    versions_summary: str | None = Field(None, description="versions, comma-separated (printer column)")
    version_labels: dict[str, int] | None = None
    labels_summary: str | None = Field(None, description="label=version, comma-separated (printer column)")
    traffic: Traffic | None = None
    routing: RoutingStatus | None = None
    rollout: RolloutStatus | None = None
    autoscaler: AutoscalerStatus | None = None
    scale_to_zero: ScaleToZeroStatus | None = None
    traffic_summary: str | None = Field(None, description="the split in force (printer column)")
    config_hash: str | None = None
    selector: str | None = Field(None, description="pod label selector (scale subresource)")
    last_failure_info: FailureInfo | None = Field(None, description="a server container that is failing now")


# The ModelDeployment's name names its Service, so it must be a DNS-1035 label.
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63
NAME_RULE = {
    "rule": f"self.metadata.name.matches('{NAME_PATTERN}') && size(self.metadata.name) <= {NAME_MAX}",
    "message": f"metadata.name must be a DNS-1035 label (lowercase letters, digits, '-', starting with a letter) of at most {NAME_MAX} characters: it names the Service",
}


def name_problem(name: str) -> str | None:
    if len(name) > NAME_MAX or not re.match(NAME_PATTERN, name):
        return str(NAME_RULE["message"])
    return None


def model_name(spec: ModelDeploymentSpec, md_name: str) -> str:
    return spec.model.name or md_name
