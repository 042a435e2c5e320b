"""The operator's own Prometheus metrics (served by `modeldeploy operator --metrics-port`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "modeldeploy_reconciles_total",
    "ModelDeployment reconciles by result (ok, problem: reported in status, retry: transient, error)",
    ["result"],
)
RECONCILE_SECONDS = Histogram(
    "modeldeploy_reconcile_duration_seconds",
    "time to reconcile one ModelDeployment",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
CHILD_EVENTS = Counter(
    "modeldeploy_child_events_total", "events on owned children that queued their owner for a reconcile", ["kind", "type"]
)
QUEUE_DEPTH = Gauge("modeldeploy_workqueue_depth", "ModelDeployments waiting in the work queue to be reconciled")
API_ERRORS = Counter("modeldeploy_api_errors_total", "Kubernetes API errors met while reconciling", ["status"])
MANAGED = Gauge("modeldeploy_managed_models", "ModelDeployments seen by this operator")
