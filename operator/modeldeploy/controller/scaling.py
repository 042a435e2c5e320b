"""Autoscaling from Prometheus, between the pure algorithm (autoscale.py) and the reconcile.

- `measure` (I/O): the metric of `spec.autoscaling` for this ModelDeployment's pods, from Prometheus
  (promql.py), or why there is none (unreachable, no series, NaN, stale samples);
- `decide` (pure): with the operator's mode, the replicas to render and `status.autoscaler`
  (the figures, the reason, and the history the stabilization windows and rate limits need);
  with the HPA mode, what the HorizontalPodAutoscaler reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modeldeploy.api import v1alpha1 as api
from modeldeploy.decisions import autoscale
from modeldeploy.decisions import queries as promql

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Measured:
    at: float  # Unix seconds
    value: float | None
    missing: str = ""


def query_for(a: api.Autoscaling, namespace: str, name: str) -> str:
    window = f"{a.window_seconds}s"
    metric = api.Metric(a.metric)
    if metric in (api.Metric.latency_p50, api.Metric.latency_p95, api.Metric.latency_p99):
        return promql.latency_ms(namespace, name, promql.QUANTILES[metric.value], window)
    if metric == api.Metric.rps:
        return promql.requests_per_second(namespace, name, window)
    return promql.in_flight_per_pod(namespace, name)


def stale_after(a: api.Autoscaling) -> float:
    return max(30.0, 2.0 * a.interval_seconds)


def measure(a: api.Autoscaling, default_url: str, namespace: str, name: str, ready: int, now: float) -> Measured:
    url = a.prometheus.url if a.prometheus else default_url
    if not url:
        return Measured(now, None, "no Prometheus URL (spec.autoscaling.prometheus.url, or the operator's --prometheus-url)")
    age = promql.instant(url, promql.scrape_age_seconds(namespace, name))
    if age.value is None or math.isnan(age.value):
        return Measured(now, None, age.problem or "no scrape of the pods yet")
    if age.value > stale_after(a):
        return Measured(now, None, f"the freshest samples are {age.value:.0f} s old (stale)")
    answer = promql.instant(url, query_for(a, namespace, name))
    value = answer.value
    if value is not None and api.Metric(a.metric) == api.Metric.rps and not math.isnan(value):
        value = value / ready if ready else None  # per ready replica
    return Measured(now, value, answer.problem)


def summary(metric: str, value: Any, target: float) -> str:
    shown = "?" if value is None else f"{float(value):.3g}"
    return f"{metric} {shown}/{target:g}"


@dataclass(frozen=True, slots=True)
class Scaling:
    replicas: int | None  # what the Deployment gets (None: the HPA owns replicas)
    status: Obj | None  # status.autoscaler
    events: tuple[tuple[str, str, str], ...] = ()


def decide(spec: api.ModelDeploymentSpec, deployment: Obj | None, hpa: Obj | None, previous: Obj | None,
           measured: Measured | None) -> Scaling:
    a = spec.autoscaling
    if a is None:
        return Scaling(spec.replicas, None)
    if a.mode == api.AutoscalingMode.hpa:
        return Scaling(None, hpa_status(a, hpa))
    prev = previous or {}
    dep_spec = (deployment or {}).get("spec") or {}
    current = int(prev.get("desiredReplicas") or dep_spec.get("replicas") or a.min_replicas)
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    if measured is None:  # not due: keep the last decision (a hand edit of the replicas is undone)
        kept = min(max(current, a.min_replicas), a.max_replicas)
        return Scaling(kept, prev or None)
    recs, evs = autoscale.history_of(prev)
    obs = autoscale.Observation(measured.at, current, ready, measured.value, a.target, a.min_replicas,
                                a.max_replicas, measured.missing, autoscale.behavior_of(a), recs, evs)
    d = autoscale.decide(obs)
    status = {**autoscale.status_of(d, obs, a.metric, prev), "summary": summary(a.metric, obs.value if
                                                                              autoscale.usable(obs.value) else None, a.target)}
    events: list[tuple[str, str, str]] = []
    if d.desired > current:
        events.append(("Normal", "ScaledUp", d.message))
    elif d.desired < current:
        events.append(("Normal", "ScaledDown", d.message))
    elif d.held and prev.get("reason") != d.reason:
        events.append(("Warning", d.reason, d.message))
    return Scaling(d.desired, status, tuple(events))


def hpa_status(a: api.Autoscaling, hpa: Obj | None) -> Obj:
    st = (hpa or {}).get("status") or {}
    value = None
    for m in st.get("currentMetrics") or []:
        cur = (m.get("external") or {}).get("current") or {}
        raw = cur.get("value") if "value" in cur else cur.get("averageValue")
        value = _quantity(raw)
    out = {"mode": "hpa", "metric": a.metric, "target": a.target, "value": value,
           "currentReplicas": st.get("currentReplicas"), "desiredReplicas": st.get("desiredReplicas"),
           "lastScaleTime": st.get("lastScaleTime"), "summary": summary(a.metric, value, a.target)}
    return {k: v for k, v in out.items() if v is not None}


def _quantity(raw: Any) -> float | None:
    """A Kubernetes quantity as the HPA reports metric values ("142", "1500m")."""
    if raw is None:
        return None
    text = str(raw)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def external_metric_name(metric: str) -> str:
    """The External metric the chart's prometheus-adapter rules serve for a spec metric."""
    return {"latencyP50Ms": "modeldeploy_latency_p50_ms", "latencyP95Ms": "modeldeploy_latency_p95_ms",
            "latencyP99Ms": "modeldeploy_latency_p99_ms", "requestsPerSecond": "modeldeploy_requests_per_second",
            "inFlightRequests": "modeldeploy_in_flight_requests"}[metric]
