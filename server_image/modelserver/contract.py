"""The contract between the operator and model-server: ports, URL paths, file names, headers.

Written once, here, and imported by both sides (the server's flags, REST app, metrics and admin
port; the operator's renderer, server config and status probes), so that a port or a path cannot
differ between what the operator renders and what the server serves. Pure Python with no imports:
the operator image imports it without TensorFlow, gRPC or numpy.
"""

from __future__ import annotations

# -- ports (TF Serving's gRPC and REST defaults; the admin port is ours) --
GRPC_PORT = 8500
REST_PORT = 8501
ADMIN_PORT = 8502

# -- REST paths --
HEALTH_READY_PATH = "/v1/health/ready"  # readiness: every configured model has an AVAILABLE version
HEALTH_LIVE_PATH = "/v1/health/live"  # liveness: the process answers
METRICS_PATH = "/monitoring/prometheus/metrics"  # TF Serving's default prometheus_config.path
MODELS_PREFIX = "/v1/models"  # TF Serving's REST API: /v1/models/{name}[/versions/{v}|/labels/{l}][:verb]


def model_path(model: str, label: str = "") -> str:
    """TF Serving's model status URL path, `/v1/models/{name}` or `/v1/models/{name}/labels/{label}`."""
    return f"{MODELS_PREFIX}/{model}" + (f"/labels/{label}" if label else "")


# -- admin port paths (bearer token from --admin_token_file) --
ADMIN_ROUTING_PATH = "/v1/admin/routing"  # GET the routing table in force, PUT a new one
ADMIN_MODELS_PATH = "/v1/admin/models"  # GET every model's versions, labels and warmup reports

# -- the config files the operator renders into the pod's config volume --
MODELS_CONFIG = "models.config"  # TF Serving's ModelServerConfig text proto
BATCHING_CONFIG = "batching.config"  # TF Serving's BatchingParameters text proto
MONITORING_CONFIG = "monitoring.config"  # TF Serving's MonitoringConfig text proto
ROUTING_CONFIG = "routing.json"  # the routing table (labels and weights per model)
WARMUP_CONFIG = "warmup.json"  # where warmup requests come from

# -- routing headers (HTTP) and metadata keys (gRPC, lower case) --
ROUTE_KEY_HEADER = "X-Model-Route-Key"  # a sticky key: one key, one label, for a given table
ROUTE_KEY_METADATA = "x-model-route-key"
VERSION_HEADER = "X-Model-Version"  # in REST answers: the version that served
LABEL_HEADER = "X-Model-Label"  # in REST answers: the label the split chose
LABEL_METADATA = "x-model-label"  # gRPC trailing metadata (the version is in the response's model_spec)

# The per-version latency histogram that rollout analysis and autoscaling read (OK inference
# answers only, labels model and version): buckets 2^(1/8) apart (9% wide, the resolution of
# OpenTelemetry's and Prometheus' exponential histograms at scale/schema 3) from 47 us to 59 s,
# finer than the decisions made on it (a 1.2x latency ratio, the autoscaler's 10% tolerance).
LATENCY_METRIC = "modelserver_latency_seconds"
LATENCY_BUCKETS_SECONDS: tuple[float, ...] = tuple(2 ** (k / 8) for k in range(-115, 48))

# Shadow comparisons (core/shadow.py), read by rollout analysis: the largest absolute output
# difference per mirrored request (0, then decades from 1e-9), and the shadow version's time over
# the primary's on the same inputs (2^(1/8) apart, from 1/16 to 16).
SHADOW_DIFF_BUCKETS: tuple[float, ...] = (0.0, *(10.0**e for e in range(-9, 4)))
SHADOW_RATIO_BUCKETS: tuple[float, ...] = tuple(2 ** (k / 8) for k in range(-32, 33))
