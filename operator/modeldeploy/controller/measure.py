"""The controller's measurements from Prometheus, when a decision is due: a progressive rollout's
check (the new and the old version's requests, error ratio and p99 over the check's window) and
the autoscaler's metric (or why there is none: no URL, unreachable, no series, NaN, stale samples).

The queries are decisions.queries' text, asked through clients.prometheus; the figures go into the
pure decisions (decisions.rollout, decisions.autoscale) as their `Measured` records.
"""

from __future__ import annotations

import math

from modeldeploy.api import v1alpha1 as api
from modeldeploy.clients import prometheus
from modeldeploy.decisions import autoscale, queries, rollout


def rollout_check(r: api.Rollout, default_url: str, namespace: str, name: str, from_v: int, to_v: int,
            window_s: int) -> rollout.Measured:
    url = r.prometheus.url if r.prometheus else default_url
    window = f"{window_s}s"

    def value(q: str) -> float | None:
        if not url:
            return None
        v = prometheus.instant(url, q).value
        return None if v is None or math.isnan(v) else v

    def of(version: int) -> rollout.VersionMetrics:
        sel = queries.selector(namespace, name, api=queries.INFERENCE_APIS, version=str(version))
        return rollout.VersionMetrics(
            requests=value(f"sum(increase(modelserver_requests_total{sel}[{window}]))"),
            # any answer but OK counts against the new version: one that refuses what the old one
            # answers (an INVALID_ARGUMENT) is failing its users too
            error_rate=value(queries.error_ratio(namespace, name, window, codes="!OK", version=str(version))),
            p99_ms=value(queries.latency_ms(namespace, name, 0.99, window, version=str(version))))

    return rollout.Measured(of(to_v), of(from_v))



def autoscaler_metric(a: api.Autoscaling, default_url: str, namespace: str, name: str, ready: int, now: float) -> autoscale.Measured:
    url = a.prometheus.url if a.prometheus else default_url
    if not url:
        return autoscale.Measured(now, None, "no Prometheus URL (spec.autoscaling.prometheus.url, or the operator's --prometheus-url)")
    age = prometheus.instant(url, queries.scrape_age_seconds(namespace, name))
    if age.value is None or math.isnan(age.value):
        return autoscale.Measured(now, None, age.problem or "no scrape of the pods yet")
    if age.value > autoscale.stale_after(a):
        return autoscale.Measured(now, None, f"the freshest samples are {age.value:.0f} s old (stale)")
    answer = prometheus.instant(url, autoscale.query_for(a, namespace, name))
    value = answer.value
    if value is not None and api.Metric(a.metric) == api.Metric.rps and not math.isnan(value):
        value = value / ready if ready else None  # per ready replica
    return autoscale.Measured(now, value, answer.problem)
